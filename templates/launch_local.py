"""Launches a pipeline locally with a Flex Template's parameters, checked as Dataflow checks them
(known names, the metadata's regexes), then run on the local runner. Try a launch here before paying for
Dataflow:

    python -m templates.launch_local sli --parameters input_files=gs://b/logs/*.gz,output_table=p:sre.t
    python -m templates.launch_local sli --parameters_file params.json --local_paths

`--parameters_file` takes a JSON object {"name": "value"}, like `gcloud dataflow flex-template run
--parameters`. `--local_paths` also accepts local paths where the template wants gs:// ones.
Anything after `--` is passed to the pipeline as Beam flags (e.g. `-- --direct_num_workers 2`).
"""

import argparse
import json
import re
import sys

from templates.specs import PIPELINES, metadata

_GCS_TYPES = ("GCS_READ_FILE", "GCS_WRITE_FOLDER", "GCS_READ_FOLDER", "GCS_WRITE_FILE")


def parse_parameters(text):
    """'a=1,b=2' -> {'a': '1', 'b': '2'} (values may contain '=' but not ',', as with gcloud)."""
    params = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--parameters: '{item}' is not NAME=VALUE")
        params[name.strip()] = value
    return params


def check_parameters(pipeline, params, local_paths=False):
    """Raises ValueError naming the parameter when Dataflow would reject it."""
    spec = {p["name"]: p for p in metadata(pipeline)["parameters"]}
    for name, value in params.items():
        if name not in spec:
            raise ValueError(
                f"parameter '{name}' is not a parameter of the {pipeline} template; known: {', '.join(sorted(spec))}"
            )
        if local_paths and spec[name]["paramType"] in _GCS_TYPES and not value.startswith("gs://"):
            continue
        for regex in spec[name]["regexes"]:
            if not re.match(regex, value):
                raise ValueError(f"parameter '{name}': {value!r} does not match {regex}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", choices=sorted(PIPELINES), help="Which template.")
    parser.add_argument("--parameters", type=str, default="", help="NAME=VALUE pairs, comma-separated.")
    parser.add_argument("--parameters_file", type=str, default=None, help="JSON object of parameters.")
    parser.add_argument(
        "--local_paths",
        action="store_true",
        help="Accept local paths for parameters the template types as gs:// paths.",
    )
    args = parser.parse_args(argv)
    try:
        params = {}
        if args.parameters_file:
            with open(args.parameters_file) as f:
                params.update({k: str(v) for k, v in json.load(f).items()})
        params.update(parse_parameters(args.parameters))
        check_parameters(args.pipeline, params, args.local_paths)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    flags = [f"--{name}={value}" for name, value in params.items()]
    return PIPELINES[args.pipeline]["module"].run(flags + beam_args)


if __name__ == "__main__":
    main()
