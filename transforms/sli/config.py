"""SLI definitions: a declarative YAML file, validated on load, and the journey matcher built from it.

See `pipelines/samples/sli/*.yaml` for annotated examples. Errors name the file and the field at fault.
"""

import re
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, field_validator, model_validator

from transforms.core.config import ConfigError, StrictModel, load_config, parse_config
from transforms.core.records import remember

UNMATCHED_JOURNEY = "_unmatched"
_STATUS_CLASS = re.compile(r"^[1-5]xx$")
_TEMPLATE_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _check_statuses(values):
    for v in values:
        if isinstance(v, int) and 100 <= v <= 599:
            continue
        if isinstance(v, str) and _STATUS_CLASS.match(v):
            continue
        raise ValueError(f"{v!r} is neither an HTTP status code (100-599) nor a class such as '5xx'")
    return values


def status_matcher(values):
    """Returns a predicate on an int status for a list like [429, '5xx']."""
    codes = frozenset(v for v in values if isinstance(v, int))
    classes = frozenset(int(v[0]) for v in values if isinstance(v, str))
    return lambda status: status in codes or status // 100 in classes


class AvailabilitySli(StrictModel):
    kind: Literal["availability"]
    name: str | None = None
    bad_status: list[int | str] = ["5xx"]
    check_bad_status = field_validator("bad_status")(_check_statuses)


class LatencySli(StrictModel):
    kind: Literal["latency"]
    name: str | None = None
    threshold_ms: float = Field(gt=0)


class ThroughputSli(StrictModel):
    kind: Literal["throughput"]
    name: str | None = None


class ErrorRateSli(StrictModel):
    kind: Literal["error_rate"]
    name: str | None = None
    error_status: list[int | str] = ["5xx"]
    check_error_status = field_validator("error_status")(_check_statuses)


Sli = Annotated[AvailabilitySli | LatencySli | ThroughputSli | ErrorRateSli, Field(discriminator="kind")]


def sli_short_name(sli):
    if sli.name:
        return sli.name
    if sli.kind == "latency":
        return f"latency_{sli.threshold_ms:g}ms"
    return sli.kind


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MINUTES_PER_WEEK = 7 * 1440


class WeeklySlot(StrictModel):
    day: Literal[_WEEKDAYS]
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM, UTC")
    minutes: int = Field(gt=0, le=_MINUTES_PER_WEEK)

    @field_validator("start", mode="before")
    @classmethod
    def _quoted(cls, start):
        if not isinstance(start, str):
            raise ValueError("write the time in quotes, e.g. '12:30' (YAML reads 12:30 unquoted as a number)")
        return start

    def first_minute(self):
        """Minute of the week (Monday 00:00 UTC is 0) the slot starts at."""
        hours, minutes = map(int, self.start.split(":"))
        return _WEEKDAYS.index(self.day) * 1440 + hours * 60 + minutes


class Exclusion(StrictModel):
    """Minutes left out of an SLO's compliance, budget and alerts: one interval [start, end) or a weekly
    slot. A minute is excluded when its start falls inside."""

    reason: str = Field(min_length=1, description="shown in the status rows")
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    weekly: WeeklySlot | None = None

    @model_validator(mode="after")
    def _shape(self):
        one_off = self.start is not None or self.end is not None
        if one_off == (self.weekly is not None):
            raise ValueError("give either 'start' and 'end' (one interval) or 'weekly' (a slot every week)")
        if one_off and (self.start is None or self.end is None or self.end <= self.start):
            raise ValueError("an interval needs 'start' and a later 'end' (ISO times with a zone)")
        return self

    def covers(self, minute):
        """Whether minute index `minute` (minutes since the epoch) is excluded."""
        if self.weekly is None:
            return self.start.timestamp() <= minute * 60 < self.end.timestamp()
        minute_of_week = (minute // 1440 + 3) % 7 * 1440 + minute % 1440  # 1970-01-01 was a Thursday
        return (minute_of_week - self.weekly.first_minute()) % _MINUTES_PER_WEEK < self.weekly.minutes


class Journey(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # part of SLI ids and row keys
    methods: list[str] = Field(default_factory=list, description="empty: any method")
    path: str | None = Field(None, description="template such as /profile/{user}")
    regex: str | None = Field(None, description="Python regex matched against the whole path")
    slis: list[Sli] | None = None

    @field_validator("methods")
    @classmethod
    def _upper(cls, methods):
        return [m.upper() for m in methods]

    @field_validator("path")
    @classmethod
    def _template(cls, path):
        if path is not None and not path.startswith("/"):
            raise ValueError(f"path template {path!r} must start with '/'")
        return path

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex):
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as e:
                raise ValueError(f"invalid regex {regex!r}: {e}") from None
        return regex

    @model_validator(mode="after")
    def _one_matcher(self):
        if (self.path is None) == (self.regex is None):
            raise ValueError("give exactly one of 'path' (a template like /profile/{user}) or 'regex'")
        return self

    def path_pattern(self):
        if self.regex is not None:
            return re.compile(self.regex)
        parts = _TEMPLATE_VAR.split(self.path)
        # even parts are literal text, odd parts variable names: a variable matches one path segment.
        return re.compile("".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(parts)))


class Service(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # part of SLI ids and row keys
    hosts: list[str] = Field(default_factory=list, description="URL hosts that also identify this service")
    slis: list[Sli] = Field(default_factory=lambda: [AvailabilitySli(kind="availability")])
    journeys: list[Journey] = Field(min_length=1)
    exclusions: list[Exclusion] = Field(default_factory=list, description="for every SLO over this service")

    @model_validator(mode="after")
    def _unique(self):
        names = [j.name for j in self.journeys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"journey names must be unique within a service: {dupes}")
        for journey in self.journeys:
            short = [sli_short_name(s) for s in (journey.slis or self.slis)]
            if len(set(short)) != len(short):
                raise ValueError(f"journey {journey.name!r}: two SLIs share a name; give one a 'name'")
        return self


class FieldMapping(StrictModel):
    """Where the request fields live in a JSON record; dotted paths reach into nested objects."""

    timestamp_field: str = "timestamp"
    method_field: str = "method"
    path_field: str = "path"
    status_field: str = "status"
    latency_field: str = "latency_ms"
    latency_unit: Literal["ms", "s", "us"] = "ms"
    service_field: str = "service"


class AppLogMapping(FieldMapping):
    """Java JSON layout logs: time, level and logger come from the layout; request fields are looked up
    in the context map (MDC) first, then at the top level."""

    method_field: str = "http.method"
    path_field: str = "http.path"
    status_field: str = "http.status"
    latency_field: str = "http.latency_ms"


class Formats(StrictModel):
    app_log: AppLogMapping = AppLogMapping()
    flat: FieldMapping = FieldMapping()


class SloComponent(StrictModel):
    sli: str = Field(description="an sli_id: <service>/<journey>/<sli name>")
    weight: float = Field(1.0, gt=0)


class Slo(StrictModel):
    """An objective over one SLI (`sli`) or a weighted composite of several (`components`).

    Composite ratio over a window = sum(weight_i * ratio_i) / sum(weight_i), ratio_i being component i's
    good/total (occurrences) or good minutes/minutes with data (timeslices) over that window; components
    without data in the window are left out of both sums."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # part of SLI ids and row keys
    sli: str | None = None
    components: list[SloComponent] | None = None
    target: float = Field(gt=0, lt=1)
    window: Literal["rolling", "calendar_month"] = "rolling"
    window_days: int = Field(28, ge=1, le=90, description="rolling windows: their length")
    method: Literal["occurrences", "timeslices"] = "occurrences"
    timeslice_threshold: float | None = Field(None, gt=0, le=1)
    exclusions: list[Exclusion] = Field(default_factory=list)
    minutes_without_data: Literal["skip", "bad"] = Field(
        "skip", description="timeslices: 'bad' counts a minute with no SLI row as a bad minute (a stalled source)"
    )

    @model_validator(mode="after")
    def _shape(self):
        if self.minutes_without_data == "bad" and self.method != "timeslices":
            raise ValueError("'minutes_without_data: bad' counts minutes: it goes with method: timeslices")
        if (self.sli is None) == (self.components is None):
            raise ValueError("give exactly one of 'sli' (one SLI) or 'components' (a weighted composite)")
        if self.components is not None and not self.components:
            raise ValueError("'components' needs at least one SLI")
        if (self.method == "timeslices") != (self.timeslice_threshold is not None):
            raise ValueError("'timeslice_threshold' (the good ratio a minute needs) goes with method: timeslices")
        return self

    def slis(self):
        """[(sli_id, weight)]"""
        return [(self.sli, 1.0)] if self.sli else [(c.sli, c.weight) for c in self.components]


def exact(number):
    """A config number or count as a Fraction, a float through its decimal text (0.9999 is 9999/10000), so
    that decisions compare exactly."""
    return Fraction(str(number)) if isinstance(number, float) else Fraction(number)


class BurnRateRule(StrictModel):
    """Alert when the burn rate over both windows exceeds share * compliance period / long window (strictly:
    a burn rate equal to the threshold does not fire), once that has held for `for_minutes`; resolve once
    it has not held for `keep_firing_for_minutes`."""

    severity: Literal["page", "ticket"]
    long_window_minutes: int = Field(gt=0)
    short_window_minutes: int = Field(gt=0)
    budget_share: float = Field(gt=0, le=1, description="budget consumed over the long window at that rate")
    for_minutes: int = Field(0, ge=0, description="fire once the condition has held this long (Prometheus for)")
    keep_firing_for_minutes: int = Field(
        0, ge=0, description="resolve once the condition has been clear this long (Prometheus keep_firing_for)"
    )

    def threshold(self, window_days):
        """The burn-rate threshold, exact (a Fraction)."""
        return exact(self.budget_share) * window_days * 24 * 60 / self.long_window_minutes


DEFAULT_BURN_RATE_RULES = (  # the SRE workbook's policy: 14.4, 6 and 1 for a 30-day window
    BurnRateRule(severity="page", long_window_minutes=60, short_window_minutes=5, budget_share=0.02),
    BurnRateRule(severity="page", long_window_minutes=360, short_window_minutes=30, budget_share=0.05),
    BurnRateRule(severity="ticket", long_window_minutes=4320, short_window_minutes=360, budget_share=0.10),
)


class Alerting(StrictModel):
    min_events: int = Field(100, ge=0, description="no alert when a long window holds fewer events")
    rules: list[BurnRateRule] = Field(default_factory=lambda: list(DEFAULT_BURN_RATE_RULES))


class SliConfig(StrictModel):
    formats: Formats = Formats()
    services: list[Service] = Field(min_length=1)
    slos: list[Slo] = Field(default_factory=list)
    alerting: Alerting = Alerting()

    @model_validator(mode="after")
    def _unique(self):
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        slo_names = [s.name for s in self.slos]
        if len(set(slo_names)) != len(slo_names):
            raise ValueError(f"SLO names must be unique: {slo_names}")
        return self

    def exclusions_for(self, slo):
        """The SLO's own exclusions and those of the services its SLIs belong to."""
        services = {sli_id.split("/")[0] for sli_id, _ in slo.slis()}
        return list(slo.exclusions) + [e for s in self.services if s.name in services for e in s.exclusions]

    def sli_ids(self):
        return {
            f"{service.name}/{journey.name}/{sli_short_name(sli)}"
            for service in self.services
            for journey in service.journeys
            for sli in (journey.slis or service.slis)
        }


def _check_slo_references(config, source):
    known = config.sli_ids()
    problems = []
    for i, slo in enumerate(config.slos):
        for j, (sli_id, _) in enumerate(slo.slis()):
            if sli_id not in known:
                field = f"slos[{i}].sli" if slo.sli else f"slos[{i}].components[{j}].sli"
                problems.append(
                    f"  {source}: {field}: no SLI {sli_id!r} in services; known: {', '.join(sorted(known))}"
                )
    if problems:
        raise ConfigError(f"invalid {source}:\n" + "\n".join(problems))
    return config


_SLI_KINDS = ("availability", "latency", "throughput", "error_rate")  # the tags of the SLI union


def parse_sli_config(text, source="<string>"):
    """YAML text -> SliConfig; ConfigError names `source` and the field."""
    return _check_slo_references(parse_config(text, SliConfig, source, _SLI_KINDS), source)


def load_sli_config(path):
    """Loads and validates a config from a local path or gs:// URI."""
    return _check_slo_references(load_config(path, SliConfig, "--sli_config", _SLI_KINDS), f"--sli_config {path}")


class JourneyMatcher:
    """Maps (service, host, method, path) to (service, journey, [SLI]); first matching journey wins."""

    def __init__(self, config):
        self._services = {}
        self._by_host = {}
        self._memo = {}
        for service in config.services:
            journeys = [
                (j.name, frozenset(j.methods), j.path_pattern(), tuple(j.slis or service.slis))
                for j in service.journeys
            ]
            self._services[service.name] = journeys
            for host in service.hosts:
                self._by_host[host.lower()] = service.name

    def service_for(self, service, host):
        if service in self._services:
            return service
        return self._by_host.get((host or "").lower(), service)

    def match(self, service, method, path):
        """Returns (journey name, SLIs); (UNMATCHED_JOURNEY, ()) when nothing matches."""
        for name, methods, pattern, slis in self._services.get(service, ()):
            if (not methods or method in methods) and pattern.fullmatch(path):
                return name, slis
        return UNMATCHED_JOURNEY, ()

    def classify(self, service, host, method, path):
        """(service, journey name, SLIs) of a request: `service_for`, then `match`, memoized (logs repeat
        their requests; the memo is bounded, and long values are not kept)."""
        key = (service, host, method, path)
        found = self._memo.get(key)
        if found is None:
            service = self.service_for(service, host)
            found = (service, *self.match(service, method, path))
            if len(path) + len(host or "") + len(method) <= _MEMO_KEY_CHARS:
                remember(self._memo, key, found, _MEMO_SIZE)
        return found


_MEMO_SIZE = 1 << 16
_MEMO_KEY_CHARS = 1024
