"""The record inputs shared by the feature, skew and window-features pipelines: files in any supported
format, a BigQuery table or a query, and (for the streaming ones) Pub/Sub."""
import apache_beam as beam

from pipelines.common import BatchInputOptions, PubsubInputOptions, RecordInputOptions
from transforms.features import ReadFeatureRecords, detect_format


def check_record_inputs(options):
    """At most one of --input_files, --input_table, --input_query (and, for streaming pipelines,
    --input_subscription, --input_topic), and a known file format."""
    batch, records = options.view_as(BatchInputOptions), options.view_as(RecordInputOptions)
    pubsub = options.view_as(PubsubInputOptions)
    given = [f"--{n}" for n, v in (("input_files", batch.input_files), ("input_table", batch.input_table),
                                   ("input_query", records.input_query),
                                   ("input_subscription", pubsub.input_subscription),
                                   ("input_topic", pubsub.input_topic)) if v]
    if len(given) > 1:
        raise ValueError(f"give only one input flag, got {' and '.join(given)}")
    if batch.input_files and not records.input_format:
        detect_format(batch.input_files)


def record_source(options, default_files):
    """Pub/Sub messages (PubsubMessage, with attributes) for --input_subscription/--input_topic, else
    ReadFeatureRecords for the batch input flags; `default_files` when no input flag is given."""
    pubsub = options.view_as(PubsubInputOptions)
    if pubsub.input_subscription or pubsub.input_topic:
        return beam.io.ReadFromPubSub(subscription=pubsub.input_subscription, topic=pubsub.input_topic,
                                      with_attributes=True)
    batch, records = options.view_as(BatchInputOptions), options.view_as(RecordInputOptions)
    files = batch.input_files or (None if batch.input_table or records.input_query else str(default_files))
    return ReadFeatureRecords(files, records.input_format, batch.input_table, records.input_query)
