"""Generates the window-features pipeline's bundled sample: one day of card transactions (card id,
RFC 3339 event time, amount, merchant), a burst on one card, and a few bad records:

    python -m pipelines.samples.window_features pipelines/samples/window_features/transactions.jsonl
"""

import datetime
import json
import random
import sys

DAY = datetime.datetime(2026, 11, 24, tzinfo=datetime.UTC)
MERCHANTS = [f"m-{n:03d}" for n in range(40)]
BAD_RECORDS = [
    '{"card_id": "c-bad-1", "event_time": "2026-11-24T10:00:00Z", "amount": "twelve", "merchant": "m-001"}',
    '{"event_time": "2026-11-24T10:00:00Z", "amount": 12.5, "merchant": "m-001"}',
    '{"card_id": "c-bad-3", "event_time": "yesterday", "amount": 12.5, "merchant": "m-001"}',
    '{"card_id": "c-bad-4", "amount"',
]


def generate(cards=50, transactions=3000, seed=23):
    """Records as dicts, in time order; card c-007 makes 40 quick purchases at 14:00 (the burst the
    10-minute features show)."""
    rng = random.Random(seed)
    records = []
    for _ in range(transactions):
        at = DAY + datetime.timedelta(seconds=rng.randrange(86400))
        records.append(
            {
                "card_id": f"c-{rng.randrange(cards):03d}",
                "event_time": at.isoformat().replace("+00:00", "Z"),
                "amount": round(rng.lognormvariate(3, 1), 2),
                "merchant": rng.choice(MERCHANTS),
            }
        )
    for n in range(40):
        at = DAY + datetime.timedelta(hours=14, seconds=n * 7)
        records.append(
            {
                "card_id": "c-007",
                "event_time": at.isoformat().replace("+00:00", "Z"),
                "amount": round(rng.uniform(1, 5), 2),
                "merchant": rng.choice(MERCHANTS),
            }
        )
    return sorted(records, key=lambda r: r["event_time"])


def main(path):
    lines = [json.dumps(r) for r in generate()] + BAD_RECORDS
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
