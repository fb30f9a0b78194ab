"""OpenSLO v1 import and export of the SLI config's objectives (see docs/openslo.md).

    python -m pipelines.openslo export --sli_config pipelines/samples/sli/profile_service.yaml \\
        --output profile_service.openslo.yaml
    python -m pipelines.openslo import --sli_config pipelines/samples/sli/profile_service.yaml \\
        --openslo pipelines/samples/openslo/profile_service.yaml --output slis.yaml

Export writes one YAML document per OpenSLO object. Import keeps the formats, services and
alerting.min_events of --sli_config, takes the SLOs and burn-rate rules from --openslo, and writes a
complete SLI config for `python -m pipelines.sli --sli_config`.
"""

import argparse
import sys

import yaml
from apache_beam.io.filesystems import FileSystems

from pipelines.samples import SLI_DIR
from transforms.core.config import ConfigError
from transforms.io.files import read_text
from transforms.sli.config import load_sli_config
from transforms.slo.openslo import dump_openslo, parse_openslo

SAMPLE_CONFIG = SLI_DIR / "profile_service.yaml"


def import_openslo(sli_config, openslo):
    """The SLI config at `sli_config` with its SLOs and burn-rate rules from the OpenSLO file `openslo`,
    as YAML text."""
    base = load_sli_config(sli_config)
    try:
        text = read_text(str(openslo))
    except Exception as e:  # noqa: BLE001 - any IO failure becomes a message naming the flag
        raise ConfigError(f"--openslo: cannot read {openslo}: {e}") from None
    config = parse_openslo(text, base, f"--openslo {openslo}")
    header = f"# SLI config: formats and services from {sli_config}, SLOs and alert rules from {openslo}\n"
    return header + yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "command",
        choices=("import", "export"),
        help="import: OpenSLO documents -> SLI config; export: SLI config -> OpenSLO documents.",
    )
    parser.add_argument(
        "--sli_config",
        type=str,
        default=str(SAMPLE_CONFIG),
        help="SLI config (local or gs://): the one to export, or for import the one whose formats, services "
        "and alerting.min_events the result keeps. Default: the bundled profile_service.yaml sample.",
    )
    parser.add_argument(
        "--openslo",
        type=str,
        default=None,
        help="import only, required: the OpenSLO v1 YAML file (local or gs://) to read; one or more documents.",
    )
    parser.add_argument(
        "--output",
        type=str,
        default="-",
        help="File to write (local or gs://): the SLI config (import) or the OpenSLO documents (export). "
        "Default: - (standard output).",
    )
    args = parser.parse_args(argv)
    if args.command == "import" and not args.openslo:
        parser.error("--openslo: import needs the OpenSLO file to read")
    if args.command == "export" and args.openslo:
        parser.error("--openslo: export reads --sli_config and writes --output; drop --openslo")
    try:
        if args.command == "import":
            text = import_openslo(args.sli_config, args.openslo)
        else:
            text = dump_openslo(load_sli_config(args.sli_config), f"--sli_config {args.sli_config}")
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with FileSystems.create(args.output) as f:
            f.write(text.encode("utf-8"))
    return text


if __name__ == "__main__":
    main()
