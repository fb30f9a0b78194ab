"""OpenSLO v1 import and export: every sample SLI config survives config -> OpenSLO -> config; the
spec-shaped sample documents import to the config worked out by hand from the mapping in docs/openslo.md,
and the imported SLOs, evaluated on a few SLI rows, give hand-worked compliance, budget and alerts; what
cannot be mapped is a ConfigError naming the document and field; arbitrary documents give a config or
that error, nothing else."""

import copy
import datetime

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import openslo as cli
from pipelines.samples import ROOT, SLI_DIR
from transforms.core.config import ConfigError
from transforms.sli.config import Alerting, BurnRateRule, Exclusion, SliConfig, Slo, load_sli_config
from transforms.slo.openslo import dump_openslo, export_documents, import_documents, parse_openslo
from transforms.slo.status import ALERTS_TAG, EvaluateSlosBatch, SliRowsToSloInputs

PROFILE = SLI_DIR / "profile_service.yaml"
SAMPLE = ROOT / "openslo" / "profile_service.yaml"
BASE = load_sli_config(PROFILE)


def stripped(config):
    """`config` without what OpenSLO carries (its SLOs, and its burn-rate rules when it has SLOs)."""
    alerting = config.alerting.model_copy(update={"rules": []}) if config.slos else config.alerting
    return config.model_copy(update={"slos": [], "alerting": alerting})


def varied_config():
    """The profile sample with what its SLOs leave out: a calendar month, a 7-day window, damping."""
    slos = [
        Slo(name="month", sli="profile-web/login/latency_100ms", target=0.95, window="calendar_month"),
        Slo(
            name="week",
            sli="profile-web/view-avatar/latency_200ms",
            target=0.9,
            window_days=7,
            method="timeslices",
            timeslice_threshold=0.5,
        ),
        Slo(
            name="mix",
            components=[
                {"sli": "profile-web/login/availability", "weight": 0.25},
                {"sli": "profile-web/view-profile/error_rate", "weight": 2},
            ],
            target=0.98,
        ),
    ]
    rules = [
        BurnRateRule(
            severity="page",
            long_window_minutes=90,
            short_window_minutes=7,
            budget_share=0.03,
            for_minutes=2,
            keep_firing_for_minutes=15,
        ),
        BurnRateRule(severity="ticket", long_window_minutes=1440, short_window_minutes=120, budget_share=0.1),
    ]
    return BASE.model_copy(update={"slos": slos, "alerting": Alerting(min_events=10, rules=rules)})


CONFIGS = {path.name: load_sli_config(path) for path in sorted(SLI_DIR.glob("*.yaml"))} | {"varied": varied_config()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_to_openslo_and_back_is_the_same_config(name):
    config = CONFIGS[name]
    text = dump_openslo(config)
    assert all(doc["apiVersion"] == "openslo/v1" for doc in yaml.safe_load_all(text))
    assert parse_openslo(text, stripped(config)) == config


def test_export_writes_the_workbook_thresholds_for_the_slo_window():
    docs = export_documents(BASE)
    assert [d["kind"] for d in docs] == ["Service"] + ["AlertPolicy"] * 3 + ["SLO"] * 4
    slo = next(d for d in docs if d["metadata"]["name"] == "view-profile-latency")["spec"]
    assert slo["timeWindow"] == [{"duration": "28d", "isRolling": True}]
    assert slo["objectives"] == [{"target": 0.99}]
    source = {
        "type": "BeamSliRows",
        "spec": {"service": "profile-web", "journey": "view-profile", "sli": "latency_500ms"},
    }
    assert slo["indicator"]["spec"]["ratioMetric"]["good"]["metricSource"] == source
    assert slo["indicator"]["spec"]["ratioMetric"]["total"]["metricSource"] == source
    conditions = [d["spec"]["conditions"][0] for d in docs if d["kind"] == "AlertPolicy"]
    # default rules, 28 days: 0.02 x 28 x 1440 / 60, 0.05 x 28 x 1440 / 360, 0.10 x 28 x 1440 / 4320
    assert [c["spec"]["condition"]["threshold"] for c in conditions] == pytest.approx([13.44, 5.6, 0.93333333])
    assert [c["spec"]["condition"]["lookbackWindow"] for c in conditions] == ["1h", "6h", "3d"]
    assert [c["metadata"]["annotations"]["beam-sre-ml-pipelines/short-window"] for c in conditions] == [
        "5m",
        "30m",
        "6h",
    ]
    composite = next(d for d in docs if d["metadata"]["name"] == "profile-pages")["spec"]
    assert [o["compositeWeight"] for o in composite["objectives"]] == [3, 1]
    assert "indicator" not in composite


def test_an_slo_with_its_own_exclusions_cannot_be_exported():
    window = Exclusion(reason="release", start="2026-11-01T00:00:00Z", end="2026-11-01T01:00:00Z")
    slo = BASE.slos[1].model_copy(update={"exclusions": [window]})
    config = BASE.model_copy(update={"slos": [BASE.slos[0], slo]})
    with pytest.raises(ConfigError, match=r"slos\[1\]\.exclusions \(view-profile-latency\)"):
        export_documents(config)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The sample documents imported by the command line, then loaded as the SLI pipeline loads a config."""
    out = tmp_path_factory.mktemp("openslo") / "slis.yaml"
    cli.main(["import", "--sli_config", str(PROFILE), "--openslo", str(SAMPLE), "--output", str(out)])
    return load_sli_config(out)


def test_the_sample_documents_map_as_the_manual_says(imported):
    slos = {s.name: s for s in imported.slos}
    assert set(slos) == {"view-profile-availability", "view-profile-latency", "profile-pages", "login-good-minutes"}
    availability = slos["view-profile-availability"]
    assert (availability.sli, availability.target, availability.window, availability.window_days) == (
        "profile-web/view-profile/availability",
        0.999,
        "rolling",
        28,
    )  # 99.9%, 4w
    assert slos["view-profile-latency"].sli == "profile-web/view-profile/latency_500ms"  # lte 500
    assert slos["profile-pages"].slis() == [
        ("profile-web/view-profile/availability", 3),
        ("profile-web/view-avatar/availability", 1),
    ]
    login = slos["login-good-minutes"]
    assert (login.window, login.method, login.timeslice_threshold, login.target) == (
        "calendar_month",
        "timeslices",
        0.95,
        0.99,
    )
    # 13.44 x 60 / (28 x 1440) = 14.4 x 60 / (30 x 1440) = 0.02; 5.6 x 360 / (28 x 1440) = 6 x 360 / (30 x 1440) = 0.05
    assert [
        (r.severity, r.long_window_minutes, r.short_window_minutes, r.budget_share) for r in imported.alerting.rules
    ] == [
        ("page", 60, 5, 0.02),
        ("ticket", 360, 30, 0.05),  # short window not annotated: 6 h / 12
    ]
    assert imported.services == BASE.services


def _rows(sli_id, start, minutes, per_minute, bad=lambda m: 0):
    t0 = start.timestamp()
    return [
        {
            "sli_id": sli_id,
            "window_start": datetime.datetime.fromtimestamp(t0 + 60 * m, datetime.UTC).isoformat(),
            "good": per_minute - bad(m),
            "total": per_minute,
            "pane_index": 0,
        }
        for m in range(minutes)
    ]


def evaluate(config, name, rows):
    """(status rows, alert transitions) of SLO `name`, through the pipeline's DoFns called directly."""
    to_inputs = SliRowsToSloInputs(config)
    to_inputs.setup()
    values = [v for row in rows for key, v in to_inputs.process(row) if key == name]
    evaluator = EvaluateSlosBatch(config, "test")
    evaluator.setup()
    out = list(evaluator.process((name, values)))
    return [o for o in out if not hasattr(o, "tag")], [o.value for o in out if getattr(o, "tag", None) == ALERTS_TAG]


DAY = datetime.datetime(2026, 11, 2, tzinfo=datetime.UTC)


def test_imported_availability_pages_on_the_fifth_minute_of_a_burst(imported):
    # a quiet day at 1000 requests a minute, then 5 minutes with 200 failures each
    burst = 1440
    rows = _rows("profile-web/view-profile/availability", DAY, 1445, 1000, bad=lambda m: 200 if m >= burst else 0)
    status, alerts = evaluate(imported, "view-profile-availability", rows)
    # after k burst minutes the 1 h burn rate is 200k / 60000 / 0.001 = 3.33k: above 13.44 from k = 5;
    # the 5 m window is far above it; 6 h: 1000 / 360000 / 0.001 = 2.78, under 5.6: no ticket
    assert [(a["state"], a["severity"], a["at"]) for a in alerts if a["state"] == "FIRING"] == [
        ("FIRING", "page", (DAY + datetime.timedelta(minutes=1445)).isoformat())
    ]
    last = next(r for r in status if r["evaluated_at"] == (DAY + datetime.timedelta(minutes=1445)).isoformat())
    assert last["events"] == 1_445_000 and last["bad_events"] == 1000
    assert last["compliance"] == pytest.approx(1 - 1000 / 1_445_000)
    assert last["budget_consumed"] == pytest.approx(1000 / 1_445_000 / 0.001)  # 0.692


def test_imported_composite_is_the_weighted_mean(imported):
    rows = _rows("profile-web/view-profile/availability", DAY, 1, 1000, bad=lambda m: 1) + _rows(
        "profile-web/view-avatar/availability", DAY, 1, 100, bad=lambda m: 10
    )
    status, alerts = evaluate(imported, "profile-pages", rows)
    assert status[0]["compliance"] == pytest.approx((3 * 0.999 + 1 * 0.9) / 4)  # 0.97425
    assert alerts == []


def test_imported_calendar_timeslices_count_good_minutes_of_the_month(imported):
    # 100 minutes of 20 logins; minutes 40 and 41 have 18 good (90% < 95%): 98 good minutes of 100
    rows = _rows("profile-web/login/availability", DAY, 100, 20, bad=lambda m: 2 if m in (40, 41) else 0)
    status, alerts = evaluate(imported, "login-good-minutes", rows)
    last = next(r for r in status if r["evaluated_at"] == (DAY + datetime.timedelta(minutes=100)).isoformat())
    assert last["window"] == "calendar_month" and last["window_days"] == 30  # November
    assert last["compliance"] == pytest.approx(0.98)
    assert last["budget_consumed"] == pytest.approx(0.02 / 0.01)
    # 1 h: 2 bad minutes of 60, burn 3.3 < 14.4 (0.02 x 30 x 24); 6 h: 2 of 100, burn 2 < 6: no alert
    assert alerts == []


def _sample_docs():
    return list(yaml.safe_load_all(SAMPLE.read_text()))


def _find(docs, name):
    return next(d for d in docs if d["metadata"]["name"] == name)


def _set(docs, name, path, value):
    obj = _find(docs, name)
    *parents, last = path
    for key in parents:
        obj = obj[key]
    if value is KeyError:
        del obj[last]
    else:
        obj[last] = value


# (document name, path to change, new value (KeyError: remove it), document index and field in the error)
UNMAPPABLE = [
    ("profile-web", ("kind",), "DataSource", "document 1 (DataSource 'profile-web'): kind"),
    ("profile-web", ("apiVersion",), "openslo/v1alpha", "document 1 (Service 'profile-web'): apiVersion"),
    ("profile-web", ("metadata", "name"), "checkout", "document 1 (Service 'checkout'): metadata.name: no service"),
    (
        "view-profile-availability",
        ("spec", "timeWindow", 0, "duration"),
        "36h",
        "document 3 (SLO 'view-profile-availability'): spec.timeWindow[0].duration",
    ),
    (
        "login-good-minutes",
        ("spec", "timeWindow", 0, "duration"),
        "1Q",
        "document 6 (SLO 'login-good-minutes'): spec.timeWindow[0].duration: calendar windows",
    ),
    (
        "login-good-minutes",
        ("spec", "timeWindow", 0, "calendar", "timeZone"),
        "America/New_York",
        "spec.timeWindow[0].calendar.timeZone",
    ),
    (
        "login-good-minutes",
        ("spec", "timeWindow", 0, "calendar", "startTime"),
        "2026-01-15 00:00:00",
        "spec.timeWindow[0].calendar.startTime",
    ),
    ("login-good-minutes", ("spec", "objectives", 0, "timeSliceWindow"), "5m", "spec.objectives[0].timeSliceWindow"),
    (
        "view-profile-availability",
        ("spec", "budgetingMethod"),
        "RatioTimeslices",
        "document 3 (SLO 'view-profile-availability'): spec.budgetingMethod",
    ),
    (
        "view-profile-availability",
        ("spec", "objectives"),
        KeyError,
        "document 3 (SLO 'view-profile-availability'): spec.objectives: missing",
    ),
    ("view-profile-availability", ("spec", "timeWindow"), KeyError, "spec.timeWindow: missing"),
    (
        "view-profile-successful-requests",
        ("spec", "ratioMetric", "good", "metricSource", "type"),
        "Prometheus",
        "document 2 (SLI 'view-profile-successful-requests'): spec.ratioMetric.good.metricSource.type",
    ),
    (
        "view-profile-successful-requests",
        ("spec", "ratioMetric", "total", "metricSource", "spec", "sli"),
        "latency_100ms",
        "spec.ratioMetric: 'good' and 'total' must name the same SLI",
    ),
    (
        "view-profile-latency",
        ("spec", "objectives", 0, "value"),
        250,
        "document 4 (SLO 'view-profile-latency'): spec.objectives[0].value: no latency SLI of 250 ms",
    ),
    ("view-profile-latency", ("spec", "objectives", 0, "op"), "gte", "spec.objectives[0].op"),
    (
        "view-profile-latency",
        ("spec", "objectives", 0, "target"),
        1.5,
        "document 4 (SLO 'view-profile-latency'): spec.objectives[0].target: Input should be less than 1",
    ),
    (
        "view-profile-latency",
        ("spec", "alertPolicies"),
        ["fast-burn-month", "slow-burn-month"],
        "alert policies differ",
    ),
    (
        "view-profile-latency",
        ("spec", "alertPolicies"),
        KeyError,
        "document 4 (SLO 'view-profile-latency'): spec.alertPolicies: missing while other SLOs",
    ),
    (
        "profile-pages",
        ("spec", "objectives", 1, "target"),
        0.99,
        "document 5 (SLO 'profile-pages'): spec.objectives[1]: a composite has one target",
    ),
    ("fast-burn-28d", ("spec", "severity"), "warning", "document 7 (AlertCondition 'fast-burn-28d'): spec.severity"),
    (
        "fast-burn-28d",
        ("spec", "condition", "threshold"),
        1000,
        "spec.condition.threshold: burning at 1000x for 1h spends more than all the budget",
    ),
    ("fast-burn-28d", ("spec", "condition", "op"), "lte", "spec.condition.op"),
    ("fast-burn-28d", ("spec", "condition", "lookbackWindow"), "1M", "spec.condition.lookbackWindow"),
    (
        "fast-burn",
        ("spec", "conditions", 0, "conditionRef"),
        "nope",
        "document 8 (AlertPolicy 'fast-burn'): spec.conditions[0].conditionRef: no AlertCondition named 'nope'",
    ),
    ("slow-burn", ("spec", "alertWhenNoData"), True, "document 9 (AlertPolicy 'slow-burn'): spec.alertWhenNoData"),
    (
        "view-profile-availability",
        ("spec", "indicatorRef"),
        "missing-sli",
        "spec.indicatorRef: no SLI document named 'missing-sli'",
    ),
    (
        "view-profile-availability",
        ("spec", "sli"),
        "x",
        "document 3 (SLO 'view-profile-availability'): spec: unknown field(s) sli",
    ),
    (
        "view-profile-availability",
        ("spec", "objectives"),
        [{"target": 0.99}, {"target": 0.9}],
        "document 3 (SLO 'view-profile-availability'): spec.objectives: one objective per SLO",
    ),
    (
        "view-profile-availability",
        ("spec", "timeWindow", 0, "duration"),
        "100d",
        "spec.timeWindow[0].duration: Input should be less than or equal to 90",
    ),
    (
        "view-profile-availability",
        ("spec", "service"),
        KeyError,
        "document 3 (SLO 'view-profile-availability'): spec.service: missing",
    ),
    (
        "view-profile-latency",
        ("spec", "indicator", "spec", "thresholdMetric", "metricSource", "spec", "journey"),
        "checkout",
        "document 4 (SLO 'view-profile-latency'): spec.objectives[0]: no journey 'checkout'",
    ),
]


@pytest.mark.parametrize(("name", "path", "value", "message"), UNMAPPABLE, ids=[m for *_, m in UNMAPPABLE])
def test_what_cannot_be_mapped_names_the_document_and_field(name, path, value, message):
    docs = _sample_docs()
    _set(docs, name, path, value)
    with pytest.raises(ConfigError) as e:
        import_documents(docs, BASE, "--openslo x.yaml")
    assert str(e.value).startswith("--openslo x.yaml: ")
    assert message in str(e.value)


def test_an_unknown_sli_and_a_list_document_are_located():
    docs = _sample_docs()
    _set(
        docs,
        "view-profile-successful-requests",
        ("spec", "ratioMetric", "good", "metricSource", "spec", "journey"),
        "checkout",
    )
    _set(
        docs,
        "view-profile-successful-requests",
        ("spec", "ratioMetric", "total", "metricSource", "spec", "journey"),
        "checkout",
    )
    with pytest.raises(
        ConfigError,
        match=r"document 2\[0\] \(SLI 'view-profile-successful-requests'\): .*no SLI 'profile-web/checkout/availability'",
    ):
        import_documents([docs[:1], docs[1:]], BASE)  # the OpenSLO repository's list form


def test_the_command_line_lists_its_flags_and_names_the_one_at_fault(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = capsys.readouterr().out
    assert all(flag in help_text for flag in ("import", "export", "--sli_config", "--openslo", "--output"))
    with pytest.raises(SystemExit):
        cli.main(["import"])
    assert "--openslo: import needs" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"error: --openslo: cannot read .*nothing\.yaml"):
        cli.main(["import", "--openslo", str(tmp_path / "nothing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: openslo/v1\nkind: SLO\nmetadata: {name: x}\nspec: [1]\n")
    with pytest.raises(SystemExit, match=rf"error: --openslo {bad}: document 1 \(SLO 'x'\): spec: expected a mapping"):
        cli.main(["import", "--openslo", str(bad)])
    with pytest.raises(ConfigError, match="x.yaml: not valid YAML"):
        parse_openslo("spec: [", BASE, "x.yaml")
    out = tmp_path / "exported.yaml"
    cli.main(["export", "--output", str(out)])
    assert parse_openslo(out.read_text(), stripped(CONFIGS["profile_service.yaml"])) == CONFIGS["profile_service.yaml"]


_WORDS = ["apiVersion", "kind", "metadata", "name", "spec", "openslo/v1", "SLO", "SLI", "Service", "AlertPolicy"]
_WORDS += ["AlertCondition", "indicator", "indicatorRef", "ratioMetric", "thresholdMetric", "good", "total"]
_WORDS += ["metricSource", "type", "BeamSliRows", "timeWindow", "duration", "isRolling", "calendar", "objectives"]
_WORDS += ["target", "targetPercent", "budgetingMethod", "Occurrences", "Timeslices", "alertPolicies", "conditions"]
_WORDS += ["condition", "threshold", "lookbackWindow", "severity", "page", "28d", "1M", "0m", "op", "gt", "lte"]
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(_WORDS)
_ANY = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_WORDS) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def _documents(draw):
    """The sample documents with one value anywhere replaced by anything, or documents of any shape."""
    if draw(st.booleans()):
        return draw(st.lists(_ANY, max_size=4))
    docs = copy.deepcopy(_sample_docs())
    obj = docs[draw(st.integers(0, len(docs) - 1))]
    while isinstance(obj, dict | list) and obj and draw(st.integers(0, 3)):
        keys = list(obj) if isinstance(obj, dict) else list(range(len(obj)))
        key = draw(st.sampled_from(keys))
        if not isinstance(obj[key], dict | list) or not obj[key]:
            obj[key] = draw(_ANY)
            break
        obj = obj[key]
    else:
        if isinstance(obj, dict):
            obj[draw(st.sampled_from(_WORDS))] = draw(_ANY)
    return docs


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_any_documents_give_a_config_or_a_config_error(documents):
    try:
        config = import_documents(documents, BASE)
    except ConfigError:
        return
    assert isinstance(config, SliConfig) and config.services == BASE.services
