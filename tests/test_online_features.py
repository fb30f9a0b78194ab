"""Online features at scoring time, on the emulators: window_features (a backfill) writes a few hand-made
events to the Bigtable online store and the BigQuery offline table; the scoring pipeline then scores
requests at chosen times with a model that returns its inputs, so its predictions are the features it
read. They must equal the point-in-time join of the offline table at each request's time (the project's
join SQL on bqemulator) and the values worked out by hand below (a stale window and an entity with no
features get the value of no events). Plus the lookup's steps on arbitrary input (hypothesis)."""

import datetime
import json
import re

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import score, window_features
from sql.window_features_join import point_in_time_join_sql
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.sources import Input
from transforms.scoring.model import InputSpec
from transforms.scoring.online_features import (
    FeatureRequests,
    JoinOnlineFeatures,
    OnlineFeatureStore,
    PointInTimeBigtableHandler,
)
from transforms.window_features.spec import WindowFeatureSpec

T0 = 1795341600  # 2026-11-22T10:00:00Z, an hour boundary
SPEC = {
    "entity_field": "card_id",
    "time_field": "event_time",
    "windows": [{"name": "5m", "size": "5m", "period": "1m"}, {"name": "1h", "size": "1h"}],
    "aggregations": [{"field": "amount", "aggregates": ["count", "sum", "mean"]}],
}
FEATURES = [f"amount_{a}_{w}" for w in ("5m", "1h") for a in ("count", "sum", "mean")]
MISSING = -1.0  # --missing_feature_value
EVENTS = [("c-1", 30, 10.0), ("c-1", 90, 20.0), ("c-1", 200, 5.0), ("c-2", 100, 7.0)]  # (card, T0 + s, amount)


def iso(seconds):
    return datetime.datetime.fromtimestamp(T0 + seconds, datetime.UTC).isoformat()


# request id -> (card, T0 + seconds, features by hand, time_index of the 5m and 1h windows read)
# 5m windows slide every minute: the current one at time R ends at the last whole minute <= R and holds
# the events of the 5 minutes before; 1h windows are fixed: the current one is the last whole hour's.
HAND = {
    # 10:04:10: the 5m window [09:59, 10:04) holds all three c-1 events; no 1h window has ended
    "r1": ("c-1", 250, [3, 35.0, 35 / 3, 0, 0.0, MISSING], (iso(240), None)),
    # 10:04:00 exactly: the window ending now counts (time_index <= request time)
    "r2": ("c-1", 240, [3, 35.0, 35 / 3, 0, 0.0, MISSING], (iso(240), None)),
    # 10:01:00: [09:56, 10:01) holds the 10:00:30 event only
    "r3": ("c-1", 60, [1, 10.0, 10.0, 0, 0.0, MISSING], (iso(60), None)),
    # 11:01:40: c-1's newest 5m cell ended 10:08 and was replaced at 10:09: stale, so no events; the
    # 10:00-11:00 window is current
    "r4": ("c-1", 3700, [0, 0.0, MISSING, 3, 35.0, 35 / 3], (None, iso(3600))),
    # 10:02:10: [09:57, 10:02) holds c-2's 10:01:40 event
    "r5": ("c-2", 130, [1, 7.0, 7.0, 0, 0.0, MISSING], (iso(120), None)),
    # an entity the store has never seen
    "r6": ("c-9", 250, [0, 0.0, MISSING, 0, 0.0, MISSING], (None, None)),
}
BAD_REQUESTS = {
    '{"id": "b1", "event_time": "2026-11-22T10:00:00+00:00"}': "missing_entity",
    '{"id": "b2", "card_id": "c-1", "event_time": "yesterday"}': "invalid_event_time",
    '{"id": "b3", "card_id": "c-1", "instances": [{}]}': "bad_field",
    '{"id": "b4", "card_id": ': "invalid_json",
}


def bq_client(services, project):
    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=services.env["BIGQUERY_EMULATOR_HOST"]),
    )


def identity_model(path):
    """A .keras model whose output is its inputs, in FEATURES order."""
    inputs = [tf.keras.Input((), name=name) for name in FEATURES]
    joined = tf.keras.layers.Concatenate()([tf.keras.layers.Reshape((1,))(i) for i in inputs])
    tf.keras.Model(inputs, joined).save(path)


def read_jsonl(folder, prefix):
    return [json.loads(line) for p in sorted(folder.glob(f"{prefix}*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def scored(services, project, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("online_features")
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(json.dumps(SPEC))
    events = tmp / "events.jsonl"
    events.write_text(
        "".join(json.dumps({"card_id": c, "event_time": iso(s), "amount": a}) + "\n" for c, s, a in EVENTS)
    )
    bq = bq_client(services, project)
    bq.create_dataset("online_features", exists_ok=True)
    window_features.run(
        [
            *("--project", project, "--window_spec", str(spec_path), "--input_files", str(events)),
            *("--bigtable_instance", "online_features", "--bigtable_table", "cards", "--progress", "off"),
            *("--output_table", f"{project}:online_features.windows", "--output_dir", str(tmp / "features")),
        ]
    )
    requests = tmp / "requests.jsonl"
    lines = [json.dumps({"id": r, "card_id": c, "event_time": iso(s)}) for r, (c, s, _, _) in HAND.items()]
    requests.write_text("\n".join([*lines, *BAD_REQUESTS]) + "\n")
    identity_model(tmp / "identity.keras")
    result = score.run(
        [
            *("--project", project, "--model_path", str(tmp / "identity.keras"), "--input_files", str(requests)),
            *("--feature_store_instance", "online_features", "--feature_store_table", "cards"),
            *("--feature_window_spec", str(spec_path), "--missing_feature_value", str(MISSING)),
            *("--output_dir", str(tmp / "scored"), "--progress", "off"),
        ]
    )
    rows = {row["request_id"]: row for row in read_jsonl(tmp / "scored", "predictions")}
    return {"rows": rows, "dead": read_jsonl(tmp / "scored", "dead_letters"), "bq": bq, "result": result}


def features_read(row):
    return json.loads(row["outputs"])["output_0"]


def test_features_read_are_the_hand_worked_values(scored):
    rows = scored["rows"]
    assert sorted(rows) == sorted(HAND)
    for request_id, (_, _, expected, (five, hour)) in HAND.items():
        assert features_read(rows[request_id]) == pytest.approx(expected, rel=1e-6), request_id
        assert rows[request_id]["feature_time_index"] == [
            {"window_name": "5m", "time_index": five},
            {"window_name": "1h", "time_index": hour},
        ], request_id


def test_features_read_equal_the_point_in_time_join_of_the_offline_table(scored, project):
    bq = scored["bq"]
    bq.query("CREATE OR REPLACE TABLE online_features.labels (entity STRING, label_time TIMESTAMP)").result()
    labels = [{"entity": c, "label_time": iso(s)} for c, s, _, _ in HAND.values()]
    bq.insert_rows_json("online_features.labels", labels, retry=None)
    sql = point_in_time_join_sql(
        WindowFeatureSpec.model_validate(SPEC), "`online_features.windows`", "`online_features.labels`", "spec"
    )
    joined = {(r["entity"], r["label_time"].isoformat()): r for r in bq.query(sql).result()}
    assert len(joined) == len(HAND)
    for request_id, (card, seconds, _, _) in HAND.items():
        offline = joined[(card, iso(seconds))]
        expected = [MISSING if offline[f] is None else offline[f] for f in FEATURES]
        assert features_read(scored["rows"][request_id]) == pytest.approx(expected, rel=1e-6), request_id


def test_bad_requests_are_dead_letters_and_counts_reconcile(scored):
    dead = scored["dead"]
    assert sorted(d["reason"] for d in dead) == sorted(BAD_REQUESTS.values())
    assert {d["step"] for d in dead} == {"OnlineFeatures"}
    assert {d["payload_string"] for d in dead} == set(BAD_REQUESTS)  # the requests as they came


def test_a_failed_read_is_a_dead_letter(services, project):
    store = OnlineFeatureStore(project, "online", "no_such_table", WindowFeatureSpec.model_validate(SPEC), "card_id")
    handler = PointInTimeBigtableHandler(store.project, store.instance, store.table)
    handler.__enter__()
    request = beam.Row(entity="c-1", as_of=T0 * 1_000_000, raw='{"id": "x", "card_id": "c-1"}')
    (out,) = JoinOnlineFeatures(store, "score").process(handler(request))
    assert out.tag == DEAD_LETTER_TAG and out.value["reason"] == "feature_lookup_failed"
    assert "--feature_store_table no_such_table" in out.value["error_message"]
    assert out.value["payload_string"] == request.raw


STORE = OnlineFeatureStore("p", "i", "t", WindowFeatureSpec.model_validate(SPEC), "card_id")
values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.lists(st.integers()))
records = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30),
    st.dictionaries(st.sampled_from(["id", "card_id", "event_time", "features", "instances", "x"]), values),
    st.builds(
        lambda card, t: json.dumps({"id": "r", "card_id": card, "event_time": t}),
        values,
        st.one_of(st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=30)),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, max_size=8))
def test_feature_requests_give_one_outcome_per_request_and_batch_as_single(batch):
    fn = FeatureRequests(STORE, "score")
    outcomes = list(fn.process(batch))
    assert len(outcomes) == len(batch)
    for raw, out in zip(batch, outcomes, strict=True):
        if getattr(out, "tag", None) == DEAD_LETTER_TAG:
            continue
        assert out.raw is raw and isinstance(out.entity, str) and isinstance(out.as_of, int)
    singles = [o for raw in batch for o in fn.process([raw])]
    assert [getattr(o, "tag", None) for o in singles] == [getattr(o, "tag", None) for o in outcomes]
    assert [o.value["reason"] for o in singles if hasattr(o, "tag")] == [
        o.value["reason"] for o in outcomes if hasattr(o, "tag")
    ]


cells = st.dictionaries(
    st.sampled_from([*FEATURES, "other"]),
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["1", "2.5", "-0.0", "[1]", "{", ""]), st.text(max_size=5)),
            st.datetimes(
                min_value=datetime.datetime(1970, 1, 2),
                max_value=datetime.datetime(2100, 1, 1),
                timezones=st.just(datetime.UTC),
            ),
        ),
        min_size=1,
        max_size=2,
    ),
)


RAWS = ['{"id": "r", "card_id": "c"}', {"id": "r", "features": {}}, PubsubMessage(b'{"id": "r"}', {"a": "1"})]


@settings(max_examples=80, deadline=None)
@given(cells, st.integers(0, 2**52), st.sampled_from(RAWS))
def test_joining_any_response_gives_a_request_or_a_dead_letter(cells, as_of, raw):
    request = beam.Row(entity="c", as_of=as_of, raw=raw)
    (out,) = JoinOnlineFeatures(STORE, "score").process((request, beam.Row(features=cells)))
    if getattr(out, "tag", None) == DEAD_LETTER_TAG:
        assert out.value["step"] == "OnlineFeatures"
        return
    if isinstance(raw, PubsubMessage):
        assert out.attributes == raw.attributes
        out = json.loads(out.data)
    json.dumps(out)  # a record any sink or coder takes (no cycles)
    features = out["features"] if isinstance(raw, dict) else out
    assert [w["window_name"] for w in out["_feature_time_index"]] == ["5m", "1h"]
    assert features["amount_count_5m"] is not None and features["amount_sum_1h"] is not None
    assert all(features[f] is not None for f in FEATURES if f in features)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--feature_store_table", "t"], "add ['--feature_store_instance', '--feature_window_spec']"),
        (["--entity_field", "card_id"], "--entity_field and --missing_feature_value are for online features"),
        (
            ["--feature_store_instance", "i", "--feature_store_table", "t", "--feature_window_spec", "/no.yaml"],
            "--feature_window_spec: cannot read /no.yaml",
        ),
    ],
)
def test_bad_online_feature_flags_name_the_flag(flags, words):
    options = PipelineOptions(flags)
    inputs = [InputSpec(name, "float32", ()) for name in FEATURES]
    with pytest.raises(ValueError, match=re.escape(words)):
        score.check_online_features(options, Input(input_files="r.jsonl"), inputs, None)


def test_an_image_model_or_a_model_without_the_spec_features_is_refused(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(json.dumps(SPEC))
    options = PipelineOptions(
        ["--feature_store_instance", "i", "--feature_store_table", "t", "--feature_window_spec", str(spec_path)]
    )
    source = Input(input_files="r.jsonl")
    with pytest.raises(ValueError, match="the model takes an image"):
        score.check_online_features(options, source, [InputSpec("image_bytes", "string", ())], None)
    with pytest.raises(ValueError, match="the model takes none of its features"):
        score.check_online_features(
            options, source, [InputSpec("age", "float32", ()), InputSpec("x", "float32", ())], None
        )
    store = score.check_online_features(options, source, [InputSpec("amount_sum_5m", "float32", ())], None)
    assert (store.instance, store.table, store.entity_field) == ("i", "t", "card_id")
