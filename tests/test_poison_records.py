"""No record can stop a pipeline: every per-record step of the six pipelines, fed generated input of any
shape (valid sample records with one field replaced by anything, JSON of any shape with NaN, Infinity and
huge numbers, odd unicode, deep nesting, random bytes), returns outputs or dead letters with a reason from
the documented list, never raises, and one record in gives exactly one outcome where the step is 1:1.
The steps after a parser (journey matching, window keys, row formatting) get whatever it let through."""

import base64
import copy
import io
import json
import math
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines import feature_stats, sli, window_features
from pipelines.samples import FEATURES_DIR, SCORE_DIR, SKEW_DIR, WINDOW_FEATURES_DIR
from transforms.core.records import SerializedExample
from transforms.features.cleanse import CleanseRecords
from transforms.features.skew import ServingValues
from transforms.features.spec import load_feature_spec
from transforms.images.ingest import ProcessImages, ToImageInputs
from transforms.io.deadletter import DEAD_LETTER_TAG, REASONS, cap_payload
from transforms.io.sources import ImageInput
from transforms.io.udf import ApplyUdf
from transforms.scoring.model import InputSpec
from transforms.scoring.requests import ENVELOPES_TAG, ParseRequests
from transforms.sli.batch import AggregateLogBatches
from transforms.sli.config import load_sli_config
from transforms.sli.parsing import ParseLogRecords
from transforms.sli.rows import FormatBackfillRows, FormatSliRows, JourneyWindowStatsFn, MatchJourneys
from transforms.slo.replay import ParseSliRows, Period
from transforms.slo.status import SliRowsToSloInputs
from transforms.window_features.aggregate import FormatFeatureRows, ParseEvents, entity_buckets_of_shard
from transforms.window_features.spec import load_window_spec

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SLI_CONFIG = load_sli_config(sli.SAMPLE_CONFIG)
FEATURE_SPEC = load_feature_spec(str(feature_stats.SAMPLE_SPEC))
WINDOW_SPEC = load_window_spec(window_features.SAMPLE_SPEC)
SKEW_SPEC = load_feature_spec(str(SKEW_DIR / "training" / "feature_spec.yaml"))

SLI_SAMPLES = [
    {
        "timestamp": "2026-11-22T00:00:00.971498123Z",
        "resource": {"type": "cloud_run_revision", "labels": {"service_name": "profile-web"}},
        "httpRequest": {
            "requestMethod": "GET",
            "requestUrl": "https://profile.example.com/profile/alice9?v=1",
            "status": 200,
            "latency": "0.086436s",
        },
    },
    {
        "timeMillis": 1795305604254,
        "level": "INFO",
        "loggerName": "com.example.web.AccessLog",
        "contextMap": {
            "http.method": "GET",
            "http.path": "/profile/erin54",
            "http.status": "200",
            "http.latency_ms": 21.115,
            "service": "profile-web",
        },
    },
    {
        "time": "2026-11-22T00:00:06.185+00:00",
        "service": "profile-web",
        "method": "GET",
        "uri": "/profile/alice28/avatar",
        "status": 200,
        "request_time": 0.01941,
    },
]
FEATURE_SAMPLES = [json.loads(line) for line in (FEATURES_DIR / "customers.jsonl").read_text().splitlines()[:3]]
SKEW_SAMPLES = [json.loads(line) for line in (SKEW_DIR / "serving.jsonl").read_text().splitlines()[:3]]
WINDOW_SAMPLES = [
    json.loads(line) for line in (WINDOW_FEATURES_DIR / "transactions.jsonl").read_text().splitlines()[:3]
]

# Values of every kind; the known-hostile ones are drawn often, so that few examples find them.
hostile = st.sampled_from(
    [
        0,
        -1,
        1e308,
        -1e308,
        2**63,
        2**64 + 1,
        10**400,
        -(10**400),
        253402300799,
        253402300800000,
        1e11,
        9e18,
        float("nan"),
        float("inf"),
        "9999-12-31T23:59:30Z",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:05:00Z",
        "\ud800",
        "\ufeff",
        "",
        "#",
        "a/b",
        "x" * 5000,
        "inf",
        "NaN",
        "1e400",
        "-0",
        "\x00",
        "\n",
        "Z",
        [1],
        {"a": 1},
        [],
        {},
        True,
        None,
    ]
)
scalars = st.one_of(
    hostile,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, categories=None), max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


def _paths(record, prefix=()):
    for key, value in record.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


def _mutated(samples):
    """A sample record with one to three fields (at any depth) replaced by any value, or removed."""

    @st.composite
    def build(draw):
        record = copy.deepcopy(draw(st.sampled_from(samples)))
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            paths = list(_paths(record))
            if not paths:
                break
            path = draw(st.sampled_from(paths))
            node = record
            for key in path[:-1]:
                node = node[key]
            if draw(st.integers(min_value=0, max_value=5)):
                node[path[-1]] = copy.deepcopy(draw(st.one_of(hostile, json_values)))
            else:
                del node[path[-1]]
        return record

    return build()


def _encoded(records):
    """A record as a pipeline may receive it: dict, JSON text (NaN/Infinity allowed, as Python writes
    them), UTF-8 bytes, bytes with a BOM, or a Pub/Sub message; plus raw bytes and deep nesting."""

    def forms(record):
        text = json.dumps(record, allow_nan=True)
        raw = text.encode("utf-8", "surrogatepass")
        return st.sampled_from([record, text, raw, b"\xef\xbb\xbf" + raw, PubsubMessage(raw, {"k": "v"})])

    deep = st.integers(min_value=1, max_value=3000).map(lambda n: "[" * n + "]" * n)
    deep_object = st.integers(min_value=60, max_value=2000).map(lambda n: '{"a":' * n + "1" + "}" * n)
    return st.one_of(records.flatmap(forms), json_values.flatmap(forms), st.binary(max_size=64), deep, deep_object)


def outcomes(dofn, element, *args, side=None):
    """(main outputs, dead letters) of one element; every dead letter checked for shape and size. Other
    tagged outputs go to `side` ({tag: [values]}) when it is given."""
    main, dead = [], []
    for output in dofn.process(element, *args):
        if isinstance(output, beam.pvalue.TaggedOutput) and side is not None and output.tag != DEAD_LETTER_TAG:
            side.setdefault(output.tag, []).append(output.value)
        elif isinstance(output, beam.pvalue.TaggedOutput):
            assert output.tag == DEAD_LETTER_TAG
            letter = output.value
            assert letter["reason"] in REASONS, letter
            capped = cap_payload(letter, 4096)
            assert len(json.dumps(capped).encode()) < 4096 * 2 + 30_000  # payload cap + bounded messages
            dead.append(letter)
        else:
            main.append(output.value if isinstance(output, beam.window.TimestampedValue) else output)
    return main, dead


def _ready(dofn):
    if hasattr(dofn, "setup"):
        dofn.setup()
    return dofn


PARSE_SLI = _ready(ParseLogRecords(SLI_CONFIG.formats, "sli"))
MATCH = _ready(MatchJourneys(SLI_CONFIG, 60, "sli"))
FORMAT_SLI = _ready(FormatSliRows(SLI_CONFIG, True))


@FUZZ
@given(_encoded(_mutated(SLI_SAMPLES)))
def test_sli_parse_match_and_format_never_raise(record):
    events, dead = outcomes(PARSE_SLI, record)
    assert len(events) + len(dead) == 1
    for event in events:
        assert math.isfinite(event.timestamp) and math.isfinite(event.latency_ms)
        [(key, value)] = list(MATCH.process(event))
        stats = JourneyWindowStatsFn()
        accumulator = stats.add_input(stats.create_accumulator(), value)
        window_start = key[2]
        rows = list(
            FORMAT_SLI.process(
                (key, stats.extract_output(accumulator)),
                pane=_FINAL_PANE,
                win=IntervalWindow(window_start, window_start + 60),
            )
        )
        for row in rows:
            json.dumps(row, allow_nan=False)
            assert "#" not in row["sli_id"] and "\n" not in row["sli_id"]


_FINAL_PANE = PaneInfo(True, True, PaneInfoTiming.ON_TIME, 0, 0)

AGGREGATE_SLI = _ready(AggregateLogBatches(SLI_CONFIG, 60, "sli"))
FORMAT_BACKFILL = _ready(FormatBackfillRows(SLI_CONFIG, 60))


@FUZZ
@given(st.lists(_encoded(_mutated(SLI_SAMPLES)), max_size=8))
def test_sli_batch_step_never_raises_and_counts_reconcile(records):
    partials, dead = outcomes(AGGREGATE_SLI, records)
    assert sum(stats.count for _, stats in partials) + len(dead) == len(records)
    for key, stats in partials:
        for row in FORMAT_BACKFILL.process((key, stats)):
            json.dumps(row, allow_nan=False)
            assert "#" not in row["sli_id"] and "\n" not in row["sli_id"]


CLEANSE = _ready(CleanseRecords(FEATURE_SPEC, "feature_stats"))


@FUZZ
@given(st.one_of(_encoded(_mutated(FEATURE_SAMPLES)), st.binary(max_size=40).map(SerializedExample)))
def test_feature_cleansing_never_raises(record):
    rows, dead = outcomes(CLEANSE, record)
    assert len(rows) + len(dead) == 1


SERVING = _ready(ServingValues(SKEW_SPEC, "skew"))


@FUZZ
@given(_encoded(_mutated(SKEW_SAMPLES)))
def test_skew_serving_values_never_raise(record):
    values, dead = outcomes(SERVING, record)
    assert len(values) + len(dead) == 1
    for row in values:
        assert all(v is None or isinstance(v, (str, float, int)) for v in row.values())


PARSE_EVENTS = ParseEvents(WINDOW_SPEC, "window_features", by_entity=True)
FORMAT_FEATURES = _ready(FormatFeatureRows(WINDOW_SPEC, True, "window_features"))
FORMAT_FEATURES.start_bundle()


@FUZZ
@given(_encoded(_mutated(WINDOW_SAMPLES)))
def test_window_feature_parse_key_and_format_never_raise(record):
    keyed, dead = outcomes(PARSE_EVENTS, [record])  # a batch of one record: its shard's partial
    assert len(keyed) + len(dead) == 1
    for shard, partial in keyed:
        [(entity, windows)] = entity_buckets_of_shard((shard, [partial]), WINDOW_SPEC)  # as after the shuffle
        assert len(windows) == 3  # one time bucket per window granularity of the sample spec: 1 min, 1 h, 1 day
        [rows] = list(FORMAT_FEATURES.process((entity, windows)))
        assert len(rows) == 12
        json.dumps(rows, allow_nan=False)


TO_IMAGES = _ready(ToImageInputs(None, 1 << 20, "image_ingest"))
PROCESS_IMAGES = _ready(
    ProcessImages(
        "image_ingest",
        dict(
            width=16,
            height=16,
            method="pad",
            encoding="png",
            jpeg_quality=90,
            max_bytes=1 << 20,
            max_pixels=1 << 16,
            exif_orientation="apply",
            dedup_by="pixels",
        ),
    )
)
_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg=="
)
# An EXIF block: a big-endian TIFF header and one entry, Orientation (SHORT, count 1), its value and the rest fuzzed
_EXIF_ORIENTATION = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01"


def _png16_with_exif(exif):
    """A 16-bit grayscale PNG carrying `exif` (any bytes) as its EXIF chunk."""
    buffer = io.BytesIO()
    Image.fromarray(np.array([[0, 300], [65535, 4096]], dtype=np.uint16)).save(buffer, "PNG", exif=exif)
    return buffer.getvalue()


IMAGE_MESSAGES = [
    {"image_bytes": {"b64": base64.b64encode(_PNG).decode()}, "label": "cat", "id": "a"},
    {"instances": [{"b64": base64.b64encode(_PNG).decode(), "label": "dog"}]},
]


@FUZZ
@given(
    st.one_of(
        _mutated(IMAGE_MESSAGES).map(lambda r: PubsubMessage(json.dumps(r, allow_nan=True).encode(), {"label": "x"})),
        st.binary(max_size=80).map(lambda b: PubsubMessage(b, {})),
        st.binary(max_size=60).map(lambda b: PubsubMessage(_PNG[:20] + b, {"label": "cat"})),
        st.binary(max_size=40).map(lambda b: PubsubMessage(_png16_with_exif(_EXIF_ORIENTATION + b), {"label": "cat"})),
        st.binary(max_size=40).map(lambda b: PubsubMessage(_png16_with_exif(b"Exif\x00\x00" + b), {"label": "cat"})),
        json_values.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")),  # manifest lines
        st.text(max_size=40).map(lambda t: ("{" + t).encode("utf-8", "surrogatepass")),
    )
)
def test_image_steps_never_raise(record):
    images, dead = outcomes(TO_IMAGES, record)
    for image in images:
        assert isinstance(image, ImageInput)
        processed, dead_images = outcomes(PROCESS_IMAGES, image)
        assert len(processed) + len(dead_images) == 1
        assert [d["reason"] for d in dead_images if d["reason"] == "unexpected_error"] == [], dead_images


SCORE_SAMPLES = [json.loads(line) for line in (SCORE_DIR / "requests.jsonl").read_text().splitlines()[:3]]
IMAGE_REQUESTS = _ready(
    ParseRequests([InputSpec("image_bytes", "string", ())], None, "score", 1 << 20, 1 << 16, max_instances=4)
)
PIXEL_REQUESTS = _ready(
    ParseRequests([InputSpec("pixels", "float32", (8, 8, 3))], None, "score", 1 << 20, 1 << 16, "-1_1", 4)
)
TABULAR_REQUESTS = _ready(
    ParseRequests(
        [InputSpec("age", "float32", ()), InputSpec("tags", "string", (None,))],
        None,
        "score",
        1 << 20,
        1 << 16,
        max_instances=4,
    )
)
TABULAR_SAMPLES = [{"id": "r1", "features": {"age": 31.5, "tags": ["a", "b"]}}, {"id": 7, "age": 3, "tags": []}]
INSTANCE_SAMPLES = [
    {"image_bytes": {"b64": base64.b64encode(_PNG).decode()}},
    {"b64": base64.b64encode(_PNG).decode()},
    {"age": 31.5, "tags": ["a", "b"]},
    {"pixels": [[[0, 1, 2]] * 8] * 8},
]
good_instances = st.one_of(st.sampled_from(INSTANCE_SAMPLES), st.just([[[0, 1, 2]] * 8] * 8))
instances = st.one_of(good_instances, good_instances, _mutated(INSTANCE_SAMPLES), json_values)
RESERVED = {"score.request_id": "b1/0", "score.instance_index": "0"}  # as the pipeline marks instances
# TensorFlow Serving bodies: instances, columnar inputs or examples, good and bad mixed, of any size
envelopes = st.builds(
    lambda key, body, extra: {key: body, **extra},
    st.sampled_from(["instances", "inputs", "examples"]),
    st.one_of(
        st.lists(instances, min_size=1, max_size=5),
        st.lists(instances, max_size=6),
        st.dictionaries(st.sampled_from(["age", "tags", "image_bytes", "pixels"]), st.lists(instances, max_size=5)),
        json_values,
    ),
    st.fixed_dictionaries(
        {"id": st.one_of(st.sampled_from(["b1", "b/2"]), st.just("b1"), hostile)},
        optional={
            "signature_name": st.sampled_from(["serving_default", "classify"]),
            "context": st.one_of(st.just({"tags": ["c"]}), json_values),
        },
    ),
)


@FUZZ
@given(
    st.one_of(
        _encoded(_mutated(SCORE_SAMPLES)),
        _encoded(_mutated(TABULAR_SAMPLES)),
        st.binary(max_size=60).map(lambda b: PubsubMessage(_PNG[:30] + b, {"request_id": "x"})),
        st.binary(max_size=60).map(lambda b: ImageInput("f.png", "f.png", None, b)),
        _encoded(envelopes),
        envelopes.map(
            lambda e: PubsubMessage(json.dumps(e, allow_nan=True).encode("utf-8", "surrogatepass"), RESERVED, "m")
        ),
    )
)
def test_scoring_requests_never_raise(record):
    """A plain request is one outcome; a TF Serving body is one dead letter, or one outcome per instance
    (instance_index 0..n-1, each once) plus its (body id, n) marker."""
    for parse in (IMAGE_REQUESTS, PIXEL_REQUESTS, TABULAR_REQUESTS):
        side = {}
        batches, dead = outcomes(parse, [record], side=side)  # a batch of one record
        requests = [(request, batch.examples) for batch in batches for request in batch.requests]
        for request, _example in requests:
            assert isinstance(request.request_id, str) and len(request.request_id) <= 1024
        marked = [{a["key"]: a["value"] for a in d["attributes"]} for d in dead]
        envelope = side.pop(ENVELOPES_TAG, [])
        assert not side
        if not envelope:
            assert len(requests) + len(dead) == 1
            assert all(key not in a for a in marked for key in RESERVED)  # callers cannot fake an instance
            continue
        [(body_id, count)] = envelope
        assert 1 <= count <= 4
        positions = [r.instance_index for r, _ in requests] + [int(a["score.instance_index"]) for a in marked]
        assert sorted(positions) == list(range(count))
        ids = [r.request_id for r, _ in requests] + [a["score.request_id"] for a in marked]
        assert sorted(ids) == sorted(f"{body_id}/{i}" for i in positions)


SAMPLE_UDFS = [_ready(ApplyUdf(str(path), "process", "sli")) for path in sorted((ROOT / "udf").glob("[!_]*.[jp][sy]"))]


@settings(max_examples=60, deadline=None)
@given(_encoded(_mutated(SLI_SAMPLES)))
def test_sample_udfs_never_raise(record):
    for udf in SAMPLE_UDFS:
        outputs, dead = outcomes(udf, record)
        assert len(outputs) + len(dead) <= 1  # a UDF may filter a record out (counted as udf_filtered)


PARSE_SLI_ROWS = _ready(ParseSliRows("slo_replay", Period()))
SLO_INPUTS = _ready(SliRowsToSloInputs(SLI_CONFIG))
SLI_ROW_SAMPLES = [
    {
        "sli_id": "profile-web/view-profile/availability",
        "sli_kind": "availability",
        "window_start": "2026-11-22T14:03:00+00:00",
        "window_seconds": 60,
        "good": 11,
        "total": 12,
        "pane_index": 0,
        "emitted_at": {"nested": [1, 2]},
    },
    {
        "sli_id": "w/_unmatched/requests",
        "sli_kind": "unmatched",
        "window_start": 1763820180,
        "good": None,
        "total": 3,
        "pane_index": 1,
    },
]


@settings(max_examples=100, deadline=None)
@given(_encoded(_mutated(SLI_ROW_SAMPLES)))
def test_slo_replay_row_parser_never_raises(record):
    rows, dead = outcomes(PARSE_SLI_ROWS, record)
    assert len(rows) + len(dead) == 1
    for row in rows:  # what the SLO evaluation is fed
        assert row["good"] is None or 0 <= row["good"] <= row["total"]
        for _, (minute, _, good, total, pane) in SLO_INPUTS.process(row):
            assert isinstance(minute, int) and good <= total and pane >= 0
