"""UDFs: loading errors, filter/transform/throw semantics in Python and JavaScript, the samples in udf/."""

import json
from pathlib import Path

import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage

from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.udf import ApplyUdf, UdfError, load_udf
from transforms.sli.config import Formats
from transforms.sli.parsing import parse_log_record

UDF_DIR = Path(__file__).resolve().parent.parent / "udf"

# In the style of the public Google-provided template samples: rename, filter, enrich, throw.
JS_SAMPLE = """
function process(inJson) {
  var obj = JSON.parse(inJson);
  if (obj.drop) { return null; }
  if (obj.skip) { return; }
  if (obj.explode) { throw new Error("cannot handle " + obj.explode); }
  obj.uri = obj.url; delete obj.url;            // rename
  obj.service = "profile-web";                  // enrich
  return JSON.stringify(obj);
}
"""
PY_SAMPLE = """
def process(record):
    import json
    obj = json.loads(record)
    if obj.get("drop"):
        return None
    if obj.get("explode"):
        raise ValueError("cannot handle " + obj["explode"])
    obj["uri"] = obj.pop("url")
    obj["service"] = "profile-web"
    return obj
"""


@pytest.fixture(params=[("udf.js", JS_SAMPLE), ("udf.py", PY_SAMPLE)], ids=["javascript", "python"])
def udf_file(request, tmp_path):
    name, source = request.param
    path = tmp_path / name
    path.write_text(source)
    return str(path)


def _run(fn, record):
    fn.setup()
    return list(fn.process(record))


def test_transform_filter_and_throw(udf_file):
    fn = ApplyUdf(udf_file, "process", "sli")
    [out] = _run(fn, '{"url": "/login", "status": 200}')
    out = json.loads(out) if isinstance(out, str) else out
    assert out == {"uri": "/login", "status": 200, "service": "profile-web"}
    assert _run(fn, '{"drop": true}') == []
    [dead] = _run(fn, '{"explode": "this"}')
    assert dead.tag == DEAD_LETTER_TAG
    assert dead.value["reason"] == "udf_error" and dead.value["step"] == "ApplyUdf"
    assert "cannot handle this" in dead.value["error_message"]
    assert dead.value["payload_string"] == '{"explode": "this"}'


def test_javascript_undefined_filters_and_pubsub_attributes_survive(tmp_path):
    path = tmp_path / "u.js"
    path.write_text(JS_SAMPLE)
    fn = ApplyUdf(str(path), "process", "sli")
    assert _run(fn, '{"skip": 1}') == []
    [out] = _run(fn, PubsubMessage(b'{"url": "/a"}', {"origin": "lb"}))
    assert isinstance(out, PubsubMessage) and out.attributes == {"origin": "lb"}
    assert json.loads(out.data)["uri"] == "/a"


def test_wrong_return_type_is_a_dead_letter(tmp_path):
    path = tmp_path / "u.py"
    path.write_text("def process(record):\n    return 42\n")
    [dead] = _run(ApplyUdf(str(path), "process", "sli"), "{}")
    assert "returned int" in dead.value["error_message"]


@pytest.mark.parametrize(
    "name, source, words",
    [
        ("bad.py", "def process(record):\n    return (\n", "--udf_path: syntax error in {path} line 2"),
        ("bad.js", "function process(x) {\n  return x +;\n}", "--udf_path: syntax error in {path}:2"),
        ("nofn.py", "def other(r):\n    return r\n", "--udf_function: {path} defines no function 'process'"),
        ("nofn.js", "function other(r) { return r; }", "--udf_function: {path} defines no function 'process'"),
        ("boom.py", "raise RuntimeError('at import')\n", "{path} failed while loading: RuntimeError: at import"),
        ("udf.txt", "x", "must end in .py or .js"),
    ],
)
def test_load_errors_name_flag_file_and_line(tmp_path, name, source, words):
    path = tmp_path / name
    path.write_text(source)
    with pytest.raises(UdfError) as err:
        load_udf(str(path), "process")
    assert words.format(path=path) in str(err.value)


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(UdfError, match="--udf_path: cannot read"):
        load_udf(str(tmp_path / "none.js"), "process")


def test_sample_mask_pii():
    mask = load_udf(str(UDF_DIR / "mask_pii.py"), "process")
    entry = {
        "httpRequest": {
            "requestUrl": "https://x.example/reset?email=bob@example.com&lang=en",
            "remoteIp": "203.0.113.9",
        },
        "textPayload": "login by alice@example.org",
    }
    out = json.loads(mask(json.dumps(entry)))
    assert out["httpRequest"] == {"requestUrl": "https://x.example/reset?email=REDACTED&lang=en", "remoteIp": "0.0.0.0"}
    assert out["textPayload"] == "login by <email>"
    assert mask("not json bob@example.com") == "not json <email>"


def test_sample_nginx_to_log_entry_parses_as_cloud_logging():
    to_entry = load_udf(str(UDF_DIR / "nginx_to_log_entry.js"), "process")
    nginx = {
        "time_iso8601": "2026-11-22T10:00:00+00:00",
        "request": "GET /profile/a?x=1 HTTP/1.1",
        "status": "503",
        "request_time": "0.250",
        "host": "profile.example.com",
    }
    event = parse_log_record(to_entry(json.dumps(nginx)), Formats())
    assert (event.method, event.path, event.status, event.latency_ms, event.service) == (
        "GET",
        "/profile/a",
        503,
        250.0,
        "profile.example.com",
    )
    other = '{"time": "x"}'
    assert to_entry(other) == other
    with pytest.raises(Exception, match="has no method and path"):
        to_entry(json.dumps({**nginx, "request": "GARBAGE"}))


def test_sample_drop_health_checks():
    keep = load_udf(str(UDF_DIR / "drop_health_checks.js"), "process")
    health = {"httpRequest": {"requestUrl": "https://x/healthz", "userAgent": "GoogleHC/1.0"}}
    probe = {"uri": "/profile/a", "http_user_agent": "kube-probe/1.29"}
    real = {"httpRequest": {"requestUrl": "https://x/profile/a?healthz=1", "userAgent": "Mozilla"}}
    assert keep(json.dumps(health)) is None
    assert keep(json.dumps(probe)) is None
    assert keep(json.dumps(real)) == json.dumps(real)
