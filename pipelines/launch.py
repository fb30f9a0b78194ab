"""What every `python -m pipelines.<name>` shares around its graph: parsing and --help, the local runner
choice, the first and last steps of build() (records in, dead letters, progress), the UDF step, reports."""

import argparse
import functools
import gc
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions, StandardOptions
from apache_beam.transforms.trigger import GeneralTriggerDriver
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from pipelines.options import HEALTH_SINK_FLAGS, HealthOptions, OutputOptions, UdfOptions
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.sinks import BigQueryTarget, WriteDeadLetters, WriteRecords
from transforms.io.sources import BatchRecords
from transforms.io.udf import ApplyUdf, ApplyUdfToBatch, udf_failure_dead_letter
from transforms.sli.rows import SLI_ROW_BQ_SCHEMA
from transforms.slo.health import PipelineHealth, element_timestamp

UDF_BATCH = 32  # records per round trip to a Python UDF's subprocess


def apply_udf(options, records, pipeline_name, batched=False):
    """`records` through --udf_path's function when one is given: (records, [the UDF's dead letters]).
    `batched`: records arrive, and leave, as lists (ReadRecords(batched=True)); the UDF sees them one by one.

    JavaScript runs in an embedded V8 with its own time and memory limits. A Python UDF runs in a
    long-lived subprocess through Beam's `with_exception_handling(use_subprocess=True, timeout=...)`, which
    survives a UDF that hangs or kills its process. Records cross to it UDF_BATCH at a time, with a time
    limit of UDF_BATCH x --udf_timeout_ms; a batch that hits it (or whose process dies) is tried again one
    record at a time with the per-record limit, so only the records at fault become dead letters (a UDF
    is a pure function: trying a record again is safe). --udf_timeout_ms 0 runs either kind in the worker
    with no time limit."""
    udf = options.view_as(UdfOptions)
    if not udf.udf_path:
        return records, []
    if batched:
        one_by_one = records | "UnbatchForUdf" >> beam.FlatMap(lambda batch: batch)
        transformed, dead_letters = apply_udf(options, one_by_one, pipeline_name)
        return transformed | "BatchAfterUdf" >> BatchRecords(), dead_letters
    fn = ApplyUdf(udf.udf_path, udf.udf_function, pipeline_name, udf.udf_timeout_ms)
    if not udf.udf_path.endswith(".py") or not udf.udf_timeout_ms:
        transformed = records | "ApplyUdf" >> beam.ParDo(fn).with_outputs(DEAD_LETTER_TAG, main="records")
        return transformed.records, [transformed[DEAD_LETTER_TAG]]
    limit_s = udf.udf_timeout_ms / 1000
    batched = (
        records
        | "WithTimestamps" >> beam.Map(lambda record, at=beam.DoFn.TimestampParam: (record, at))
        | "UdfBatches" >> beam.BatchElements(min_batch_size=UDF_BATCH, max_batch_size=UDF_BATCH)
        | "ApplyUdf"
        >> beam.ParDo(ApplyUdfToBatch(fn)).with_exception_handling(
            main_tag="records", dead_letter_tag="failed_batches", use_subprocess=True, timeout=UDF_BATCH * limit_s
        )
    )
    one_by_one = (
        batched["failed_batches"]
        | "RecordsOfFailedBatches" >> beam.FlatMap(lambda failed: [TimestampedValue(r, at) for r, at in failed[0]])
        | "ApplyUdfOneByOne"
        >> beam.ParDo(fn).with_exception_handling(
            main_tag="records", dead_letter_tag="failed_records", use_subprocess=True, timeout=limit_s
        )
    )
    failures = one_by_one["failed_records"] | "UdfFailures" >> beam.Map(
        udf_failure_dead_letter, pipeline_name, udf.udf_path, udf.udf_function, udf.udf_timeout_ms
    )
    outputs = (batched["records"], one_by_one["records"]) | "UdfOutputs" >> beam.Flatten()
    return outputs, [batched[DEAD_LETTER_TAG], one_by_one[DEAD_LETTER_TAG], failures]


def parse_pipeline_options(argv, description, option_classes):
    """Parses argv into PipelineOptions; `--help` lists the pipeline's flags, the shared ones and the
    main Beam/Dataflow ones (the rest: https://cloud.google.com/dataflow/docs/reference/pipeline-options)."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other Beam/Dataflow pipeline option (--region, --temp_location, --max_num_workers, ...) "
        "is passed through to the runner.",
    )
    for title, cls in [
        *((c.__name__, c) for c in option_classes),
        ("OutputOptions", OutputOptions),
        ("Beam: StandardOptions", StandardOptions),
        ("Beam: GoogleCloudOptions", GoogleCloudOptions),
        ("Beam: SetupOptions", SetupOptions),
    ]:
        cls._add_argparse_args(parser.add_argument_group(title))
    parser.parse_known_args(argv)  # --help exits here; type/choice errors name the flag
    return PipelineOptions(argv)


LOCAL_STREAMING_RUNNERS = ("BundleBasedDirectRunner", "DirectRunner", "SwitchingDirectRunner")


def choose_local_runner(options):
    """When no --runner is given, pick a local runner that never downloads anything (see STACK.md). A local
    streaming runner gets its late-data watermark holds fixed (judge_lateness_by_input_watermark)."""
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "BundleBasedDirectRunner" if standard.streaming else "FnApiRunner"
        logging.info("No --runner given: using %s", standard.runner)
    if standard.streaming and standard.runner in LOCAL_STREAMING_RUNNERS:
        judge_lateness_by_input_watermark()
    return standard.runner


def judge_lateness_by_input_watermark():
    """Makes the Python trigger driver, which runs every triggered GroupByKey of the local streaming runner,
    judge a window's records and panes by the GroupByKey's input watermark, as Java's ReduceFnRunner (and so
    Dataflow) does. Beam 2.77 judges them by its output watermark, which the holds of other keys' windows
    keep behind the input one: a late record that reaches a window in that gap (or before the window's
    end-of-window timer has run) leaves a watermark hold that no timer ever clears. The GroupByKey's
    output watermark then stops for good, and every event-time timer after it with it: an SLO evaluator
    downstream never evaluates another minute, so no alert fires. Idempotent; changes nothing in a batch
    run, where both watermarks are the same."""
    if getattr(GeneralTriggerDriver.process_elements, "judged_by_input_watermark", False):
        return
    beam_process_elements = GeneralTriggerDriver.process_elements

    @functools.wraps(beam_process_elements)
    def process_elements(self, state, windowed_values, output_watermark, input_watermark=MIN_TIMESTAMP):
        watermark = max(output_watermark, input_watermark)
        return beam_process_elements(self, state, windowed_values, watermark, input_watermark)

    process_elements.judged_by_input_watermark = True
    GeneralTriggerDriver.process_elements = process_elements


def dead_letters_by_reason(counts, title="dead letters by reason"):
    """The report line of the `dead_letters_<reason>` counters, or None when there were none."""
    reasons = {k[len("dead_letters_") :]: v for k, v in counts.items() if k.startswith("dead_letters_")}
    return f"{title}: " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) if reasons else None


def metric_counts(result, namespace):
    """{counter name: committed value} for one namespace (attempted where the runner has no committed)."""
    counts = {}
    for counter in result.metrics().query()["counters"]:
        if counter.key.metric.namespace == namespace:
            value = counter.committed if counter.committed is not None else counter.attempted
            counts[counter.key.metric.name] = counts.get(counter.key.metric.name, 0) + value
    return counts


def run_pipeline(argv, description, option_classes, validate, build, report):
    """What every `python -m pipelines.<name>` does: parse (--help lists the flags), validate (errors exit
    naming the flag), build and run; on Dataflow return once submitted, locally wait and print
    `report(result, options, settings)`."""
    options = parse_pipeline_options(argv, description, option_classes)
    try:
        settings = validate(options)
    except ValueError as e:  # config, spec and UDF errors included: their messages name the flag or field
        raise SystemExit(f"error: {e}") from None
    runner = choose_local_runner(options)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options, settings)
    # What exists now (the modules, TensorFlow's and Beam's included, and the graph) outlives the run: frozen,
    # the cyclic collector stops walking it at each full collection that the run's short-lived records set
    # off (the local runners run the graph in this process: a tenth of a tabular scoring run). Refcounting
    # still frees frozen objects; unfrozen after the run, cycles among them can be collected again (a
    # process that runs many pipelines, such as the tests, keeps none of them for good).
    gc.freeze()
    try:
        result = pipeline.run()
        if runner in ("DataflowRunner", "dataflow"):
            logging.info("Submitted to Dataflow; follow the job in the Dataflow console.")
            return result
        result.wait_until_finish()  # a local streaming job runs until interrupted
    finally:
        gc.unfreeze()
    print(report(result, options, settings))
    return result


def _count(element, counter):
    counter.inc(len(element) if isinstance(element, list) else 1)  # a batch of ReadRecords(batched=True)
    return element


def read_records(pipeline, pipeline_name, source, label):
    """The first steps of every build(): `source` (ReadRecords, or a Create/TestStream in tests) and the
    `<pipeline>:records_in` counter the report and progress lines read (a list counts as its records: no raw
    record is one)."""
    return (
        pipeline | label >> source | "CountRecordsIn" >> beam.Map(_count, Metrics.counter(pipeline_name, "records_in"))
    )


def local_output(options, name):
    """`<--output_dir>/<name>`, or None when there is no --output_dir."""
    output_dir = options.view_as(OutputOptions).output_dir
    return FileSystems.join(output_dir, name) if output_dir else None


def write_dead_letters(options, pipeline_name, records_read, dead_letter_sources):
    """The last steps of every build(): all dead letters (parse steps, UDF, sink failures) flattened into one
    PCollection, written to the dead-letter sinks, and the local progress lines. Returns the dead letters."""
    out = options.view_as(OutputOptions)
    dead_letters = tuple(dead_letter_sources) | "FlattenDeadLetters" >> beam.Flatten()
    dead_letters | "WriteDeadLetters" >> WriteDeadLetters(
        pipeline_name,
        out.dead_letter_table,
        out.dead_letter_topic,
        local_output(options, "dead_letters"),
        options.view_as(StandardOptions).streaming,
        out.bq_write_method,
        out.dead_letter_max_payload_bytes,
    )
    add_progress(options, pipeline_name, records_read, dead_letters)
    return dead_letters


def write_health_rows(options, pipeline_name, outputs, dead_letters, output_event_seconds=element_timestamp):
    """With a --health_* sink: the pipeline's health rows (transforms.slo.health.PipelineHealth) from its
    `outputs` and `dead_letters` (what write_dead_letters returned), written to those sinks; the event time of
    an output is its timestamp, or `output_event_seconds` of it. Rows BigQuery
    rejects become dead letters written beside the others (not counted in the health rows: that would be a
    loop). Returns the rows, or None without a sink."""
    health, out = options.view_as(HealthOptions), options.view_as(OutputOptions)
    if not any(getattr(health, flag) for flag in HEALTH_SINK_FLAGS):
        return None
    rows = (outputs, dead_letters) | "PipelineHealth" >> PipelineHealth(
        pipeline_name, health.health_freshness_seconds, output_event_seconds=output_event_seconds
    )
    table = health.health_table
    rejected = rows | "WriteHealthRows" >> WriteRecords(
        pipeline_name,
        BigQueryTarget(table, SLI_ROW_BQ_SCHEMA, "window_start", ["sli_id"]) if table else None,
        out.bq_write_method,
        pubsub_topic=health.health_topic,
        local_prefix=FileSystems.join(health.health_output_dir, "health_rows") if health.health_output_dir else None,
        streaming=True,
    )
    for failures in rejected:
        failures | "WriteHealthRowDeadLetters" >> WriteDeadLetters(
            pipeline_name,
            out.dead_letter_table,
            out.dead_letter_topic,
            local_output(options, "health_row_dead_letters"),
            True,
            out.bq_write_method,
            out.dead_letter_max_payload_bytes,
        )
    return rows


def add_progress(options, pipeline_name, records, dead_letters):
    """Progress lines on stderr for local batch runs (not on Dataflow, not in streaming, not with --progress off):
    side branches counting the records read and the dead letters."""
    from transforms.io.progress import CountProgress

    standard = options.view_as(StandardOptions)
    if (
        options.view_as(OutputOptions).progress == "off"
        or standard.streaming
        or standard.runner in ("DataflowRunner", "dataflow")
    ):
        return
    records | "ProgressRead" >> beam.ParDo(CountProgress(pipeline_name, "read"))
    dead_letters | "ProgressDeadLetters" >> beam.ParDo(CountProgress(pipeline_name, "dead letters"))
