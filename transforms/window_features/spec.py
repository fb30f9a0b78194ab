"""The declarative spec of the window-features pipeline (YAML, validated on load).

    entity_field: card_id          # events are aggregated per value of this field
    time_field: event_time         # RFC 3339 text, a BigQuery/Parquet timestamp, or epoch numbers in `epoch_unit`
    epoch_unit: s                  # s | ms | us, for numeric event times
    windows:                       # event-time windows: fixed (size only) or sliding (size every period)
      - {name: 10m, size: 10m, period: 1m}
      - {name: 1h, size: 1h}
    aggregations:                  # feature "<field>_<aggregate>_<window>", e.g. amount_sum_10m
      - {field: amount, aggregates: [count, sum, mean, min, max, last]}
      - {field: merchant_id, aggregates: [distinct_count], windows: [1h]}

Durations are seconds or text such as 90s, 10m, 1h, 1d. `count` and `distinct_count` take any value;
the other aggregates need numbers.
"""

import re
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator, model_validator

from transforms.core.config import StrictModel, load_config

NUMERIC_AGGREGATES = ("sum", "mean", "min", "max", "last")
AGGREGATES = ("count", "distinct_count", *NUMERIC_AGGREGATES)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value):
    """Seconds (int) from 600 or '10m' / '90s' / '1h' / '1d'."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"([1-9][0-9]*)([smhd])", str(value).strip())
    if not match:
        raise ValueError(f"'{value}' is not a duration: give seconds or text such as 90s, 10m, 1h, 1d")
    return int(match.group(1)) * _UNITS[match.group(2)]


class EventWindow(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    size: int  # seconds
    period: int | None = None  # seconds; None: fixed windows

    @field_validator("size", "period", mode="before")
    @classmethod
    def _duration(cls, value):
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _check(self):
        if self.period is not None and self.period > self.size:
            raise ValueError(f"period ({self.period}s) must not exceed size ({self.size}s)")
        return self

    @property
    def step(self):
        """Seconds between window ends: how long a window's value stays the latest."""
        return self.period or self.size

    def starts(self, timestamp):
        """Starts of the windows (aligned to the epoch) that hold an event at `timestamp` (seconds)."""
        last = int(timestamp // self.step) * self.step
        return [start for start in range(last, int(timestamp) - self.size, -self.step) if start + self.size > timestamp]


class Aggregation(StrictModel):
    field: str
    aggregates: list[Literal[AGGREGATES]] = Field(min_length=1)
    windows: list[str] | None = None  # default: every window


class WindowFeatureSpec(StrictModel):
    entity_field: str
    time_field: str
    epoch_unit: Literal["s", "ms", "us"] = "s"
    windows: list[EventWindow] = Field(min_length=1)
    aggregations: list[Aggregation] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self):
        names = [w.name for w in self.windows]
        if len(set(names)) != len(names):
            raise ValueError(f"window names must be distinct, got {names}")
        for a in self.aggregations:
            unknown = set(a.windows or ()) - set(names)
            if unknown:
                raise ValueError(
                    f"aggregation of '{a.field}' names unknown windows {sorted(unknown)}; the windows are {names}"
                )
            if a.field in (self.entity_field, self.time_field):
                raise ValueError(f"'{a.field}' is the entity or time field: it cannot be aggregated")
        features = [name for w in self.windows for name, _, _ in self.aggregations_in(w)]
        if len(set(features)) != len(features):
            raise ValueError("an aggregate appears twice for one field and window: list each once")
        return self

    def aggregations_in(self, window):
        """[(feature name, field, aggregate)] computed in `window`."""
        return [
            (f"{a.field}_{agg}_{window.name}", a.field, agg)
            for a in self.aggregations
            if a.windows is None or window.name in a.windows
            for agg in a.aggregates
        ]

    # cached: read for every event
    @cached_property
    def numeric_fields(self):
        return sorted({a.field for a in self.aggregations if set(a.aggregates) & set(NUMERIC_AGGREGATES)})

    @cached_property
    def distinct_fields(self):
        return sorted({a.field for a in self.aggregations if "distinct_count" in a.aggregates})

    @cached_property
    def fields(self):
        return sorted({a.field for a in self.aggregations})


def load_window_spec(path):
    """Loads and validates a spec file (local or gs://); ConfigError names the flag, file and field."""
    return load_config(path, WindowFeatureSpec, "--window_spec")
