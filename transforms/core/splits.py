"""Deterministic splits by content or key hash, shared by the feature and image pipelines: exact
proportions per stratum (a label, a column's value) by rank in batch, in expectation by the hash alone."""


def split_fraction(md5):
    """A content hash mapped to [0, 1): the deterministic position of an image in the split order."""
    return int(md5[:15], 16) / 16**15


def assign_splits(md5s, fractions, cap=None):
    """{md5: split} for one stratum (one label's images, one value's rows). Sorted by hash, the first `cap`
    (all when no cap) are cut by rank into the splits: with n of them and cumulative fractions F, split i
    gets round(F_i n) - round(F_i-1 n), so each stratum keeps the configured proportions to within one;
    the rest map to None (over the cap). `fractions`: [(split, fraction)], fractions summing to 1."""
    ordered = sorted(md5s, key=lambda m: (split_fraction(m), m))
    kept = ordered[:cap] if cap else ordered
    splits, start, cumulative = {}, 0, 0.0
    for split, fraction in fractions:
        cumulative += fraction
        end = round(cumulative * len(kept))
        splits.update((m, split) for m in kept[start:end])
        start = end
    splits.update((m, None) for m in ordered[len(kept) :])
    return splits


def streaming_split(md5, fractions):
    """The split of one image in streaming, where a label's images are never all seen at once: the
    content hash's position against the cumulative fractions (stratified in expectation, stable)."""
    position, cumulative = split_fraction(md5), 0.0
    for split, fraction in fractions:
        cumulative += fraction
        if position < cumulative:
            return split
    return fractions[-1][0]
