"""What every pipeline shares: output/dead-letter flags, --help, runner defaults, the local report."""

import datetime
import logging
import os

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from transforms.features.skew import DEFAULT_THRESHOLDS as SKEW_THRESHOLDS
from transforms.io.deadletter import DEFAULT_MAX_PAYLOAD_BYTES
from transforms.io.sources import Input, detect_format
from transforms.io.udf import DEFAULT_TIMEOUT_MS as DEFAULT_UDF_TIMEOUT_MS
from transforms.io.udf import load_udf

BQ_WRITE_METHODS = ("STREAMING_INSERTS", "FILE_LOADS", "STORAGE_WRITE_API")


class OutputOptions(PipelineOptions):
    """Flags every pipeline has (declared once: Beam registers option classes globally)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--output_dir",
            type=str,
            default=None,
            help="Directory (local or gs://) for JSONL outputs and dead letters. Default when no other sink "
            "is given: output/<pipeline> under the current directory.",
        )
        parser.add_argument(
            "--dead_letter_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for dead letters (created if missing).",
        )
        parser.add_argument(
            "--dead_letter_topic",
            type=str,
            default=None,
            help="Pub/Sub topic projects/P/topics/T for dead letters, one JSON message each.",
        )
        parser.add_argument(
            "--bq_write_method",
            type=str,
            default="STREAMING_INSERTS",
            choices=BQ_WRITE_METHODS,
            help="How BigQuery tables are written. STORAGE_WRITE_API needs Beam's Java expansion service "
            "(fine on Dataflow). Default: STREAMING_INSERTS.",
        )
        parser.add_argument(
            "--dead_letter_max_payload_bytes",
            type=int,
            default=DEFAULT_MAX_PAYLOAD_BYTES,
            help="Dead letters keep at most this many bytes of the original payload (with its full size and "
            f"SHA-256), so every dead letter fits a BigQuery row and a Pub/Sub message. Default: "
            f"{DEFAULT_MAX_PAYLOAD_BYTES}.",
        )
        parser.add_argument(
            "--progress",
            type=str,
            default="auto",
            choices=("auto", "off"),
            help="auto: local batch runs print progress lines (records read, throughput, dead letters so far) "
            "on stderr every 5 s; off: none. Never on Dataflow or in streaming. Default: auto.",
        )


class SliConfigOptions(PipelineOptions):
    """--sli_config, declared once for the SLI pipeline and the SLO replay."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--sli_config",
            type=str,
            default=None,
            help="YAML file (local or gs://) defining services, journeys, SLIs and SLOs. pipelines.sli takes one "
            "(default: the bundled sample profile_service.yaml); pipelines.slo_replay takes a comma-separated "
            "list, each PATH (named by its file stem) or NAME=PATH (default: the bundled profile_service.yaml "
            "and starter_slos.yaml side by side).",
        )


class PubsubInputOptions(PipelineOptions):
    """For streaming pipelines. Each flag is declared once for all pipelines: Beam parses every options
    class it has seen, so two classes declaring one flag would conflict."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input_subscription",
            type=str,
            default=None,
            help="Pub/Sub subscription projects/P/subscriptions/S to read from (streaming).",
        )
        parser.add_argument(
            "--input_topic",
            type=str,
            default=None,
            help="Pub/Sub topic projects/P/topics/T to read from through a temporary subscription (streaming).",
        )


class EventTimeOptions(PipelineOptions):
    """For pipelines aggregating in event-time windows."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--allowed_lateness_seconds",
            type=int,
            default=3600,
            help="How late (event time behind the watermark) a record may arrive and still update its "
            "window with a LATE pane. Default: 3600.",
        )


def check_allowed_lateness(options):
    lateness = options.view_as(EventTimeOptions).allowed_lateness_seconds
    if lateness < 0:
        raise ValueError(f"--allowed_lateness_seconds must be >= 0, got {lateness}")


class HealthOptions(PipelineOptions):
    """Every streaming pipeline: SLI rows about the pipeline itself (transforms/slo/health.py,
    docs/pipeline_slos.md)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--health_table",
            type=str,
            default=None,
            help="Streaming: BigQuery table PROJECT:DATASET.TABLE for the pipeline's own SLI rows (freshness of "
            "its outputs, dead-letter rate; one row per SLI and minute; created if missing).",
        )
        parser.add_argument(
            "--health_topic",
            type=str,
            default=None,
            help="Streaming: Pub/Sub topic projects/P/topics/T for the pipeline's own SLI rows, one JSON message "
            "each: the input of the job that evaluates their SLOs (pipelines.sli --sli_rows_subscription).",
        )
        parser.add_argument(
            "--health_output_dir",
            type=str,
            default=None,
            help="Streaming: directory (local or gs://) for the pipeline's own SLI rows, health_rows-*.jsonl.",
        )
        parser.add_argument(
            "--health_freshness_seconds",
            type=float,
            default=120.0,
            help="An output (or dead letter) is fresh when it leaves the pipeline at most this many seconds "
            "after its event time: the threshold of the health rows' freshness SLI. Default: 120.",
        )


HEALTH_SINK_FLAGS = ("health_table", "health_topic", "health_output_dir")


def check_health(options):
    """Health rows describe a running streaming job: their sinks need streaming, the threshold a positive value."""
    health = options.view_as(HealthOptions)
    if health.health_freshness_seconds <= 0:
        raise ValueError(f"--health_freshness_seconds must be positive, got {health.health_freshness_seconds}")
    given = [f"--{flag}" for flag in HEALTH_SINK_FLAGS if getattr(health, flag)]
    if given and not options.view_as(StandardOptions).streaming:
        raise ValueError(
            f"{' and '.join(given)}: health rows describe a streaming job; read from --input_subscription or "
            "--input_topic (or drop the flag for a batch run)"
        )


class BatchInputOptions(PipelineOptions):
    """For pipelines that read records from files or BigQuery in batch."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input_files",
            type=str,
            default=None,
            help="Newline-delimited JSON files (glob, local or gs://; .gz is decompressed), for a batch run.",
        )
        parser.add_argument(
            "--input_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE to read, for a batch run (read with the Storage Read API). "
            "PROJECT:DATASET.PREFIX* reads every table named PREFIX... side by side, such as the date shards "
            "PREFIX_YYYYMMDD a Cloud Logging sink writes; with --input_start_date/--input_end_date only the "
            "shards of those days.",
        )
        parser.add_argument(
            "--input_start_date",
            type=str,
            default=None,
            help="First day (YYYY-MM-DD, UTC) of the date shards of a wildcard --input_table to read. Default: "
            "the earliest shard.",
        )
        parser.add_argument(
            "--input_end_date",
            type=str,
            default=None,
            help="Last day (YYYY-MM-DD, UTC, included) of the date shards of a wildcard --input_table to read. "
            "Default: the latest shard.",
        )


class RecordInputOptions(PipelineOptions):
    """For pipelines reading feature records: the format of --input_files, or a BigQuery query."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input_format",
            type=str,
            default=None,
            choices=("csv", "jsonl", "parquet", "tfrecord"),
            help="Format of --input_files. Default: from the extension (.csv, .jsonl/.json, .parquet, .tfrecord; "
            "optionally .gz).",
        )
        parser.add_argument(
            "--input_query",
            type=str,
            default=None,
            help="BigQuery standard SQL query whose rows are the records (filter and sample here).",
        )


class ImageFolderInputOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input_dir",
            type=str,
            default=None,
            help="Folder of image files (local or gs://, read recursively), for a batch run. Image ingestion "
            "takes each image's label from its first sub-folder: <root>/<label>/<file>.",
        )


class ImageLimitOptions(PipelineOptions):
    """For pipelines that read images: what an image may cost before it is decoded."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--max_image_bytes",
            type=int,
            default=20 * 1024 * 1024,
            help="Larger images are dead letters (too_large); files are read no further than this. "
            "Default: 20971520 (20 MiB).",
        )
        parser.add_argument(
            "--max_image_pixels",
            type=int,
            default=40_000_000,
            help="Images declaring more pixels (width x height) are dead letters (too_many_pixels), rejected "
            "from the header before decoding, so decompression bombs never expand. Default: 40000000.",
        )


def check_image_limits(options):
    limits = options.view_as(ImageLimitOptions)
    for flag in ("max_image_bytes", "max_image_pixels"):
        if getattr(limits, flag) <= 0:
            raise ValueError(f"--{flag} must be positive, got {getattr(limits, flag)}")


class LabelMapOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--label_map",
            type=str,
            default=None,
            help="Label map (local or gs://): one class label per line, its id the line number from 0, as image "
            "ingestion writes to label_map.txt. Image ingestion: fixes the ids (required in streaming; "
            "without it a batch run numbers the labels it finds in sorted order and writes one). Scoring: "
            "names a classifier's scores, for the top-k labels.",
        )


class TfRecordOutputOptions(PipelineOptions):
    """For pipelines writing TFRecord shards per split under --output_dir."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--num_shards",
            type=int,
            default=0,
            help="TFRecord files per split (per window in streaming); 0 lets the runner decide. Default: 0.",
        )
        parser.add_argument(
            "--compression",
            type=str,
            default="gzip",
            choices=("gzip", "none"),
            help="TFRecord compression. Default: gzip.",
        )


class TensorBoardOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--tensorboard_dir",
            type=str,
            default=None,
            help="Write TensorBoard event files (local or gs://) under <dir>/<--tensorboard_run>; several runs "
            "side by side in one TensorBoard.",
        )
        parser.add_argument(
            "--tensorboard_run",
            type=str,
            default=None,
            help="Run name (sub-directory of --tensorboard_dir). Default: <pipeline>-<UTC start time>.",
        )


def resolve_tensorboard_run(options, pipeline_name):
    """Checks the TensorBoard flags and fills in the default run name."""
    import datetime

    tb = options.view_as(TensorBoardOptions)
    if tb.tensorboard_run and not tb.tensorboard_dir:
        raise ValueError("--tensorboard_run needs --tensorboard_dir")
    if tb.tensorboard_dir and not tb.tensorboard_run:
        tb.tensorboard_run = f"{pipeline_name}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"


class BigQueryOutputOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--output_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for the pipeline's main rows (created if missing, "
            "day-partitioned and clustered).",
        )


class BigtableOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--bigtable_instance",
            type=str,
            default=None,
            help="Bigtable instance for the serving rows (with --bigtable_table; project: --project).",
        )
        parser.add_argument(
            "--bigtable_table",
            type=str,
            default=None,
            help="Bigtable table for the serving rows (created with its column family if missing).",
        )


class UdfOptions(PipelineOptions):
    """For pipelines that read records: a user-defined function applied to each record before parsing."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--udf_path",
            type=str,
            default=None,
            help="Python (.py) or JavaScript (.js) file, local or gs://, holding a function applied to each "
            "record before parsing; it returns the new record, or None/null to filter it out.",
        )
        parser.add_argument(
            "--udf_timeout_ms",
            type=int,
            default=DEFAULT_UDF_TIMEOUT_MS,
            help="Time limit of the UDF per record, in milliseconds; a record over it is a udf_timeout dead "
            "letter and the UDF goes on with the next one. JavaScript UDFs also have a 256 MiB heap limit "
            "(udf_memory). Python UDFs run in a subprocess to enforce it, which costs about 70 us per record "
            "(bench/udf.py); 0 runs a trusted Python UDF in the worker itself, with no limit. "
            f"Default: {DEFAULT_UDF_TIMEOUT_MS}.",
        )
        parser.add_argument(
            "--udf_function",
            type=str,
            default="process",
            help="Name of the function in --udf_path. Default: process (the Google-provided templates' "
            "JavaScript convention).",
        )


def check_outputs(options, pipeline_name, main_sinks):
    """Bigtable flags given together (and --project with them); --output_dir defaults to output/<pipeline>
    when none of `main_sinks` (the values of the pipeline's other main-output flags) is given; dead letters
    need a destination."""
    bt, out = options.view_as(BigtableOptions), options.view_as(OutputOptions)
    if bool(bt.bigtable_instance) != bool(bt.bigtable_table):
        raise ValueError("--bigtable_instance and --bigtable_table go together: give both or neither")
    if bt.bigtable_instance and not options.view_as(GoogleCloudOptions).project:
        raise ValueError("--bigtable_instance needs --project (the Bigtable project)")
    if not (any(main_sinks) or out.output_dir):
        out.output_dir = os.path.join("output", pipeline_name)
    if not 1024 <= out.dead_letter_max_payload_bytes <= 1_000_000:
        raise ValueError(
            f"--dead_letter_max_payload_bytes must be within 1024-1000000 (BigQuery rows and Pub/Sub "
            f"messages must hold it), got {out.dead_letter_max_payload_bytes}"
        )
    if not (out.output_dir or out.dead_letter_table or out.dead_letter_topic):
        raise ValueError(
            "dead letters need a destination: set --dead_letter_table, --dead_letter_topic or --output_dir"
        )


def check_udf(options):
    """Loads --udf_path's function once at start-up, so a broken UDF fails the launch, not the workers."""
    udf = options.view_as(UdfOptions)
    if udf.udf_timeout_ms < 0:
        raise ValueError(f"--udf_timeout_ms must be >= 0 (0: no limit), got {udf.udf_timeout_ms}")
    if udf.udf_path:
        load_udf(udf.udf_path, udf.udf_function)


def check_input(options, flags, default):
    """The run's one input (transforms.io.sources.Input) among the pipeline's input `flags`: more than one
    fails naming them; none gives `default` (an Input of the bundled sample). A Pub/Sub input turns
    streaming on; --input_files needs a format known from --input_format or the extension."""
    values = options.get_all_options()
    given = Input(**{flag: values.get(flag) for flag in flags})
    if len(given.given()) > 1:
        raise ValueError(f"give only one input flag, got {' and '.join(given.given())}")
    if given.input_subscription or given.input_topic:
        options.view_as(StandardOptions).streaming = True
    if given.input_files and "input_format" in values and not values["input_format"]:
        detect_format(given.input_files)
    start, end = (_shard_date(values.get(flag), f"--{flag}") for flag in ("input_start_date", "input_end_date"))
    if given.input_table and given.input_table.endswith("*"):
        given = given._replace(input_table=",".join(list_date_shards(given.input_table, start, end)))
    elif start or end:
        raise ValueError(
            "--input_start_date/--input_end_date select the date shards of a wildcard table: give "
            "--input_table PROJECT:DATASET.PREFIX*"
        )
    return given if given.given() else default


def _shard_date(value, flag):
    """YYYY-MM-DD -> the YYYYMMDD suffix of a date shard (None stays None)."""
    if not value:
        return None
    try:
        return datetime.date.fromisoformat(value).strftime("%Y%m%d")
    except ValueError:
        raise ValueError(f"{flag}: {value!r} is not a date YYYY-MM-DD") from None


def select_date_shards(prefix, table_ids, start=None, end=None):
    """The ids among `table_ids` that a BigQuery wildcard table `prefix*` covers (sorted), only the date
    shards `prefix` + YYYYMMDD from `start` to `end` (YYYYMMDD, both included) when either is given."""
    matched = sorted(t for t in table_ids if t.startswith(prefix))
    if start is None and end is None:
        return matched
    return [
        t for t in matched if _is_day(suffix := t[len(prefix) :]) and (start or suffix) <= suffix <= (end or suffix)
    ]


def _is_day(suffix):
    try:
        datetime.datetime.strptime(suffix, "%Y%m%d")
    except ValueError:
        return False
    return len(suffix) == 8


def list_date_shards(table, start=None, end=None):
    """PROJECT:DATASET.PREFIX* -> the PROJECT:DATASET.TABLE specs of its shards (see select_date_shards),
    listed with the BigQuery API when the pipeline is built."""
    from google.cloud import bigquery

    project, sep, rest = table.partition(":")
    dataset, dot, prefix = rest.partition(".")
    if not (sep and dot and project and dataset):
        raise ValueError(f"--input_table: {table!r} is not PROJECT:DATASET.PREFIX*")
    prefix = prefix[:-1]
    ids = [t.table_id for t in bigquery.Client(project=project).list_tables(f"{project}.{dataset}")]
    shards = select_date_shards(prefix, ids, start, end)
    if not shards:
        days = f" from {start or 'the first'} to {end or 'the last'} day" if start or end else ""
        raise ValueError(
            f"--input_table: no table of {project}:{dataset} matches {prefix}*{days}; check the table name and "
            "--input_start_date/--input_end_date"
        )
    return [f"{project}:{dataset}.{t}" for t in shards]


class RolloutOptions(PipelineOptions):
    """Scoring: a second model version beside the primary (pipelines.score, docs/score.md "Model rollouts")."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--canary_model_dir",
            type=str,
            default=None,
            help="A second model (SavedModel folder or .keras file, local or gs://) that scores the requests "
            "--canary_fraction selects; its last path component is its version.",
        )
        parser.add_argument(
            "--canary_fraction",
            type=float,
            default=0.05,
            help="With --canary_model_dir: the share of requests it scores, chosen by a hash of the request id "
            "(a request id always goes to the same version). Default: 0.05.",
        )
        parser.add_argument(
            "--shadow_model_dir",
            type=str,
            default=None,
            help="A second model that scores every request beside the primary; only the primary's predictions "
            "are written, the shadow's feed the per-version SLI rows.",
        )
        parser.add_argument(
            "--rollout_slo_config",
            type=str,
            default=None,
            help="SLI/SLO config YAML (as --sli_config) over the scoring events of each version: one service, "
            "one journey per version with path /model/<version>. Gives per-version SLI rows and SLO status; "
            "a FIRING alert on an SLO of the canary's journey rolls the canary back.",
        )
        parser.add_argument(
            "--rollback_control_file",
            type=str,
            default=None,
            help="With --canary_model_dir: file (local or gs://) written on rollback; while it exists no "
            "request goes to the canary (delete it and restart to route to the canary again).",
        )
        parser.add_argument(
            "--rollback_poll_seconds",
            type=float,
            default=10.0,
            help="How often each worker checks --rollback_control_file. Default: 10.",
        )
        parser.add_argument(
            "--divergence_threshold",
            type=float,
            default=SKEW_THRESHOLDS["js_divergence"],
            help="Rollouts: the Jensen-Shannon divergence (base 2, 0 to 1) of the second version's predictions "
            "against the primary's over which a minute counts as bad on the journey at /rollout/divergence of "
            "--rollout_slo_config. Default: 0.1.",
        )
        parser.add_argument(
            "--rollback_topic",
            type=str,
            default=None,
            help="Pub/Sub topic projects/P/topics/T for rollback messages, one JSON message per FIRING alert "
            "of a canary SLO.",
        )
        parser.add_argument(
            "--rollout_sli_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for the per-version SLI rows (created if missing).",
        )
        parser.add_argument(
            "--rollout_slo_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for the SLO status rows of --rollout_slo_config.",
        )


def check_rollout(options):
    """Cross-flag checks of RolloutOptions; returns the loaded --rollout_slo_config (or None)."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.io.files import read_text
    from transforms.sli.config import parse_sli_config

    opts = options.view_as(RolloutOptions)
    if opts.canary_model_dir and opts.shadow_model_dir:
        raise ValueError("give one of --canary_model_dir or --shadow_model_dir, not both")
    second = opts.canary_model_dir or opts.shadow_model_dir
    if opts.canary_model_dir and not 0 < opts.canary_fraction < 1:
        raise ValueError(f"--canary_fraction must be between 0 and 1 (exclusive), got {opts.canary_fraction}")
    if not 0 < opts.divergence_threshold < 1:
        raise ValueError(f"--divergence_threshold must be between 0 and 1 (exclusive), got {opts.divergence_threshold}")
    if opts.rollback_poll_seconds <= 0:
        raise ValueError(f"--rollback_poll_seconds must be positive, got {opts.rollback_poll_seconds}")
    needs_second = ("rollout_slo_config", "rollback_control_file", "rollback_topic", "rollout_sli_table")
    for flag in needs_second:
        if getattr(opts, flag) and not second:
            raise ValueError(f"--{flag} needs a second model: give --canary_model_dir or --shadow_model_dir")
    for flag in ("rollback_control_file", "rollback_topic"):
        if getattr(opts, flag) and not (opts.canary_model_dir and opts.rollout_slo_config):
            raise ValueError(f"--{flag} is for rolling back a canary: give --canary_model_dir and --rollout_slo_config")
    if not opts.rollout_slo_config:
        if opts.rollout_slo_table:
            raise ValueError("--rollout_slo_table needs --rollout_slo_config")
        return None
    try:
        config = parse_sli_config(read_text(opts.rollout_slo_config), f"--rollout_slo_config {opts.rollout_slo_config}")
    except OSError as e:
        raise ValueError(f"--rollout_slo_config: cannot read {opts.rollout_slo_config}: {e}") from None
    if opts.canary_model_dir and config.slos and not opts.rollback_control_file:
        raise ValueError(
            "--rollout_slo_config defines SLOs: give --rollback_control_file, the file a rollback writes and the "
            "routing reads"
        )
    if opts.rollback_control_file and FileSystems.exists(opts.rollback_control_file):
        logging.warning(
            "--rollback_control_file %s exists: the canary was rolled back and gets no requests; delete the file "
            "to route to it again",
            opts.rollback_control_file,
        )
    return config
