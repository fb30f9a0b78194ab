"""Deterministic splits by content or key hash, shared by the feature and image pipelines: exact
proportions by rank in batch, in expectation by the hash alone in streaming."""


def split_fraction(md5):
    """A content hash mapped to [0, 1): the deterministic position of an image in the split order."""
    return int(md5[:15], 16) / 16**15


def assign_splits(md5s, fractions, cap=None):
    """{md5: split} for one label's images. Sorted by content hash, the first `cap` images (all when no
    cap) are cut by rank into the splits, so each label keeps the configured proportions; the rest map to
    None (over the cap). `fractions`: [(split, fraction)], fractions summing to 1."""
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
