"""The dead-letter shape: payload kept once and capped, with its size and SHA-256; the reason list is the
one the manual shows and the one the code raises; JSON decoding gives the documented reasons."""

import ast
import base64
import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.core.records import parse_json, record_dict
from transforms.io.deadletter import REASONS, GuardedBatchDoFn, GuardedDoFn, RecordError, cap_payload, make_dead_letter

ROOT = Path(__file__).resolve().parent.parent


def test_the_manual_lists_exactly_the_reasons_of_the_code():
    manual = (ROOT / "docs" / "dead_letters.md").read_text()
    table = dict(re.findall(r"^\| `([a-z_0-9]+)` \| (.+) \|$", manual, flags=re.M))
    assert table == REASONS


def test_every_reason_the_code_raises_is_documented():
    raised = set()
    for path in [*ROOT.glob("transforms/**/*.py"), *ROOT.glob("pipelines/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RecordError" and node.args:
                if isinstance(node.args[0], ast.Constant):
                    raised.add(node.args[0].value)
    assert raised and raised <= set(REASONS), raised - set(REASONS)
    with pytest.raises(ValueError, match="unknown dead-letter reason"):
        RecordError("no_such_reason", "x")


def test_text_payload_kept_once_binary_as_base64():
    text = make_dead_letter("p", "s", "héllo", RecordError("empty", "m"))
    assert (text["payload_string"], text["payload_bytes"]) == ("héllo", None)
    assert text["payload_size"] == 6 and text["payload_sha256"] == hashlib.sha256("héllo".encode()).hexdigest()
    binary = make_dead_letter("p", "s", b"\x89PNG\x00\xff", RecordError("corrupt_image", "m"))
    assert binary["payload_string"] is None and base64.b64decode(binary["payload_bytes"]) == b"\x89PNG\x00\xff"
    utf8_bytes = make_dead_letter("p", "s", b'{"a": 1}', RecordError("missing_field", "m"))
    assert (utf8_bytes["payload_string"], utf8_bytes["payload_bytes"]) == ('{"a": 1}', None)


def test_unexpected_errors_keep_type_message_and_stack():
    try:
        {}["missing"]
    except KeyError as e:
        letter = make_dead_letter("p", "s", "x", e)
    assert letter["reason"] == "unexpected_error" and letter["error_message"] == "KeyError: 'missing'"
    assert "Traceback" in letter["stack_trace"]
    assert make_dead_letter("p", "s", "x", ValueError())["error_message"] == "ValueError"


def test_payload_cut_to_the_cap_keeps_size_and_hash_of_the_whole():
    payload = "é" * 100_000  # 200,000 bytes
    letter = cap_payload(make_dead_letter("p", "s", payload, RecordError("too_large", "m")), 1001)
    assert letter["payload_truncated"] and letter["payload_size"] == 200_000
    assert letter["payload_string"] == "é" * 500  # 1001 bytes hold 500 two-byte characters
    assert letter["payload_sha256"] == hashlib.sha256(payload.encode()).hexdigest()
    raw = bytes(range(256)) * 100
    cut = cap_payload(make_dead_letter("p", "s", raw, RecordError("too_large", "m")), 1000)
    assert base64.b64decode(cut["payload_bytes"]) == raw[:1000] and cut["payload_truncated"]
    small = make_dead_letter("p", "s", "small", RecordError("empty", "m"))
    assert cap_payload(small, 1000) is small


def test_unencodable_payloads_still_make_a_dead_letter():
    letter = make_dead_letter("p", "s", {"s": {1, 2}, "lone": "\ud800"}, RecordError("wrong_type", "m"))
    json.dumps(letter)
    assert letter["payload_size"] > 0


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b'{"a": NaN}', "out_of_range"),
        ('{"a": Infinity}', "out_of_range"),
        (b'{"a": 1e400}', "out_of_range"),
        (b'{"a": "\\ud800"}', "invalid_utf8"),
        (b'{"a": "\xff"}', "invalid_utf8"),
        ("[" * 65 + "]" * 65, "too_deep"),
        ("[" * 5000 + "]" * 5000, "too_deep"),
        (b"", "empty"),
        ("  \t", "empty"),
        ('{"a": ', "invalid_json"),
        (b"[1]", "not_an_object"),
    ],
)
def test_json_reasons(payload, reason):
    with pytest.raises(RecordError) as error:
        record_dict(payload)
    assert error.value.reason == reason


def test_json_accepted_at_the_limits():
    assert parse_json("[" * 64 + "]" * 64) == eval("[" * 64 + "]" * 64)  # noqa: S307 - a literal of lists
    assert record_dict(b'\xef\xbb\xbf{"a": 123456789012345678901234567890}') == {"a": 1.2345678901234568e29}
    assert record_dict('\ufeff{"x": "\u00e9"}') == {"x": "é"}


class _Halves(GuardedBatchDoFn):
    """Halves even integers; an odd one is a RecordError, a non-integer a bug. Its batch path handles a whole
    batch in one expression and gives up on any batch holding something other than even integers."""

    STEP = "Halves"

    def handle(self, record):
        if record % 2:
            raise RecordError("bad_field", f"{record} is odd")
        yield record // 2

    def handle_batch(self, records):
        if not all(type(r) is int and r % 2 == 0 for r in records):
            raise ValueError("not a clean batch")
        yield from (r // 2 for r in records)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-50, 50) | st.text(max_size=3) | st.none(), max_size=12))
def test_a_batch_gives_exactly_what_its_records_give_one_by_one(batch):
    fn = _Halves("p")
    one_by_one = [o for r in batch for o in GuardedDoFn.process(fn, r)]
    together = list(fn.process(batch))
    key = lambda o: (o.tag, o.value["reason"], o.value["payload_string"]) if hasattr(o, "tag") else o  # noqa: E731
    assert [key(o) for o in together] == [key(o) for o in one_by_one]
    assert len([o for o in together if not hasattr(o, "tag")]) == sum(type(r) is int and r % 2 == 0 for r in batch)


def test_streaming_inserts_send_rows_bigquery_rejects_to_the_dead_letters():
    """Beam's default for streaming inserts retries every error, a row BigQuery rejects for good included
    ('invalid': a value of the wrong type, a missing required field), 10,000 times: the bundle would never
    end and the row never become a `rejected_by_sink` dead letter. WriteBigQueryRows retries transient
    errors only. (The BigQuery emulator cannot show it end to end: it answers a bad value with a 500 and a
    missing required field by closing the connection, instead of a per-row error.)"""
    import apache_beam as beam
    from apache_beam.io.gcp.bigquery import WriteToBigQuery
    from apache_beam.io.gcp.bigquery_tools import RetryStrategy

    from transforms.io.sinks import WriteBigQueryRows

    pipeline = beam.Pipeline()
    rows = pipeline | beam.Create([{"a": 1}])
    rows | WriteBigQueryRows(
        "my-project:ds.tbl", {"fields": [{"name": "a", "type": "INT64"}]}, "STREAMING_INSERTS", "a"
    )
    writes = [
        t.transform for t in pipeline.transforms_stack[0].parts[-1].parts if isinstance(t.transform, WriteToBigQuery)
    ]
    [write] = writes
    strategy = write.insert_retry_strategy or RetryStrategy.RETRY_ALWAYS  # as BigQueryWriteFn reads it
    assert not RetryStrategy.should_retry(strategy, "invalid")  # rejected: a dead letter at once
    assert RetryStrategy.should_retry(strategy, "backendError") and RetryStrategy.should_retry(strategy, "timeout")
