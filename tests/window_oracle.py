"""Window features worked out the plain way, for the tests: every window end a multiple of the step
whose window [end - size, end) holds the event, then statistics over each group with the standard library."""

import datetime
import json
import math
import statistics


def _seconds(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def valid_events(lines):
    """(card, seconds, amount or None, merchant or None) of the well-formed sample records."""
    events = []
    for line in lines:
        try:
            r = json.loads(line)
            events.append(
                (
                    r["card_id"],
                    _seconds(r["event_time"]),
                    float(r["amount"]) if r.get("amount") is not None else None,
                    r.get("merchant"),
                )
            )
        except (ValueError, KeyError):
            continue
    return events


def expected_features(events, windows):
    """{(entity, window name, window end seconds): {feature: value}} for amount (count, sum, mean, min, max,
    last) and merchant (distinct_count); windows: [(name, size seconds, step seconds)]."""
    groups = {}
    for entity, t, amount, merchant in events:
        for name, size, step in windows:
            end = (math.floor(t / step) + 1) * step
            while end - size <= t:
                groups.setdefault((entity, name, end), []).append((t, amount, merchant))
                end += step
    out = {}
    for (entity, name, end), members in groups.items():
        amounts = [(t, a) for t, a, _ in members if a is not None]
        values = [a for _, a in amounts]
        out[(entity, name, end)] = {
            f"amount_count_{name}": len(values),
            f"amount_sum_{name}": math.fsum(values),
            f"amount_mean_{name}": statistics.fmean(values) if values else None,
            f"amount_min_{name}": min(values) if values else None,
            f"amount_max_{name}": max(values) if values else None,
            f"amount_last_{name}": max(amounts)[1] if amounts else None,
            f"merchant_distinct_count_{name}": len({m for _, _, m in members if m is not None}),
        }
    return out
