"""SLOs inside the SLI pipeline: the sample's incident pages and resolves; streaming state and timers give
the same status rows and alerts as the backfill replay; the streaming DoFn's state; config and flag checks."""

from datetime import datetime

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipelines import sli
from pipelines.samples import SLI_DIR
from tests.collect import AppendJsonLines, read_lines
from tests.oracle import sample_truth
from tests.test_sli_pipeline import read_rows
from transforms.core.config import ConfigError
from transforms.sli.config import Alerting, Exclusion, load_sli_config, parse_sli_config
from transforms.slo.status import ComputeSloStatus, EvaluateSlosStreaming

CONFIG = load_sli_config(SLI_DIR / "profile_service.yaml")


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("slo_sample")
    sli.run(["--output_dir", str(out)])
    return out


def test_sample_incident_pages_once_and_resolves_once(sample_run):
    alerts = read_rows(sample_run, "alerts")
    page = [a for a in alerts if a["slo"] == "view-profile-availability" and a["long_window_minutes"] == 60]
    assert [a["state"] for a in sorted(page, key=lambda a: a["at"])] == ["FIRING", "RESOLVED"]
    fired, resolved = sorted(page, key=lambda a: a["at"])
    # the incident runs 14:00-14:20 UTC: paged within minutes, resolved once the 5-minute window is clean
    assert "2026-11-22T14:00" < fired["at"] < "2026-11-22T14:10"
    assert "2026-11-22T14:20" < resolved["at"] < "2026-11-22T14:30"
    assert fired["burn_rate_long"] > fired["threshold"] and fired["burn_rate_short"] > fired["threshold"]


def test_sample_compliance_matches_independent_computation(sample_run):
    _, truths = sample_truth()
    view = [
        t for t in truths if t["method"] == "GET" and t["path"].count("/") == 2 and t["path"].startswith("/profile/")
    ]
    expected = sum(t["status"] < 500 for t in view) / len(view)
    status = read_rows(sample_run, "slo_status")
    last = max((r for r in status if r["slo"] == "view-profile-availability"), key=lambda r: r["evaluated_at"])
    assert last["compliance"] == pytest.approx(expected)
    assert last["events"] == len(view)
    assert last["allowed_bad_events"] == pytest.approx(0.001 * len(view))
    # one row per evaluated minute, no minute twice
    minutes = [r["evaluated_at"] for r in status if r["slo"] == "view-profile-availability"]
    assert len(minutes) == len(set(minutes))


def test_streaming_state_and_timers_match_the_backfill_replay(sample_run, tmp_path):
    rows = [r for r in read_rows(sample_run) if "2026-11-22T13:30" <= r["window_start"] < "2026-11-22T15:30"]
    # damped rules and a weekly maintenance slot (2026-11-22 is a Sunday): their state is in Beam state too
    damping = {"for_minutes": 2, "keep_firing_for_minutes": 10}
    rules = [rule.model_copy(update=damping) for rule in CONFIG.alerting.rules]
    slot = Exclusion(reason="weekly deploy", weekly={"day": "sunday", "start": "14:40", "minutes": 15})
    services = [CONFIG.services[0].model_copy(update={"exclusions": [slot]}), *CONFIG.services[1:]]
    alerting = Alerting(min_events=CONFIG.alerting.min_events, rules=rules)
    config = CONFIG.model_copy(update={"alerting": alerting, "services": services})

    def evaluate(pipeline, source, bounded, name):
        out = pipeline | source | ComputeSloStatus(config, bounded, "sli")
        out.status | "CollectStatus" >> beam.ParDo(AppendJsonLines(tmp_path / f"{name}_status"))
        out.alerts | "CollectAlerts" >> beam.ParDo(AppendJsonLines(tmp_path / f"{name}_alerts"))

    with beam.Pipeline(options=PipelineOptions([], runner="FnApiRunner")) as p:
        evaluate(p, beam.Create(rows), bounded=True, name="batch")

    stream = TestStream()
    for end in sorted({r["window_end"] for r in rows}):  # a minute's rows arrive as its windows close
        ts = datetime.fromisoformat(end).timestamp()
        stream = stream.add_elements([TimestampedValue(r, ts - 1e-6) for r in rows if r["window_end"] == end])
        stream = stream.advance_watermark_to(ts)
    stream = stream.advance_watermark_to_infinity()
    with beam.Pipeline(options=PipelineOptions([], runner="BundleBasedDirectRunner", streaming=True)) as p:
        evaluate(p, stream, bounded=False, name="stream")

    batch_status = read_lines(tmp_path / "batch_status")
    assert len(batch_status) > 100
    assert any('"excluded_minutes": 15' in r and '"weekly deploy"' in r for r in batch_status)
    assert read_lines(tmp_path / "stream_status") == batch_status
    batch_alerts = read_lines(tmp_path / "batch_alerts")
    assert any('"FIRING"' in a for a in batch_alerts)
    assert read_lines(tmp_path / "stream_alerts") == batch_alerts


@pytest.mark.parametrize(
    "slos, field, words",
    [
        ("[{name: a, sli: profile-web/view-profile/availability, target: 1.0}]", "slos[0].target", "less than 1"),
        ("[{name: a, sli: profile-web/view-profile/availability, target: 0}]", "slos[0].target", "greater than 0"),
        (
            "[{name: a, sli: profile-web/nope/availability, target: 0.9}]",
            "slos[0].sli",
            "no SLI 'profile-web/nope/availability'",
        ),
        (
            "[{name: a, target: 0.9, components: [{sli: profile-web/view-profile/availability}, {sli: x/y/z}]}]",
            "slos[0].components[1].sli",
            "no SLI 'x/y/z'",
        ),
        (
            "[{name: a, sli: profile-web/view-profile/availability, target: 0.9, method: timeslices}]",
            "slos[0]",
            "timeslice_threshold",
        ),
        ("[{name: a, target: 0.9}]", "slos[0]", "exactly one of 'sli'"),
        (
            "[{name: a, sli: profile-web/view-profile/availability, target: 0.9, components: []}]",
            "slos[0]",
            "exactly one",
        ),
    ],
)
def test_slo_config_errors_name_the_field(slos, field, words):
    text = (
        f"services: [{{name: profile-web, journeys: [{{name: view-profile, path: '/profile/{{u}}'}}]}}]\nslos: {slos}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_sli_config(text, "c.yaml")
    assert f"c.yaml: {field}:" in str(err.value) and words in str(err.value)


def test_slos_need_one_minute_windows():
    with pytest.raises(SystemExit, match="--window_seconds must be 60"):
        sli.run(["--window_seconds", "300"])


class _State:
    """Beam state stand-in: holds the value encoded with the spec's coder, as a runner does."""

    def __init__(self, coder):
        self.coder, self.encoded = coder, None

    def read(self):
        return None if self.encoded is None else self.coder.decode(self.encoded)

    def write(self, value):
        self.encoded = self.coder.encode(value)

    def clear(self):
        self.encoded = None


class _Timer:
    def set(self, timestamp):
        self.at = timestamp


def test_streaming_state_is_bytes_and_a_changed_config_starts_the_slo_over():
    name, minute = "view-profile-availability", 29_000_000
    dofn = EvaluateSlosStreaming(CONFIG, "sli")
    dofn.setup()
    state, timer = _State(EvaluateSlosStreaming.EVALUATOR.coder), _Timer()
    dofn.process((name, (minute, 0, 99, 100, 0)), evaluator_state=state, timer=timer)
    assert isinstance(state.read(), bytes) and timer.at == (minute + 1) * 60
    out = dofn.evaluate(key=name, fire_time=Timestamp(seconds=timer.at), evaluator_state=state, timer=timer)
    [row] = [o for o in out if isinstance(o, dict)]  # not the alerts
    assert row["events"] == 100 and row["bad_events"] == 1 and row["compliance"] == 0.99
    # a job updated onto other alert windows: the old state is not taken up, the SLO starts over
    rules = [CONFIG.alerting.rules[0].model_copy(update={"long_window_minutes": 120})]
    changed = EvaluateSlosStreaming(CONFIG.model_copy(update={"alerting": Alerting(rules=rules)}), "sli")
    changed.setup()
    fire = Timestamp(seconds=timer.at)  # the timer the old job had set
    assert list(changed.evaluate(key=name, fire_time=fire, evaluator_state=state, timer=timer)) == []
    changed.process((name, (minute + 2, 0, 50, 50, 0)), evaluator_state=state, timer=timer)
    out = changed.evaluate(key=name, fire_time=Timestamp(seconds=timer.at), evaluator_state=state, timer=timer)
    [row] = [o for o in out if isinstance(o, dict)]
    assert row["events"] == 50 and row["compliance"] == 1.0
    # an update that removed the SLO: its timer clears the state
    removed = EvaluateSlosStreaming(CONFIG.model_copy(update={"slos": CONFIG.slos[1:]}), "sli")
    removed.setup()
    assert CONFIG.slos[0].name == name
    assert list(removed.evaluate(key=name, fire_time=fire, evaluator_state=state, timer=timer)) == []
    assert state.read() is None
