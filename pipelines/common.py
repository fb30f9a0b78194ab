"""What every pipeline shares: output/dead-letter flags, --help, runner defaults, the local report."""
import argparse
import logging

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)

BQ_WRITE_METHODS = ("STREAMING_INSERTS", "FILE_LOADS", "STORAGE_WRITE_API")


class OutputOptions(PipelineOptions):
    """Flags every pipeline has (declared once: Beam registers option classes globally)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--output_dir", type=str, default=None,
            help="Directory (local or gs://) for JSONL outputs and dead letters. Default when no other sink "
                 "is given: output/<pipeline> under the current directory.")
        parser.add_argument(
            "--dead_letter_table", type=str, default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for dead letters (created if missing).")
        parser.add_argument(
            "--dead_letter_topic", type=str, default=None,
            help="Pub/Sub topic projects/P/topics/T for dead letters, one JSON message each.")
        parser.add_argument(
            "--bq_write_method", type=str, default="STREAMING_INSERTS", choices=BQ_WRITE_METHODS,
            help="How BigQuery tables are written. STORAGE_WRITE_API needs Beam's Java expansion service "
                 "(fine on Dataflow). Default: STREAMING_INSERTS.")


class PubsubInputOptions(PipelineOptions):
    """For streaming pipelines. Each flag is declared once for all pipelines: Beam parses every options
    class it has seen, so two classes declaring one flag would conflict."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input_subscription", type=str, default=None,
            help="Pub/Sub subscription projects/P/subscriptions/S to read from (streaming).")
        parser.add_argument(
            "--input_topic", type=str, default=None,
            help="Pub/Sub topic projects/P/topics/T to read from through a temporary subscription (streaming).")


class UdfOptions(PipelineOptions):
    """For pipelines that read records: a user-defined function applied to each record before parsing."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--udf_path", type=str, default=None,
            help="Python (.py) or JavaScript (.js) file, local or gs://, holding a function applied to each "
                 "record before parsing; it returns the new record, or None/null to filter it out.")
        parser.add_argument(
            "--udf_function", type=str, default="process",
            help="Name of the function in --udf_path. Default: process (the Google-provided templates' "
                 "JavaScript convention).")


def parse_pipeline_options(argv, description, option_classes):
    """Parses argv into PipelineOptions; `--help` lists the pipeline's flags, the shared ones and the
    main Beam/Dataflow ones (the rest: https://cloud.google.com/dataflow/docs/reference/pipeline-options)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other Beam/Dataflow pipeline option (--region, --temp_location, --max_num_workers, ...) "
               "is passed through to the runner.")
    for title, cls in [*((c.__name__, c) for c in option_classes), ("OutputOptions", OutputOptions),
                       ("Beam: StandardOptions", StandardOptions),
                       ("Beam: GoogleCloudOptions", GoogleCloudOptions),
                       ("Beam: SetupOptions", SetupOptions)]:
        cls._add_argparse_args(parser.add_argument_group(title))
    parser.parse_known_args(argv)  # --help exits here; type/choice errors name the flag
    return PipelineOptions(argv)


def choose_local_runner(options):
    """When no --runner is given, pick a local runner that never downloads anything (see STACK.md)."""
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "BundleBasedDirectRunner" if standard.streaming else "FnApiRunner"
        logging.info("No --runner given: using %s", standard.runner)
    return standard.runner


def metric_counts(result, namespace):
    """{counter name: committed value} for one namespace (attempted where the runner has no committed)."""
    counts = {}
    for counter in result.metrics().query()["counters"]:
        if counter.key.metric.namespace == namespace:
            value = counter.committed if counter.committed is not None else counter.attempted
            counts[counter.key.metric.name] = counts.get(counter.key.metric.name, 0) + value
    return counts
