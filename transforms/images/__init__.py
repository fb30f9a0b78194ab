"""Images: pixels (validate, decode, resize, encode), ingestion steps, the tf.data reader."""
