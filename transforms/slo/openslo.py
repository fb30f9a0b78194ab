"""OpenSLO v1 documents to and from the SLO part of an SLI config (`slos` and `alerting.rules`).

The journeys and their SLIs (what a request is and when it is good) have no OpenSLO form: they stay in the
SLI config, which an import takes as its base. An OpenSLO indicator names one of those SLIs through a
metric source of type `BeamSliRows` whose spec is {service, journey, sli}: the good and total counts of the
SLI pipeline's rows with sli_id `<service>/<journey>/<sli>`. docs/openslo.md gives the whole mapping.

Whatever has no equivalent here is a ConfigError naming the file, the document (its index, kind and
metadata.name), the field path and what to do.
"""

import math
import re

import yaml
from pydantic import ValidationError

from transforms.core.config import ConfigError
from transforms.sli.config import Alerting, BurnRateRule, SliConfig, Slo, exact, sli_short_name

API_VERSION = "openslo/v1"
METRIC_SOURCE = "BeamSliRows"
SHORT_WINDOW = "beam-sre-ml-pipelines/short-window"  # AlertCondition annotations
KEEP_FIRING_FOR = "beam-sre-ml-pipelines/keep-firing-for"
CALENDAR_PERIOD_DAYS = 30  # the period a calendar-month SLO's burn-rate thresholds are written for
CALENDAR_START = "2024-01-01 00:00:00"
KINDS = ("SLO", "SLI", "Service", "AlertPolicy", "AlertCondition")
_DURATION = re.compile(r"^([1-9][0-9]{0,8})([mhdwMQY])$")
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 7 * 1440}
_MONTH_START = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])-01[ T]00:00(:00)?$")
_UTC = ("UTC", "Etc/UTC")
_METADATA_KEYS = {"name", "displayName", "labels", "annotations"}


class _Document:
    """One OpenSLO object being read: raises ConfigError lines that say where it is."""

    def __init__(self, source, where, obj):
        self.source, self.obj = source, obj
        metadata = obj.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        self.label = f"{where} ({obj.get('kind')} {name!r})" if isinstance(name, str) else where

    def fail(self, path, problem):
        raise ConfigError(f"{self.source}: {self.label}: {path}: {problem}")

    def mapping(self, value, path, allowed, required=()):
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping with {', '.join(sorted(allowed))}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            self.fail(path, f"unknown field(s) {', '.join(unknown)}; OpenSLO v1 allows {', '.join(sorted(allowed))}")
        for key in required:
            if key not in value:
                self.fail(f"{path}.{key}", "missing; this field is required")
        return value

    def text(self, value, path):
        if not isinstance(value, str) or not value:
            self.fail(path, "expected a non-empty string")
        return value

    def number(self, value, path):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {value!r}")
        return value

    def minutes(self, value, path, units="mhdw"):
        """A duration shorthand (or a number of minutes) as whole minutes."""
        if "m" in units and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if value == "0m":
            return 0
        match = _DURATION.match(value) if isinstance(value, str) else None
        if not match or match.group(2) not in units:
            self.fail(path, f"{value!r} is not a duration here: write a whole number and one of the units {units}")
        return int(match.group(1)) * _UNIT_MINUTES[match.group(2)]


def _shorthand(minutes):
    for unit in "dhm":
        if minutes % _UNIT_MINUTES[unit] == 0 and (minutes or unit == "m"):
            return f"{minutes // _UNIT_MINUTES[unit]}{unit}"


def _period(slo):
    """The days an SLO's burn-rate thresholds are written for."""
    return CALENDAR_PERIOD_DAYS if slo.window == "calendar_month" else slo.window_days


def _policy_name(index, period):
    return f"burn-rate-{index + 1}-{period}d"


def _journey_slis(base):
    """{(service, journey): [SLI]} of the base config."""
    return {(s.name, j.name): list(j.slis or s.slis) for s in base.services for j in s.journeys}


# -- import ---------------------------------------------------------------------------------------------------


def _objects(documents, source):
    """A `_Document` per OpenSLO object: a YAML document holding a list (as the OpenSLO repository's examples
    do) gives one per item; empty documents are skipped."""
    for i, doc in enumerate(documents, 1):
        items = (
            [(f"document {i}[{j}]", d) for j, d in enumerate(doc)]
            if isinstance(doc, list)
            else [(f"document {i}", doc)]
        )
        for where, obj in items:
            if obj is None:
                continue
            if not isinstance(obj, dict):
                raise ConfigError(f"{source}: {where}: expected an OpenSLO object (apiVersion, kind, metadata, spec)")
            yield _Document(source, where, obj)


def _read_object(doc):
    obj = doc.mapping(
        doc.obj, "(top level)", {"apiVersion", "kind", "metadata", "spec"}, ("apiVersion", "kind", "metadata", "spec")
    )
    if obj["apiVersion"] != API_VERSION:
        doc.fail("apiVersion", f"{obj['apiVersion']!r} is not supported; convert the document to {API_VERSION}")
    if obj["kind"] not in KINDS:
        doc.fail("kind", f"{obj['kind']!r} cannot be imported; the kinds this project maps are {', '.join(KINDS)}")
    _check_metadata(doc, obj.get("metadata"), "metadata")
    doc.mapping(obj.get("spec"), "spec", _SPEC_KEYS[obj["kind"]])
    return obj["kind"], obj["metadata"]["name"], obj["spec"]


def _check_metadata(doc, metadata, path):
    doc.mapping(metadata, path, _METADATA_KEYS, ("name",))
    doc.text(metadata["name"], f"{path}.name")


_SPEC_KEYS = {
    "SLO": {"description", "service", "indicator", "indicatorRef", "timeWindow", "budgetingMethod", "objectives"}
    | {"alertPolicies"},
    "SLI": {"description", "thresholdMetric", "ratioMetric"},
    "Service": {"description"},
    "AlertPolicy": {"description", "alertWhenNoData", "alertWhenResolved", "alertWhenBreaching", "conditions"}
    | {"notificationTargets"},
    "AlertCondition": {"description", "severity", "condition"},
}


class _Importer:
    def __init__(self, base, source):
        self.base, self.source = base, source
        self.sli_ids = base.sli_ids()
        self.journeys = _journey_slis(base)
        self.named = {kind: {} for kind in KINDS}  # kind -> name -> (document, spec)

    def collect(self, documents):
        slos = []
        for doc in _objects(documents, self.source):
            kind, name, spec = _read_object(doc)
            if name in self.named[kind]:
                doc.fail("metadata.name", f"a second {kind} named {name!r}; names must be unique per kind")
            self.named[kind][name] = (doc, spec)
            if kind == "SLO":
                slos.append((doc, name, spec))
            if kind == "Service" and name not in {s.name for s in self.base.services}:
                doc.fail("metadata.name", f"no service {name!r} in the SLI config; add it there (with its journeys)")
        return slos

    # indicators -> sli ids
    def indicator(self, doc, spec, path, objective):
        """The sli_id of an SLO's (or a composite objective's) `indicator` or `indicatorRef`."""
        inline, ref = spec.get("indicator"), spec.get("indicatorRef")
        if (inline is None) == (ref is None):
            doc.fail(path, "give exactly one of 'indicator' (inline SLI) or 'indicatorRef' (the name of an SLI)")
        if ref is not None:
            if doc.text(ref, f"{path}.indicatorRef") not in self.named["SLI"]:
                doc.fail(f"{path}.indicatorRef", f"no SLI document named {ref!r} in the file; add it")
            sli_doc, sli_spec = self.named["SLI"][ref]
            return self.sli_spec(sli_doc, sli_spec, "spec", doc, objective)
        doc.mapping(inline, f"{path}.indicator", {"metadata", "spec"}, ("spec",))
        if "metadata" in inline:
            _check_metadata(doc, inline["metadata"], f"{path}.indicator.metadata")
        sli_spec = doc.mapping(inline["spec"], f"{path}.indicator.spec", _SPEC_KEYS["SLI"])
        return self.sli_spec(doc, sli_spec, f"{path}.indicator.spec", doc, objective)

    def sli_spec(self, doc, spec, path, slo_doc, objective):
        if ("ratioMetric" in spec) == ("thresholdMetric" in spec):
            doc.fail(path, "give exactly one of 'ratioMetric' or 'thresholdMetric'")
        if "ratioMetric" in spec:
            ratio = doc.mapping(
                spec["ratioMetric"], f"{path}.ratioMetric", {"counter", "good", "total", "bad", "raw", "rawType"}
            )
            for other in ("bad", "raw", "rawType"):
                if other in ratio:
                    doc.fail(f"{path}.ratioMetric.{other}", "not supported: give 'good' and 'total' naming one SLI")
            good = self.source_spec(doc, ratio.get("good"), f"{path}.ratioMetric.good", {"service", "journey", "sli"})
            total = self.source_spec(
                doc, ratio.get("total"), f"{path}.ratioMetric.total", {"service", "journey", "sli"}
            )
            if good != total:
                doc.fail(
                    f"{path}.ratioMetric", "'good' and 'total' must name the same SLI (both counts come from its rows)"
                )
            sli_id = "/".join(good[k] for k in ("service", "journey", "sli"))
            if sli_id not in self.sli_ids:
                doc.fail(
                    f"{path}.ratioMetric.good.metricSource.spec",
                    f"no SLI {sli_id!r} in the SLI config; known: {', '.join(sorted(self.sli_ids))}",
                )
            if {"op", "value"} & set(objective[1]):
                slo_doc.fail(f"{objective[0]}.op", "'op' and 'value' go with a thresholdMetric only; remove them")
            return sli_id
        where = self.source_spec(doc, spec["thresholdMetric"], f"{path}.thresholdMetric", {"service", "journey"})
        return self.latency_sli(slo_doc, where, objective)

    def source_spec(self, doc, query, path, keys):
        doc.mapping(query, path, {"metricSource"}, ("metricSource",))
        source = doc.mapping(
            query["metricSource"], f"{path}.metricSource", {"metricSourceRef", "type", "spec"}, ("type", "spec")
        )
        if source["type"] != METRIC_SOURCE:
            doc.fail(
                f"{path}.metricSource.type",
                f"{source['type']!r} is not this project's SLI rows; write type: {METRIC_SOURCE} "
                f"with spec {{{', '.join(sorted(keys))}}}",
            )
        spec = doc.mapping(source["spec"], f"{path}.metricSource.spec", keys, sorted(keys))
        return {k: doc.text(spec[k], f"{path}.metricSource.spec.{k}") for k in sorted(keys)}

    def latency_sli(self, doc, where, objective):
        """A thresholdMetric over a journey's latency: the journey's latency SLI whose threshold_ms is the
        objective's `value` (op lte: a request is good when its latency is at most value ms)."""
        path, obj = objective
        if obj.get("op") != "lte":
            doc.fail(f"{path}.op", "a latency threshold is met at or below its value: write op: lte")
        value = doc.number(obj.get("value"), f"{path}.value")
        key = (where["service"], where["journey"])
        if key not in self.journeys:
            doc.fail(f"{path}", f"no journey {key[1]!r} in service {key[0]!r} of the SLI config; add it there")
        matches = [s for s in self.journeys[key] if s.kind == "latency" and exact(s.threshold_ms) == exact(value)]
        if len(matches) != 1:
            have = sorted(s.threshold_ms for s in self.journeys[key] if s.kind == "latency")
            doc.fail(
                f"{path}.value",
                f"{'no' if not matches else 'more than one'} latency SLI of {value:g} ms in journey {key[1]!r} "
                f"(it has {have}); add one to the SLI config or use a ratioMetric naming the SLI",
            )
        return f"{key[0]}/{key[1]}/{sli_short_name(matches[0])}"

    # SLOs
    def slo(self, doc, name, spec):
        for key in ("service", "budgetingMethod", "objectives", "timeWindow"):
            if key not in spec:
                doc.fail(f"spec.{key}", "missing; this field is required")
        if doc.text(spec["service"], "spec.service") not in {s.name for s in self.base.services}:
            doc.fail("spec.service", f"no service {spec['service']!r} in the SLI config; add it there")
        objectives = spec["objectives"]
        if not isinstance(objectives, list) or not objectives:
            doc.fail("spec.objectives", "expected a list of at least one objective")
        paths = [f"spec.objectives[{i}]" for i in range(len(objectives))]
        for path, obj in zip(paths, objectives, strict=True):
            doc.mapping(
                obj,
                path,
                {"displayName", "op", "value", "target", "targetPercent", "timeSliceTarget"}
                | {"timeSliceWindow", "indicator", "indicatorRef", "compositeWeight"},
            )
        first = self.objective(doc, spec["budgetingMethod"], objectives[0], paths[0])
        fields = {"name": name, **self.window(doc, spec["timeWindow"]), **first}
        composite = any("indicator" in o or "indicatorRef" in o for o in objectives)
        if composite:
            if "indicator" in spec or "indicatorRef" in spec:
                doc.fail("spec.indicator", "a composite gives an indicator per objective; remove the SLO's own")
            for path, obj in zip(paths[1:], objectives[1:], strict=True):
                if self.objective(doc, spec["budgetingMethod"], obj, path) != first:
                    doc.fail(
                        path,
                        "a composite has one target (and time slice) for the weighted mean: "
                        "give every objective the same",
                    )
            fields["components"] = [
                {
                    "sli": self.indicator(doc, obj, path, (path, obj)),
                    "weight": doc.number(obj.get("compositeWeight", 1), f"{path}.compositeWeight"),
                }
                for path, obj in zip(paths, objectives, strict=True)
            ]
        else:
            if len(objectives) > 1:
                doc.fail(
                    "spec.objectives",
                    "one objective per SLO here: split it into one SLO per objective, "
                    "or give each objective an indicator (a composite)",
                )
            fields["sli"] = self.indicator(doc, spec, "spec", (paths[0], objectives[0]))
        try:
            slo = Slo(**fields)
        except ValidationError as e:
            err = e.errors()[0]
            doc.fail(
                _SLO_PATHS.get(str(err["loc"][0]) if err["loc"] else "", "spec"),
                err["msg"].removeprefix("Value error, "),
            )
        return slo, self.rules(doc, spec.get("alertPolicies"), slo)

    def window(self, doc, time_window):
        if not isinstance(time_window, list) or len(time_window) != 1:
            doc.fail("spec.timeWindow", "expected a list of exactly one time window")
        path = "spec.timeWindow[0]"
        tw = doc.mapping(time_window[0], path, {"duration", "isRolling", "calendar"}, ("duration",))
        rolling = tw.get("isRolling", "calendar" not in tw)
        if not isinstance(rolling, bool):
            doc.fail(f"{path}.isRolling", "expected true or false")
        if rolling:
            if "calendar" in tw:
                doc.fail(f"{path}.calendar", "a rolling window has no calendar; remove it or set isRolling: false")
            minutes = doc.minutes(tw["duration"], f"{path}.duration", "dw")
            return {"window": "rolling", "window_days": minutes // 1440}
        if tw["duration"] != "1M":
            doc.fail(
                f"{path}.duration",
                f"calendar windows here are one month (UTC): write 1M, not {tw['duration']!r}, or use a rolling window",
            )
        calendar = doc.mapping(
            tw.get("calendar"), f"{path}.calendar", {"startTime", "timeZone"}, ("startTime", "timeZone")
        )
        if calendar["timeZone"] not in _UTC:
            doc.fail(
                f"{path}.calendar.timeZone",
                f"months are UTC months here: write timeZone: UTC, not {calendar['timeZone']!r}",
            )
        if not _MONTH_START.match(str(calendar["startTime"])):
            doc.fail(f"{path}.calendar.startTime", f"a month starts on the 1st at 00:00: write e.g. '{CALENDAR_START}'")
        return {"window": "calendar_month"}

    def objective(self, doc, method, obj, path):
        """The target and budgeting fields of one objective."""
        if ("target" in obj) == ("targetPercent" in obj):
            doc.fail(path, "give exactly one of 'target' (e.g. 0.999) or 'targetPercent' (e.g. 99.9)")
        if "target" in obj:
            target = doc.number(obj["target"], f"{path}.target")
        else:
            target = float(exact(doc.number(obj["targetPercent"], f"{path}.targetPercent")) / 100)
        if method == "Occurrences":
            for key in ("timeSliceTarget", "timeSliceWindow"):
                if key in obj:
                    doc.fail(f"{path}.{key}", "goes with budgetingMethod: Timeslices; remove it")
            return {"target": target, "method": "occurrences"}
        if method != "Timeslices":
            doc.fail("spec.budgetingMethod", f"{method!r} is not supported: write Occurrences or Timeslices")
        if "timeSliceWindow" not in obj or doc.minutes(obj["timeSliceWindow"], f"{path}.timeSliceWindow") != 1:
            doc.fail(f"{path}.timeSliceWindow", "time slices are one minute here: write timeSliceWindow: 1m")
        if "timeSliceTarget" not in obj:
            doc.fail(f"{path}.timeSliceTarget", "missing; Timeslices needs the good ratio a minute must reach")
        threshold = doc.number(obj["timeSliceTarget"], f"{path}.timeSliceTarget")
        return {"target": target, "method": "timeslices", "timeslice_threshold": threshold}

    # alerting
    def rules(self, doc, policies, slo):
        """[BurnRateRule] of the SLO's alertPolicies, thresholds converted to budget shares of its period;
        None when it lists none."""
        if policies is None:
            return None
        if not isinstance(policies, list):
            doc.fail("spec.alertPolicies", "expected a list of AlertPolicy names or inline AlertPolicy objects")
        rules = []
        period = _period(slo)
        for i, item in enumerate(policies):
            path = f"spec.alertPolicies[{i}]"
            if isinstance(item, dict) and "alertPolicyRef" in item:
                item = doc.mapping(item, path, {"alertPolicyRef"})["alertPolicyRef"]
            if isinstance(item, str):
                if item not in self.named["AlertPolicy"]:
                    doc.fail(path, f"no AlertPolicy named {item!r} in the file; add it")
                policy_doc, spec = self.named["AlertPolicy"][item]
                rules.append(self.policy(policy_doc, spec, "spec", period))
            else:
                doc.mapping(item, path, {"kind", "metadata", "spec"}, ("kind", "metadata", "spec"))
                if item["kind"] != "AlertPolicy":
                    doc.fail(f"{path}.kind", "expected AlertPolicy")
                _check_metadata(doc, item["metadata"], f"{path}.metadata")
                spec = doc.mapping(item["spec"], f"{path}.spec", _SPEC_KEYS["AlertPolicy"])
                rules.append(self.policy(doc, spec, f"{path}.spec", period))
        return rules

    def policy(self, doc, spec, path, period):
        if spec.get("alertWhenBreaching", True) is not True:
            doc.fail(f"{path}.alertWhenBreaching", "alerts here fire on a breach: set it to true or drop the policy")
        if spec.get("alertWhenNoData", False) is not False:
            doc.fail(
                f"{path}.alertWhenNoData",
                "no-data alerts are not supported: set it to false (status rows show NO_DATA)",
            )
        conditions = spec.get("conditions")
        if not isinstance(conditions, list) or len(conditions) != 1:
            doc.fail(f"{path}.conditions", "expected a list of exactly one condition (OpenSLO v1 allows one)")
        item, cpath = conditions[0], f"{path}.conditions[0]"
        if isinstance(item, dict) and "conditionRef" in item:
            ref = doc.text(doc.mapping(item, cpath, {"conditionRef"})["conditionRef"], f"{cpath}.conditionRef")
            if ref not in self.named["AlertCondition"]:
                doc.fail(f"{cpath}.conditionRef", f"no AlertCondition named {ref!r} in the file; add it")
            condition_doc, condition = self.named["AlertCondition"][ref]
            return self.condition(condition_doc, condition, condition_doc.obj["metadata"], "spec", "metadata", period)
        doc.mapping(item, cpath, {"kind", "metadata", "spec"}, ("kind", "metadata", "spec"))
        if item["kind"] != "AlertCondition":
            doc.fail(f"{cpath}.kind", "expected AlertCondition")
        _check_metadata(doc, item["metadata"], f"{cpath}.metadata")
        spec = doc.mapping(item["spec"], f"{cpath}.spec", _SPEC_KEYS["AlertCondition"])
        return self.condition(doc, spec, item["metadata"], f"{cpath}.spec", f"{cpath}.metadata", period)

    def condition(self, doc, spec, metadata, path, mpath, period):
        doc.mapping(spec, path, _SPEC_KEYS["AlertCondition"], ("severity", "condition"))
        if spec["severity"] not in ("page", "ticket"):
            doc.fail(f"{path}.severity", f"{spec['severity']!r} is not a severity here: write page or ticket")
        cpath = f"{path}.condition"
        keys = {"kind", "op", "threshold", "lookbackWindow", "alertAfter"}
        cond = doc.mapping(spec["condition"], cpath, keys, ("op", "threshold", "lookbackWindow"))
        if cond.get("kind", "burnrate") != "burnrate":
            doc.fail(f"{cpath}.kind", "only burnrate conditions are supported")
        if cond["op"] != "gt":
            doc.fail(f"{cpath}.op", "a burn-rate alert here fires strictly above its threshold: write op: gt")
        threshold = exact(doc.number(cond["threshold"], f"{cpath}.threshold"))
        long_window = doc.minutes(cond["lookbackWindow"], f"{cpath}.lookbackWindow")
        annotations = metadata.get("annotations") or {}
        if not isinstance(annotations, dict):
            doc.fail(f"{mpath}.annotations", "expected a mapping of strings")
        short_path, keep_path = f"{mpath}.annotations.{SHORT_WINDOW}", f"{mpath}.annotations.{KEEP_FIRING_FOR}"
        share = threshold * long_window / (period * 1440)
        if not 0 < share <= 1:
            doc.fail(
                f"{cpath}.threshold",
                f"burning at {float(threshold):g}x for {cond['lookbackWindow']} spends "
                f"{'no' if share <= 0 else 'more than all the'} budget of a {period}-day period; "
                f"give a threshold above 0 and at most {period * 1440 / max(long_window, 1):g}",
            )
        fields = {
            "severity": spec["severity"],
            "long_window_minutes": long_window,
            "short_window_minutes": doc.minutes(annotations.get(SHORT_WINDOW, long_window // 12), short_path),
            "budget_share": float(f"{float(share):.12g}"),
            "for_minutes": doc.minutes(cond.get("alertAfter", 0), f"{cpath}.alertAfter"),
            "keep_firing_for_minutes": doc.minutes(annotations.get(KEEP_FIRING_FOR, 0), keep_path),
        }
        try:
            return BurnRateRule(**fields)
        except ValidationError as e:
            err = e.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            where = {"long_window_minutes": f"{cpath}.lookbackWindow", "short_window_minutes": short_path}
            doc.fail(where.get(field, cpath), f"{field}: {err['msg'].removeprefix('Value error, ')}")


_SLO_PATHS = {
    "name": "metadata.name",
    "target": "spec.objectives[0].target",
    "window_days": "spec.timeWindow[0].duration",
    "timeslice_threshold": "spec.objectives[0].timeSliceTarget",
    "components": "spec.objectives",
}


def import_documents(documents, base, source="<openslo>"):
    """Parsed OpenSLO objects -> `base` (an SliConfig supplying formats, services and alerting.min_events)
    with its `slos` and `alerting.rules` taken from the SLO documents. SLOs listing no alertPolicies keep
    the base's rules; the ones that do must all give the same rules (this project has one policy)."""
    importer = _Importer(base, source)
    slos, rule_sets = [], []
    for doc, name, spec in importer.collect(documents):
        slo, rules = importer.slo(doc, name, spec)
        slos.append(slo)
        rule_sets.append((doc, rules))
    given = [(doc, rules) for doc, rules in rule_sets if rules is not None]
    rules = given[0][1] if given else list(base.alerting.rules)
    for doc, other in given:
        if other != rules:
            doc.fail(
                "spec.alertPolicies",
                f"alert policies differ from those of {given[0][0].label}; "
                "one set of burn-rate rules applies to every SLO here",
            )
    if given and len(given) != len(rule_sets):
        doc = next(d for d, r in rule_sets if r is None)
        doc.fail(
            "spec.alertPolicies",
            "missing while other SLOs list alert policies; one set applies to every SLO: list the same ones",
        )
    if slos and not rules:
        raise ConfigError(f"{source}: the alert policies give no burn-rate rule; list at least one AlertPolicy")
    try:
        return SliConfig(
            formats=base.formats,
            services=base.services,
            slos=slos,
            alerting=Alerting(min_events=base.alerting.min_events, rules=rules),
        )
    except ValidationError as e:
        raise ConfigError(f"{source}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def parse_openslo(text, base, source="<openslo>"):
    """Multi-document OpenSLO YAML text -> SliConfig (see `import_documents`)."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    return import_documents(documents, base, source)


# -- export ---------------------------------------------------------------------------------------------------


def _object(kind, name, spec):
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def _indicator(sli_id):
    service, journey, sli = sli_id.split("/")

    def query():
        return {"metricSource": {"type": METRIC_SOURCE, "spec": {"service": service, "journey": journey, "sli": sli}}}

    name = sli_id.replace("/", "-").replace("_", "-").lower()
    return {"metadata": {"name": name}, "spec": {"ratioMetric": {"counter": False, "good": query(), "total": query()}}}


def _objective(slo):
    objective = {"target": slo.target}
    if slo.method == "timeslices":
        objective.update(timeSliceTarget=slo.timeslice_threshold, timeSliceWindow="1m")
    return objective


def _policy(index, rule, period):
    condition = {
        "kind": "burnrate",
        "op": "gt",
        "threshold": float(rule.threshold(period)),
        "lookbackWindow": _shorthand(rule.long_window_minutes),
        "alertAfter": _shorthand(rule.for_minutes),
    }
    annotations = {SHORT_WINDOW: _shorthand(rule.short_window_minutes)}
    if rule.keep_firing_for_minutes:
        annotations[KEEP_FIRING_FOR] = _shorthand(rule.keep_firing_for_minutes)
    name = _policy_name(index, period)
    condition_object = {
        "kind": "AlertCondition",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"severity": rule.severity, "condition": condition},
    }
    spec = {"alertWhenBreaching": True, "alertWhenResolved": True, "alertWhenNoData": False}
    return _object("AlertPolicy", name, {**spec, "conditions": [condition_object], "notificationTargets": []})


def export_documents(config, source="<config>"):
    """SliConfig -> [OpenSLO object]: a Service per service, an AlertPolicy per burn-rate rule and SLO
    period, and an SLO per SLO. ConfigError for an SLO with its own exclusions or `minutes_without_data: bad`
    (OpenSLO v1 has neither)."""
    periods = sorted({_period(s) for s in config.slos})
    documents = [
        _object("Service", s.name, {"description": f"journeys: {', '.join(j.name for j in s.journeys)}"})
        for s in config.services
    ]
    documents += [_policy(i, rule, p) for p in periods for i, rule in enumerate(config.alerting.rules)]
    for i, slo in enumerate(config.slos):
        if slo.exclusions:
            raise ConfigError(
                f"{source}: slos[{i}].exclusions ({slo.name}): OpenSLO v1 has no exclusion windows; "
                "move them to the service or keep this SLO in the SLI config"
            )
        if slo.minutes_without_data == "bad":
            raise ConfigError(
                f"{source}: slos[{i}].minutes_without_data ({slo.name}): OpenSLO v1 cannot count a minute "
                "without data as bad; keep this SLO in the SLI config"
            )
        if slo.window == "calendar_month":
            window = {
                "duration": "1M",
                "isRolling": False,
                "calendar": {"startTime": CALENDAR_START, "timeZone": "UTC"},
            }
        else:
            window = {"duration": f"{slo.window_days}d", "isRolling": True}
        spec = {"service": slo.slis()[0][0].split("/")[0]}
        if slo.sli:
            spec["indicator"] = _indicator(slo.sli)
            objectives = [_objective(slo)]
        else:
            objectives = [
                {**_objective(slo), "indicator": _indicator(c.sli), "compositeWeight": c.weight} for c in slo.components
            ]
        spec.update(
            timeWindow=[window],
            budgetingMethod=slo.method.capitalize(),
            objectives=objectives,
            alertPolicies=[_policy_name(j, _period(slo)) for j in range(len(config.alerting.rules))],
        )
        documents.append(_object("SLO", slo.name, spec))
    return documents


def dump_openslo(config, source="<config>"):
    """SliConfig -> multi-document OpenSLO YAML."""
    return yaml.safe_dump_all(export_documents(config, source), sort_keys=False)
