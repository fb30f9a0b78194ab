"""tf.Transform's side of the columnar pipeline: cleansed batches as the Arrow RecordBatches it reads
through TFXIO, and its transformed RecordBatches encoded as tf.train.Examples by tfx-bsl (C++)."""

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def tfxio_schema(spec):
    """The Arrow schema of tf.Transform's input batches: one-value lists, float32 numbers, bytes otherwise,
    as tf_feature_spec declares them."""
    return pa.schema(
        [(spec.key, pa.list_(pa.binary()))]
        + [(f.name, pa.list_(pa.float32() if f.is_numeric else pa.binary())) for f in spec.inputs]
    )


def tensor_adapter_config(spec):
    """The TFXIO TensorAdapterConfig of tfxio_schema: a dense scalar tensor per column."""
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

    from transforms.features.spec import tf_feature_spec

    schema = schema_utils.schema_from_feature_spec(tf_feature_spec(spec))
    return tensor_adapter.TensorAdapterConfig(
        tfxio_schema(spec), tensor_representation_util.InferTensorRepresentationsFromSchema(schema)
    )


def tfxio_batch(filled, schema):
    """A table of filled values (CleansedBatch.filled) -> the RecordBatch of `schema` (tfxio_schema)."""
    offsets = pa.array(np.arange(filled.num_rows + 1, dtype=np.int32))
    return pa.RecordBatch.from_arrays(
        [
            pa.ListArray.from_arrays(
                offsets, pc.cast(filled.column(field.name).combine_chunks(), field.type.value_type, safe=False)
            )
            for field in schema
        ],
        schema=schema,
    )


class EncodeExamples(beam.DoFn):
    """(transformed RecordBatch, passthrough) -> its rows as serialized tf.train.Examples of `schema` (the
    transformed metadata's), by tfx-bsl's encoder, made once per worker."""

    def __init__(self, schema):
        self._schema = schema.SerializeToString()

    def setup(self):
        from tensorflow_metadata.proto.v0 import schema_pb2
        from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

        self._encoder = RecordBatchToExamplesEncoder(schema_pb2.Schema.FromString(self._schema))

    def process(self, batch_and_passthrough):
        yield from self._encoder.encode(batch_and_passthrough[0])
