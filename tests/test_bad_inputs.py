"""Whole pipelines on their sample mixed with the bad classes of input a file can hold: a byte-order mark,
CRLF line ends, empty lines, invalid UTF-8, a very long line, deep nesting, NaN, a lone surrogate. Each
pipeline is run twice, on the clean head of its sample and on the same lines with the bad ones added, and
the counts must reconcile: every added line is one more dead letter except the BOM and CRLF copies of
valid lines, which are parsed like the originals; records in = outputs + dead letters; every dead letter
fits the payload cap."""

import gzip
import itertools
import json

import pytest

from pipelines import feature_stats, score, skew, sli, window_features
from pipelines.launch import metric_counts
from pipelines.samples import SCORE_DIR, SKEW_DIR, WINDOW_FEATURES_DIR

CAP = 4096
LONG_LINE_BYTES = 2_000_000
BAD_LINES = [
    b"",
    b"   ",
    b"\xff\xfe not UTF-8 \xc3\x28",
    b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"pad": "' + b"x" * LONG_LINE_BYTES,  # unterminated: a dead letter in every pipeline
    b'{"amount": NaN, "age": Infinity}',
    b'{"s": "\\ud800"}',
    b"[1, 2, 3]",
]


def _sample_lines(name):
    if name == "sli":
        with gzip.open(sli.SAMPLE_LOGS) as f:
            return [line.rstrip(b"\n") for line in itertools.islice(f, 300)]
    path = {
        "window_features": WINDOW_FEATURES_DIR / "transactions.jsonl",
        "skew": SKEW_DIR / "serving.jsonl",
        "score": SCORE_DIR / "requests.jsonl",
        "feature_stats": feature_stats.SAMPLE_DATA,
    }[name]
    return path.read_bytes().splitlines()[:300]


# pipeline module, the counter of its main outcomes per record
PIPELINES = {
    "sli": (sli, ("records_parsed",)),
    "window_features": (window_features, ("events",)),
    "skew": (skew, ("serving_rows",)),
    "score": (score, ("scored", "cache_hits")),
    "feature_stats": (feature_stats, ("rows_train", "rows_eval", "rows_test")),
}


def _run(name, lines, out):
    module, outcome_counters = PIPELINES[name]
    out.mkdir(parents=True)
    path = out / "input.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = module.run(
        [
            "--input_files",
            str(path),
            "--output_dir",
            str(out / "out"),
            "--progress",
            "off",
            "--dead_letter_max_payload_bytes",
            str(CAP),
        ]
    )
    counts = metric_counts(result, name)
    dead = [
        json.loads(line)
        for p in sorted((out / "out").glob("dead_letters*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    return counts["records_in"], sum(counts.get(c, 0) for c in outcome_counters), dead


@pytest.mark.parametrize("name", list(PIPELINES))
def test_bad_lines_are_dead_letters_and_counts_reconcile(name, tmp_path):
    clean = _sample_lines(name)
    mixed = [b"\xef\xbb\xbf" + clean[0], *clean[1:], clean[1] + b"\r", *BAD_LINES]
    clean_in, clean_out, clean_dead = _run(name, clean, tmp_path / "clean")
    records_in, outputs, dead = _run(name, mixed, tmp_path / "mixed")

    assert clean_in == len(clean) and records_in == len(mixed)
    assert clean_in == clean_out + len(clean_dead)
    assert records_in == outputs + len(dead)
    assert outputs == clean_out + 1  # the CRLF copy; the BOM line is the clean file's first line
    assert len(dead) == len(clean_dead) + len(BAD_LINES)
    new = sorted(dead, key=lambda d: d["payload_size"])[-len(BAD_LINES) :]  # the bad lines, by size
    assert all(len(json.dumps(d).encode()) < CAP + 20_000 for d in dead)
    longest = max(dead, key=lambda d: d["payload_size"])
    assert longest["payload_size"] == LONG_LINE_BYTES + 9 and longest["payload_truncated"]
    assert len(longest["payload_string"].encode()) == CAP
    reasons = {d["reason"] for d in dead}
    assert {"invalid_utf8", "too_deep", "out_of_range", "empty"} <= reasons, reasons
    assert len(new) == len(BAD_LINES)
