"""Declarative config files (SLI configs, feature specs, window specs): one strict base model and one
loader, so every file is read the same way (local or gs://) and every error names the flag, the file and
the field, e.g. `--sli_config slis.yaml: services[0].journeys[1].path: path template 'x' must start
with '/'`."""

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from transforms.io.files import read_text


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the flag, the file and the field."""


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not be silently ignored) and a loaded config is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _field_path(loc, union_tags):
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in union_tags and path.endswith("]"):
            continue  # pydantic adds the union member's tag to the location; the file has no such key
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def parse_config(text, model, source, union_tags=()):
    """YAML text -> a validated `model`; ConfigError lines `<source>: <field>: <problem>`.
    `union_tags` are the tags of the model's tagged unions, left out of field paths."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    try:
        return model.model_validate(data or {})
    except ValidationError as e:
        problems = "\n".join(
            f"  {source}: {_field_path(err['loc'], union_tags)}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid {source}:\n{problems}") from None


def load_config(path, model, flag, union_tags=()):
    """The file at `path` (local or gs://), given by `flag`, as a validated `model`."""
    try:
        text = read_text(str(path))
    except Exception as e:  # noqa: BLE001 - any IO failure becomes a message naming the flag
        raise ConfigError(f"{flag}: cannot read {path}: {e}") from None
    return parse_config(text, model, f"{flag} {path}", union_tags)
