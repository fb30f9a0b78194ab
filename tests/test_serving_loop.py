"""The whole serving loop on the emulators (scripts/serving_loop.py, `make loop`): window features into the
Bigtable online store, scoring that reads them with a canary that fails on cards without history, the
canary's burn-rate alert rolling it back, and the pipelines' health rows evaluated by a separate
`pipelines.sli --sli_rows_subscription` job that pages when the feature job stops. Each job is a
`python -m pipelines.<name>` process, as the manuals launch them. What is checked is worked out apart from
the pipelines: the routing rule from SHA-256, the features from what the loop published. And the manual,
docs/serving_loop.md, names every flag the loop gives its jobs."""

import collections
import json
from types import SimpleNamespace

from scripts.serving_loop import CANARY_FRACTION, ROOT, STALLED_SLO, goes_to_canary, job_commands, run_loop


def test_the_loop_rolls_back_the_canary_and_pages_on_a_stalled_feature_job_while_scoring_goes_on(
    services, project, tmp_path
):
    summary = run_loop(project, services.env, tmp_path)
    print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_rows")}, indent=1))
    assert [name for name, passed in summary["checks"] if not passed] == []
    assert summary["predictions"] + summary["dead_letters"] == summary["requests"]
    # the canary failed where it asserts (a card without transactions in the last 10 minutes), nowhere else
    assert all("canary: a card without history" in d["error_message"] for d in summary["dead_letter_rows"])
    assert {d["reason"] for d in summary["dead_letter_rows"]} == {"inference_failed"}
    versions = {p["model_version"] for p in summary["prediction_rows"]}
    assert versions == {"1", "2"}  # the canary served before the rollback
    served = [p["request_id"] for p in summary["prediction_rows"] if p["model_version"] == "2"]
    assert all(goes_to_canary(r) for r in served) and CANARY_FRACTION == 0.5
    # rollback messages: on the canary's SLOs only, each over its threshold
    # failures fire canary-availability; canary-latency (2 s) and canary-divergence (1.5x) may fire as well
    allowed = {"canary-availability", "canary-latency", "canary-divergence"}
    fired = {m["slo"] for m in summary["rollbacks"]}
    assert "canary-availability" in fired and fired <= allowed
    assert json.loads((tmp_path / "rollback.json").read_text())["slo"] in fired  # the control file the router read
    for message in summary["rollbacks"]:
        assert (message["canary_version"], message["primary_version"]) == ("2", "1")
        assert message["burn_rate_long"] > message["threshold"]
    # the stall paged from the evaluator job: a FIRING page of the feature job's freshness SLO, after the stop
    pages = [a for a in summary["alerts"] if (a["slo"], a["state"], a["severity"]) == (STALLED_SLO, "FIRING", "page")]
    assert pages and summary["seconds"]["paged"] > summary["seconds"]["stalled"]
    assert summary["predictions_with_features"] > 0 and summary["wrong_features"] == []
    assert summary["stale_in_stall"] > 0  # requests in the stall read its stale features as no events


def test_manual_names_every_flag_the_loop_gives_its_jobs(tmp_path):
    topics = SimpleNamespace(topic=collections.defaultdict(str), job_sub=collections.defaultdict(str))
    manual = (ROOT / "docs" / "serving_loop.md").read_text()
    for name, argv in job_commands("p", topics, tmp_path, 30).items():
        assert f"python -m {argv[2]} " in manual, name
        missing = [flag for flag in argv if flag.startswith("--") and flag not in manual]
        assert missing == [], (name, missing)
