"""Model scoring: a TensorFlow SavedModel (through its serving signature) or a `.keras` file applied to
requests through Beam's RunInference, in batch or near real time, with predictions written to BigQuery,
Pub/Sub and files, and Bigtable as a serving cache.

Local default (the bundled image classifier, trained on the sample shapes, over bundled requests with a
repeated image and malformed lines; predictions in output/score, then a report):

    python -m pipelines.score

Batch on Dataflow, from JSONL requests to a BigQuery predictions table:

    python -m pipelines.score --runner DataflowRunner --project P --region us-central1 \\
        --temp_location gs://B/tmp --setup_file ./setup.py \\
        --model_path gs://B/models/shapes/3 --label_map gs://B/models/shapes/labels.txt \\
        --input_files 'gs://B/requests/*.jsonl' --output_table P:ml.predictions \\
        --dead_letter_table P:ml.dead_letters

Near real time, from Pub/Sub to a predictions topic and the Bigtable cache, picking up new model versions
written under gs://B/models/shapes/<version>/:

    python -m pipelines.score --runner DataflowRunner ... --streaming \\
        --input_subscription projects/P/subscriptions/score-requests \\
        --model_path gs://B/models/shapes/3 --model_watch_pattern 'gs://B/models/shapes/*/saved_model.pb' \\
        --predictions_topic projects/P/topics/predictions --output_table P:ml.predictions \\
        --bigtable_instance serving --bigtable_table predictions
"""

import logging
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.utils import WatchFilePattern
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.pvalue import PCollection
from tensorflow import errors as tf_errors

from pipelines.launch import (
    apply_udf,
    dead_letters_by_reason,
    local_output,
    metric_counts,
    read_records,
    run_pipeline,
    write_dead_letters,
    write_health_rows,
)
from pipelines.options import (
    BatchInputOptions,
    BigQueryOutputOptions,
    BigtableOptions,
    EventTimeOptions,
    HealthOptions,
    ImageFolderInputOptions,
    ImageLimitOptions,
    LabelMapOptions,
    OutputOptions,
    PubsubInputOptions,
    RecordInputOptions,
    RolloutOptions,
    UdfOptions,
    check_health,
    check_image_limits,
    check_input,
    check_outputs,
    check_rollout,
    check_udf,
)
from pipelines.samples import SCORE_DIR
from transforms.core.config import load_config
from transforms.images.pixels import parse_label_map
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.files import read_jsonl, read_text
from transforms.io.sinks import BigQueryTarget, BigtableTarget, WriteJsonLineBatches, WriteRecords
from transforms.io.sources import BatchRecords, Input, ReadRecords
from transforms.scoring.cache import CACHE_COLUMN_FAMILY, LookupCache, cache_key, cache_rows
from transforms.scoring.model import (
    IMAGE_SCALES,
    PREDICTION_BQ_SCHEMA,
    LoadedModel,
    TfModelHandler,
    check_image_scale,
    image_input,
    model_directory,
    model_version,
    oldest_request_seconds,
)
from transforms.scoring.online_features import AddOnlineFeatures, OnlineFeatureStore
from transforms.scoring.requests import (
    DEFAULT_MAX_INSTANCES,
    ENVELOPES_TAG,
    PREDICTIONS_FORMATS,
    ParseRequests,
    TfServingResponses,
)
from transforms.scoring.rollout import (
    CANARY_TAG,
    SHADOW_TAG,
    RolloutSlos,
    RouteRequests,
    WriteControlFile,
    check_rollout_config,
    divergence_events,
    run_model,
    version_events,
)
from transforms.sli.rows import SLI_ROW_BQ_SCHEMA
from transforms.slo.status import SLO_STATUS_BQ_SCHEMA
from transforms.window_features.spec import WindowFeatureSpec

PIPELINE = "score"
SAMPLE_MODEL = SCORE_DIR / "model" / "1"
SAMPLE_LABELS = SCORE_DIR / "labels.txt"
SAMPLE_REQUESTS = SCORE_DIR / "requests.jsonl"


class ScoreOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--model_path",
            type=str,
            default=None,
            help="SavedModel folder or .keras file, local or gs://. Its last path component is the model "
            "version recorded with each prediction (e.g. gs://B/models/shapes/3 -> 3). Default: the "
            "bundled sample classifier.",
        )
        parser.add_argument(
            "--signature",
            type=str,
            default="serving_default",
            help="SavedModel signature to call. Default: serving_default.",
        )
        parser.add_argument(
            "--top_k", type=int, default=3, help="How many labels to list per prediction with --label_map. Default: 3."
        )
        parser.add_argument(
            "--model_watch_pattern",
            type=str,
            default=None,
            help="Streaming: glob of model files to watch, e.g. 'gs://B/models/shapes/*/saved_model.pb'; the "
            "newest match replaces the model without a restart.",
        )
        parser.add_argument(
            "--model_watch_interval_seconds",
            type=int,
            default=300,
            help="How often --model_watch_pattern is checked. Default: 300.",
        )
        parser.add_argument(
            "--min_batch_size", type=int, default=1, help="Smallest batch handed to the model. Default: 1."
        )
        parser.add_argument(
            "--max_batch_size", type=int, default=256, help="Largest batch handed to the model. Default: 256."
        )
        parser.add_argument(
            "--max_batch_duration_secs",
            type=int,
            default=None,
            help="Streaming: wait at most this long to fill a batch, across bundles (stateful batching).",
        )
        parser.add_argument(
            "--transform_dir",
            type=str,
            default=None,
            help="Output folder of a feature pipeline run (holding transform_fn/ and feature_spec.yaml): "
            "requests carry the raw features, which get the spec's defaults and clipping and the exported "
            "tf.Transform function before the model, exactly as in training.",
        )
        parser.add_argument(
            "--predictions_topic",
            type=str,
            default=None,
            help="Pub/Sub topic projects/P/topics/T for predictions, one JSON message each (its request_id "
            "lets callers correlate).",
        )
        parser.add_argument(
            "--predictions_format",
            type=str,
            choices=PREDICTIONS_FORMATS,
            default="rows",
            help="What --predictions_topic gets: 'rows', one prediction row per example (as in BigQuery), or "
            '\'tf_serving\', one TensorFlow Serving response {"request_id", "predictions": [...]} per request '
            'body, in instance order ({"request_id", "error"} when an instance failed). Default: rows.',
        )
        parser.add_argument(
            "--max_instances_per_request",
            type=int,
            default=DEFAULT_MAX_INSTANCES,
            help='Most instances a TensorFlow Serving request body ({"instances": [...]}, "inputs" or '
            f'"examples") may hold; a larger body is one dead letter (too_large). Default: {DEFAULT_MAX_INSTANCES}.',
        )
        parser.add_argument(
            "--image_scale",
            type=str,
            choices=IMAGE_SCALES,
            default="auto",
            help="For a model taking decoded pixels (one height x width x 3 input): the pixel values it was "
            "trained on: 0_1 (pixel/255), 0_255, -1_1 (pixel/127.5 - 1, Keras applications' 'tf' mode) or "
            "none (raw uint8 values in the input's dtype, for models that preprocess in the graph). "
            "Default: auto, 0_1 for a float input and none for an integer one.",
        )
        parser.add_argument(
            "--cache_ttl_hours",
            type=float,
            default=24.0,
            help="With --bigtable_instance: cached predictions are garbage-collected after this many hours "
            "(set when the table is created). Default: 24.",
        )
        parser.add_argument(
            "--feature_store_instance",
            type=str,
            default=None,
            help="Online features: the Bigtable instance of --feature_store_table (project: --project).",
        )
        parser.add_argument(
            "--feature_store_table",
            type=str,
            default=None,
            help="Online features: the Bigtable table pipelines.window_features writes (its --bigtable_table). "
            "Each request gets its entity's window features as of the request's time before the model; stale "
            "ones get the value of no events. Needs --feature_store_instance and --feature_window_spec.",
        )
        parser.add_argument(
            "--feature_window_spec",
            type=str,
            default=None,
            help="Online features: the window spec YAML (local or gs://) the feature table was written with: "
            "feature names, windows, the entity and time fields (a request's time is its time field, else its "
            "publish time, else when it was read).",
        )
        parser.add_argument(
            "--entity_field",
            type=str,
            default=None,
            help="Online features: the request field holding the entity id (top level or under 'features'). "
            "Default: the window spec's entity_field.",
        )
        parser.add_argument(
            "--missing_feature_value",
            type=float,
            default=None,
            help="Online features: the value of a mean, min, max or last feature whose window had no events "
            "(counts and sums are 0). Default: none: the request's own value is kept, and without one the "
            "request is a dead letter (missing_feature).",
        )


INPUT_FLAGS = ("input_subscription", "input_topic", "input_files", "input_table", "input_query", "input_dir")
OPTION_CLASSES = (
    ScoreOptions,
    ImageLimitOptions,
    PubsubInputOptions,
    BatchInputOptions,
    RecordInputOptions,
    ImageFolderInputOptions,
    LabelMapOptions,
    BigQueryOutputOptions,
    BigtableOptions,
    UdfOptions,
    RolloutOptions,
    EventTimeOptions,
    HealthOptions,
)


class Settings(NamedTuple):
    input: Input
    model_path: str
    inputs: list  # what a request carries: the model's InputSpecs (or the raw features with --transform_dir)
    labels: list  # or None
    feature_spec: object  # the FeatureSpec of --transform_dir, or None
    rollout_config: object = None  # the SliConfig of --rollout_slo_config, or None
    online_features: object = None  # the OnlineFeatureStore of --feature_store_table, or None


class ScoreOutputs(NamedTuple):
    predictions: PCollection  # lists of rows, from the model and from the cache
    dead_letters: PCollection


def validate(options):
    """Cross-flag checks and the model's signature, before any graph is built."""
    opts = options.view_as(ScoreOptions)
    source = check_input(options, INPUT_FLAGS, Input(input_files=str(SAMPLE_REQUESTS)))
    streaming = options.view_as(StandardOptions).streaming
    if opts.model_watch_pattern and not streaming:
        raise ValueError("--model_watch_pattern needs a streaming input (--input_subscription or --input_topic)")
    if not 1 <= opts.min_batch_size <= opts.max_batch_size:
        raise ValueError(
            f"need 1 <= --min_batch_size <= --max_batch_size, got {opts.min_batch_size} and {opts.max_batch_size}"
        )
    for flag in ("top_k", "model_watch_interval_seconds", "max_instances_per_request"):
        if getattr(opts, flag) <= 0:
            raise ValueError(f"--{flag} must be positive, got {getattr(opts, flag)}")
    if opts.predictions_format == "tf_serving" and not opts.predictions_topic:
        raise ValueError("--predictions_format tf_serving shapes the messages of --predictions_topic: give a topic")
    if source.input_dir and options.view_as(UdfOptions).udf_path:
        raise ValueError("--udf_path reshapes JSON requests; it does not apply to --input_dir")
    check_udf(options)
    check_health(options)
    check_image_limits(options)
    # the Bigtable cache is not a main output
    check_outputs(options, PIPELINE, (options.view_as(BigQueryOutputOptions).output_table, opts.predictions_topic))
    default_model = opts.model_path is None
    model_path = str(SAMPLE_MODEL) if default_model else opts.model_path
    try:
        model = LoadedModel(model_directory(model_path), opts.signature)
    except (OSError, ValueError) as e:
        raise ValueError(f"--model_path: cannot load {model_path}: {str(e).splitlines()[0]}") from None
    if opts.transform_dir:
        try:
            model.attach_transform(opts.transform_dir)
        except (OSError, tf_errors.OpError) as e:
            raise ValueError(
                f"--transform_dir: cannot load a transform from {opts.transform_dir}: {str(e).splitlines()[0]}"
            ) from None
    check_image_scale(opts.image_scale, model.inputs)
    rollout_config = check_rollout_second_model(options, model, model_path)
    label_map = options.view_as(LabelMapOptions).label_map
    labels_path = str(SAMPLE_LABELS) if default_model and not label_map else label_map
    labels = None
    if labels_path:
        labels = parse_label_map(read_text(labels_path), labels_path)
        if len(model.output_names) != 1:
            raise ValueError(
                f"--label_map: the model has {len(model.output_names)} outputs {model.output_names}; "
                f"top-k labels need a classifier with one output"
            )
        if model.output_shapes[0] and model.output_shapes[0][-1] not in (None, len(labels)):
            raise ValueError(
                f"--label_map: {labels_path} has {len(labels)} labels but the model's output "
                f"'{model.output_names[0]}' has {model.output_shapes[0][-1]} scores per example"
            )
    feature_spec = getattr(model, "feature_spec", None)
    online = check_online_features(options, source, model.inputs, feature_spec)
    return Settings(source, model_path, model.inputs, labels, feature_spec, rollout_config, online)


def check_rollout_second_model(options, model, model_path):
    """The rollout flags, and the canary or shadow model against the primary: the same inputs, another
    version. Returns the --rollout_slo_config (or None)."""
    rollout = options.view_as(RolloutOptions)
    config = check_rollout(options)
    flag = "--canary_model_dir" if rollout.canary_model_dir else "--shadow_model_dir"
    second_dir = rollout.canary_model_dir or rollout.shadow_model_dir
    if not second_dir:
        return None
    if options.view_as(BigtableOptions).bigtable_instance:
        raise ValueError(f"{flag} does not combine with the Bigtable cache (--bigtable_instance): leave one out")
    if model_version(second_dir) == model_version(model_path):
        raise ValueError(
            f"{flag}: {second_dir} has the version {model_version(second_dir)!r} of --model_path; "
            "predictions and SLI rows tell versions apart by their folder (or file) name: rename one"
        )
    opts = options.view_as(ScoreOptions)
    try:
        second = LoadedModel(model_directory(second_dir), opts.signature, opts.transform_dir)
    except (OSError, ValueError, tf_errors.OpError) as e:
        raise ValueError(f"{flag}: cannot load {second_dir}: {str(e).splitlines()[0]}") from None
    if second.inputs != model.inputs or second.output_names != model.output_names:
        raise ValueError(
            f"{flag}: {second_dir} takes {second.inputs} and gives {second.output_names}, but --model_path "
            f"takes {model.inputs} and gives {model.output_names}: both versions must score the same requests"
        )
    if config is not None:
        check_rollout_config(config, [model_version(model_path), model_version(second_dir)], "--rollout_slo_config")
    return config


def check_online_features(options, source, inputs, feature_spec):
    """The OnlineFeatureStore of the --feature_store_* flags, or None without them."""
    opts = options.view_as(ScoreOptions)
    online_flags = ("feature_store_instance", "feature_store_table", "feature_window_spec")
    given = [f for f in online_flags if getattr(opts, f)]
    if not given:
        if opts.entity_field or opts.missing_feature_value is not None:
            raise ValueError(
                "--entity_field and --missing_feature_value are for online features: give --feature_store_table"
            )
        return None
    if len(given) < len(online_flags):
        missing = [f"--{f}" for f in online_flags if f not in given]
        raise ValueError(
            "online features need --feature_store_instance, --feature_store_table and --feature_window_spec: "
            f"add {missing}"
        )
    if source.input_dir or (feature_spec is None and image_input(inputs)):
        raise ValueError("--feature_store_table adds named features to requests, but the model takes an image")
    spec = load_config(opts.feature_window_spec, WindowFeatureSpec, "--feature_window_spec")
    names = {name for w in spec.windows for name, _, _ in spec.aggregations_in(w)}
    if not names & {s.name for s in inputs}:
        raise ValueError(
            f"--feature_window_spec {opts.feature_window_spec}: the model takes none of its features "
            f"{sorted(names)[:10]}; it takes {[s.name for s in inputs][:10]}"
        )
    return OnlineFeatureStore(
        options.view_as(GoogleCloudOptions).project,
        opts.feature_store_instance,
        opts.feature_store_table,
        spec,
        opts.entity_field or spec.entity_field,
        opts.missing_feature_value,
    )


def build(pipeline, options, settings, source=None, model_updates=None):
    """Wires the graph. `source` replaces the input (Create/TestStream in tests): PubsubMessage, JSON lines,
    dicts or ImageInput, batched here as ReadRecords(batched=True) batches the files. `model_updates`
    (ModelMetadata) replaces the --model_watch_pattern watcher. Requests move as ScoringBatches and rows
    as lists (one Beam element per batch); only the sinks that take one row at a time get single rows."""
    opts = options.view_as(ScoreOptions)
    bt, out = options.view_as(BigtableOptions), options.view_as(OutputOptions)
    streaming = options.view_as(StandardOptions).streaming
    project = options.view_as(GoogleCloudOptions).project
    limits = options.view_as(ImageLimitOptions)
    if source is None:
        source = ReadRecords(
            settings.input, options.view_as(RecordInputOptions).input_format, limits.max_image_bytes, True
        )
        raw = read = read_records(pipeline, PIPELINE, source, "ReadRequests")
    else:
        read = read_records(pipeline, PIPELINE, source, "ReadRequests")
        raw = read | "BatchRecords" >> BatchRecords()
    raw, dead_letter_sources = apply_udf(options, raw, PIPELINE, batched=True)
    if settings.online_features:
        raw, feature_dead_letters = raw | "OnlineFeatures" >> AddOnlineFeatures(settings.online_features, PIPELINE)
        dead_letter_sources.append(feature_dead_letters)
    parsed = raw | "ParseRequests" >> beam.ParDo(
        ParseRequests(
            settings.inputs,
            settings.feature_spec,
            PIPELINE,
            limits.max_image_bytes,
            limits.max_image_pixels,
            opts.image_scale,
            opts.max_instances_per_request,
            opts.signature,
            opts.max_batch_size,
            online_features=settings.online_features is not None,
        )
    ).with_outputs(DEAD_LETTER_TAG, ENVELOPES_TAG, main="requests")
    dead_letter_sources.append(parsed[DEAD_LETTER_TAG])
    requests = parsed.requests
    if model_updates is None and opts.model_watch_pattern:
        model_updates = pipeline | "WatchModel" >> WatchFilePattern(
            opts.model_watch_pattern, interval=opts.model_watch_interval_seconds
        )
    predictions = []
    cache = (
        BigtableTarget(
            project,
            bt.bigtable_instance,
            bt.bigtable_table,
            CACHE_COLUMN_FAMILY,
            cache_key,
            "scored_at",
            opts.cache_ttl_hours,
        )
        if bt.bigtable_instance
        else None
    )
    if cache:
        side = [beam.pvalue.AsList(model_updates)] if model_updates is not None else []
        looked_up = requests | "LookupCache" >> beam.ParDo(
            LookupCache(cache, model_version(settings.model_path), PIPELINE), *side
        ).with_outputs(LookupCache.MISSES, main="hits")
        predictions.append(looked_up.hits)
        requests = looked_up[LookupCache.MISSES]
    rollout = options.view_as(RolloutOptions)
    second_dir = rollout.canary_model_dir or rollout.shadow_model_dir
    if second_dir:
        routed = requests | "RouteRequests" >> beam.ParDo(
            RouteRequests(
                PIPELINE,
                rollout.canary_fraction,
                bool(rollout.shadow_model_dir),
                rollout.rollback_control_file,
                rollout.rollback_poll_seconds,
            )
        ).with_outputs(DEAD_LETTER_TAG, CANARY_TAG, SHADOW_TAG, main="primary")
        dead_letter_sources.append(routed[DEAD_LETTER_TAG])
        requests = routed.primary

    def handler(model_path):
        return TfModelHandler(
            model_path,
            opts.signature,
            opts.min_batch_size,
            opts.max_batch_size,
            opts.max_batch_duration_secs if streaming else None,
            opts.transform_dir,
        )

    primary_rows, scoring_dead_letters = run_model(
        requests, handler(settings.model_path), settings.labels, opts.top_k, PIPELINE, model_updates=model_updates
    )
    predictions.append(primary_rows)
    instance_sources = [parsed[DEAD_LETTER_TAG], *scoring_dead_letters]  # where an instance's dead letter can be
    dead_letter_sources += scoring_dead_letters
    if second_dir:
        prefix = "Canary" if rollout.canary_model_dir else "Shadow"
        second_rows, second_dead_letters = run_model(
            routed[CANARY_TAG if rollout.canary_model_dir else SHADOW_TAG],
            handler(second_dir),
            settings.labels,
            opts.top_k,
            PIPELINE if rollout.canary_model_dir else f"{PIPELINE}_shadow",  # a shadow's counts apart
            prefix,
        )
        if rollout.canary_model_dir:  # a shadow's outcomes feed its SLI rows only
            predictions.append(second_rows)
            instance_sources += second_dead_letters
            dead_letter_sources += second_dead_letters
    batches = predictions | "AllPredictions" >> beam.Flatten()  # lists of rows
    output_table = options.view_as(BigQueryOutputOptions).output_table
    tf_serving = opts.predictions_format == "tf_serving"
    local_prefix = local_output(options, "predictions")
    if local_prefix:
        batches | "WritePredictionFiles" >> WriteJsonLineBatches(local_prefix, streaming)
    sink_failures = ()
    if output_table or opts.predictions_topic or cache:  # sinks that take one row at a time
        rows = batches | "Rows" >> beam.FlatMap(lambda batch: batch)
        sink_failures = rows | "WritePredictions" >> WriteRecords(
            PIPELINE,
            BigQueryTarget(output_table, PREDICTION_BQ_SCHEMA, "scored_at", ["model_version"])
            if output_table
            else None,
            out.bq_write_method,
            pubsub_topic=None if tf_serving else opts.predictions_topic,
            streaming=streaming,
        )
    if tf_serving:
        (
            (rows, parsed[ENVELOPES_TAG], instance_sources | "InstanceDeadLetters" >> beam.Flatten())
            | "TfServingResponses" >> TfServingResponses()
            | "WriteResponses" >> WriteRecords(PIPELINE, pubsub_topic=opts.predictions_topic, streaming=streaming)
        )
    if cache:
        (
            rows
            | "CacheRows" >> beam.FlatMap(cache_rows)
            | "WriteCache" >> WriteRecords(PIPELINE, bigtable=cache, streaming=streaming)
        )
    if settings.rollout_config:
        service = settings.rollout_config.services[0].name
        primary_version, second_version = model_version(settings.model_path), model_version(second_dir)
        sli_rows, slo_status, rollbacks = (
            *version_events("", primary_rows, scoring_dead_letters, service, primary_version),
            *version_events(prefix, second_rows, second_dead_letters, service, second_version),
            *divergence_events(settings.rollout_config, primary_rows, second_rows, rollout.divergence_threshold),
        ) | "RolloutSlos" >> RolloutSlos(
            settings.rollout_config,
            PIPELINE,
            options.view_as(EventTimeOptions).allowed_lateness_seconds,
            second_version if rollout.canary_model_dir else None,
            primary_version,
        )
        sink_failures += sli_rows | "WriteRolloutSliRows" >> WriteRecords(
            PIPELINE,
            BigQueryTarget(rollout.rollout_sli_table, SLI_ROW_BQ_SCHEMA, "window_start", ["sli_id"])
            if rollout.rollout_sli_table
            else None,
            out.bq_write_method,
            local_prefix=local_output(options, "rollout_sli_rows"),
            streaming=streaming,
        )
        if slo_status is not None:
            sink_failures += slo_status | "WriteRolloutSloStatus" >> WriteRecords(
                PIPELINE,
                BigQueryTarget(rollout.rollout_slo_table, SLO_STATUS_BQ_SCHEMA, "evaluated_at", ["slo"])
                if rollout.rollout_slo_table
                else None,
                out.bq_write_method,
                local_prefix=local_output(options, "rollout_slo_status"),
                streaming=streaming,
            )
        if rollbacks is not None:
            rollbacks | "PublishRollbacks" >> WriteRecords(
                PIPELINE,
                pubsub_topic=rollout.rollback_topic,
                local_prefix=local_output(options, "rollbacks"),
                streaming=streaming,
            )
            rollbacks | "WriteRollbackControl" >> beam.ParDo(WriteControlFile(rollout.rollback_control_file, PIPELINE))
    dead_letters = write_dead_letters(options, PIPELINE, read, (*dead_letter_sources, *sink_failures))
    write_health_rows(options, PIPELINE, batches, dead_letters, oldest_request_seconds)
    return ScoreOutputs(batches, dead_letters)


def report(result, options, _settings):
    output_dir = options.view_as(OutputOptions).output_dir
    counts = metric_counts(result, PIPELINE)
    lines = [
        f"scored: {counts.get('scored', 0)}  from the cache: {counts.get('cache_hits', 0)}  "
        f"dead letters: {counts.get('dead_letters', 0)}"
    ]
    if counts.get("envelopes"):
        lines.append(
            f"TF Serving request bodies: {counts['envelopes']}, holding {counts.get('envelope_instances', 0)} instances"
        )
    if options.view_as(RolloutOptions).canary_model_dir:
        lines.append(
            f"routed to the primary: {counts.get('routed_to_primary', 0)}  to the canary: "
            f"{counts.get('routed_to_canary', 0)}  rollbacks: {counts.get('rollbacks', 0)}"
        )
    by_reason = dead_letters_by_reason(counts)
    if by_reason:
        lines.append(by_reason)
    if output_dir:
        rows = read_jsonl(FileSystems.join(output_dir, "predictions*.jsonl"), limit=5)
        for row in rows:
            best = row["top_k"][0] if row["top_k"] else None
            lines.append(
                f"{row['request_id']:<28} model {row['model_version']}: "
                + (f"{best['label']} {best['score']:.3f}" if best else row["outputs"][:60])
            )
        more = counts.get("scored", 0) + counts.get("cache_hits", 0) - len(rows)
        if more > 0:
            lines.append(f"... {more} more in {output_dir}/predictions-*.jsonl")
    return "\n".join(lines)


def run(argv=None):
    return run_pipeline(argv, __doc__, OPTION_CLASSES, validate, build, report)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
