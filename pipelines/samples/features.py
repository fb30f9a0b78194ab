"""Generates the feature pipeline's bundled sample: customer records for a churn model, with missing
values, outliers, a high-cardinality text field and a few bad records; and drifted serving records for
the skew check's sample:

    python -m pipelines.samples.features pipelines/samples/features/customers.jsonl
    python -c "from pipelines.samples.features import write_serving_sample as w; \\
               w('pipelines/samples/skew/serving.jsonl')"
"""

import json
import random
import sys

COUNTRIES = ["DE", "FR", "US", "GB", "JP", "BR", "IN", "NL"]
DEVICES = ["ios", "android", "web"]
WORDS = "fast slow great poor support price app crash love hate easy hard".split()
BAD_RECORDS = [
    '{"user_id": "u-bad-1", "age": "forty", "country": "DE", "device": "web", "churned": "no"}',
    '{"user_id": "u-bad-2", "age": 30, "country": "FR", "device": "ios"}',
    '{"age": 30, "country": "FR", "device": "ios", "churned": "yes"}',
    '{"user_id": "u-bad-4", "age": 30, "country"',
]


def generate(count=2000, seed=17, drift=False):
    """Records as dicts. With `drift` (serving data for the skew check): customers 10 years older, a new
    country (MX) for a fifth of them, and the device missing for a fifth."""
    rng = random.Random(seed)
    records = []
    for n in range(count):
        churned = rng.random() < 0.25
        record = {
            "user_id": f"u-{n:05d}",
            "age": None if rng.random() < 0.05 else round(rng.gauss(45 if churned else 38, 12)) + (10 if drift else 0),
            "income": round(rng.lognormvariate(10.5, 0.8), 2) if rng.random() > 0.02 else 5.0e7,  # rare outliers
            "tenure_days": rng.randrange(1, 3000),
            "country": "MX"
            if drift and rng.random() < 0.2
            else (rng.choice(COUNTRIES[:3]) if rng.random() < 0.7 else rng.choice(COUNTRIES)),
            "device": None if rng.random() < (0.2 if drift else 0.03) else rng.choice(DEVICES),
            "review": " ".join(rng.choice(WORDS) for _ in range(rng.randrange(0, 6))),
            "churned": "yes" if churned else "no",
        }
        records.append({k: v for k, v in record.items() if v is not None})
    return records


def write_sample(path):
    with open(path, "w") as f:
        for record in generate():
            f.write(json.dumps(record) + "\n")
        for line in BAD_RECORDS:
            f.write(line + "\n")


def write_serving_sample(path, count=1000, seed=23):
    """Drifted serving records for the skew check's bundled default, without labels."""
    with open(path, "w") as f:
        for record in generate(count, seed, drift=True):
            record.pop("churned")
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    write_sample(sys.argv[1])
