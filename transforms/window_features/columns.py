"""Partial aggregates of events in columns: one row per (entity, bucket width, bucket start), reduced with
numpy. A batch's events become one row each per bucket width and are reduced to one row per bucket
(`BucketColumns.of_events`); partials of any events concatenate and reduce to the partial of all of them
(`BucketColumns.merged`), so a backfill shuffles a few columnar partials per batch (one per entity shard)
instead of a Python list per event and bucket; `entity_buckets` then gives each entity's buckets as the
`Aggregates` lists that `WindowBuckets` sweeps into windows.

A row holds what an `Aggregates` list holds: the latest event time, each field's count of values, for each
numeric field its sum, min, max and last value with its time (meaningless where the count is 0), and for
each distinct-count field the (row, value) pairs, values by index into a list (a dict assigns the indexes,
so values equal in a set, such as 1 and 1.0, share one)."""

import zlib
from typing import NamedTuple

import numpy as np

ENTITY_SHARDS = 256  # a backfill's shuffle keys: entities by a stable hash (the parallelism of its merge)


class BucketColumns(NamedTuple):
    entities: list  # entity text, indexed by `entity`
    entity: np.ndarray  # int64 per row
    width: np.ndarray  # int64 seconds per row
    start: np.ndarray  # int64 seconds per row
    latest: np.ndarray  # int64 microseconds per row
    counts: np.ndarray  # int64 (rows, fields)
    sums: np.ndarray  # float64 (rows, numeric fields); -0.0 without values, the identity of addition
    mins: np.ndarray  # float64; +inf without values
    maxs: np.ndarray  # float64; -inf without values
    last_micros: np.ndarray  # int64; -1 without values
    last_values: np.ndarray  # float64
    distinct: tuple  # per distinct-count field: (rows int64, value indexes int64, values list)

    @classmethod
    def of_events(cls, events, layout, widths):
        """Events (aggregate.Event) -> their reduced partial, one bucket per width of `widths` each."""
        n, fields, numeric = len(events), list(layout.fields), list(layout.numeric_fields)
        codes = {}
        entity = np.fromiter((codes.setdefault(e.entity, len(codes)) for e in events), np.int64, n)
        micros = np.fromiter((e.micros for e in events), np.int64, n)
        counts, values, distinct = np.zeros((n, len(fields)), np.int64), np.zeros((n, len(numeric))), []
        for j, f in enumerate(fields):
            column = np.array([e.values.get(f) for e in events] + [None], object)[:-1]  # None: without it
            has = column != None  # noqa: E711 - elementwise, in numpy
            counts[:, j] = has
            if f in numeric:
                values[has, numeric.index(f)] = column[has].astype(np.float64)
            if f in layout.distinct_fields:
                index = {}
                rows = np.flatnonzero(has)
                value_codes = [index.setdefault(v, len(index)) for v in column[rows].tolist()]
                distinct.append((rows, np.array(value_codes, np.int64), list(index)))
        present = counts[:, [fields.index(f) for f in numeric]].astype(bool)
        seconds = micros // 1_000_000
        k = len(widths)
        repeat = lambda a: np.tile(a, (k,) + (1,) * (a.ndim - 1))  # noqa: E731 - one row per event per width
        width = np.repeat(np.array(widths, np.int64), n)
        last_micros = np.where(present, micros[:, None], -1)
        one_each = cls(
            list(codes),
            repeat(entity),
            width,
            repeat(seconds) // width * width,
            repeat(micros),
            repeat(counts),
            repeat(np.where(present, values, -0.0)),
            repeat(np.where(present, values, np.inf)),
            repeat(np.where(present, values, -np.inf)),
            repeat(last_micros),
            repeat(np.where(present, values, 0.0)),
            tuple((np.concatenate([rows + j * n for j in range(k)]), np.tile(c, k), v) for rows, c, v in distinct),
        )
        return one_each.reduced()

    @classmethod
    def merged(cls, parts):
        """Partials (of any events) -> the reduced partial of all of their events."""
        parts = list(parts)
        if len(parts) == 1:
            return parts[0]
        index, remapped = {}, []
        for part in parts:
            remapped.append(np.array([index.setdefault(e, len(index)) for e in part.entities], np.int64)[part.entity])
        distinct, offsets = [], np.cumsum([0] + [len(p.entity) for p in parts])
        for j in range(len(parts[0].distinct)):
            values, rows, codes = {}, [], []
            for part, offset in zip(parts, offsets, strict=False):
                part_rows, part_codes, part_values = part.distinct[j]
                mapping = np.array([values.setdefault(v, len(values)) for v in part_values], np.int64)
                rows.append(part_rows + offset)
                codes.append(mapping[part_codes])
            distinct.append((np.concatenate(rows), np.concatenate(codes), list(values)))
        column = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return cls(
            list(index),
            np.concatenate(remapped),
            *(column(name) for name in cls._fields[2:-1]),
            tuple(distinct),
        ).reduced()

    def reduced(self):
        """One row per (entity, width, start), in that order. Each bucket's sum adds its rows in their order
        (ufunc.at is unbuffered: the sums of a batch are those of adding its events one by one)."""
        n = len(self.entity)
        if n == 0:
            return self
        order = np.lexsort((self.start, self.width, self.entity))
        entity, width, start = self.entity[order], self.width[order], self.start[order]
        new = np.ones(n, bool)
        new[1:] = (entity[1:] != entity[:-1]) | (width[1:] != width[:-1]) | (start[1:] != start[:-1])
        firsts = np.flatnonzero(new)
        group = np.empty(n, np.int64)
        group[order] = np.cumsum(new) - 1  # each row's bucket
        shape = (len(firsts), self.sums.shape[1])
        latest, counts = np.full(len(firsts), -1, np.int64), np.zeros((len(firsts), self.counts.shape[1]), np.int64)
        sums, mins, maxs = np.full(shape, -0.0), np.full(shape, np.inf), np.full(shape, -np.inf)
        np.maximum.at(latest, group, self.latest)
        np.add.at(counts, group, self.counts)
        with np.errstate(over="ignore", invalid="ignore"):  # sums past the float range are inf, as in Python
            np.add.at(sums, group, self.sums)
        np.minimum.at(mins, group, self.mins)
        np.maximum.at(maxs, group, self.maxs)
        last_micros, last_values = np.empty(shape, np.int64), np.empty(shape)
        for j in range(shape[1]):  # the greatest (time, value) of each bucket; rows without values sort first
            by_last = np.lexsort((self.last_values[:, j], self.last_micros[:, j], group))
            ends = by_last[np.flatnonzero(np.append(group[by_last][1:] != group[by_last][:-1], True))]
            last_micros[:, j], last_values[:, j] = self.last_micros[ends, j], self.last_values[ends, j]
        distinct = []
        for rows, codes, values in self.distinct:
            base = max(len(values), 1)
            pairs = np.unique(group[rows] * base + codes)
            distinct.append((pairs // base, pairs % base, values))
        return BucketColumns(
            self.entities,
            entity[firsts],
            width[firsts],
            start[firsts],
            latest,
            counts,
            sums,
            mins,
            maxs,
            last_micros,
            last_values,
            tuple(distinct),
        )

    def by_shard(self):
        """(shard, partial of the entities of that shard) for each shard holding rows; the rows must be
        reduced (in entity order), and stay in that order within a shard. Everything is worked out for all
        shards at once; a shard's partial is slices of it."""
        if not len(self.entity):
            return
        shard_of = np.array([zlib.crc32(e.encode("utf-8", "surrogatepass")) % ENTITY_SHARDS for e in self.entities])
        row_shard = shard_of[self.entity]
        order = np.argsort(row_shard, kind="stable")
        shards = row_shard[order]
        cuts = np.flatnonzero(np.diff(shards, prepend=-1, append=ENTITY_SHARDS))
        present = shards[cuts[:-1]]
        position = np.empty(len(order), np.int64)  # a row's index within its shard's partial
        position[order] = np.arange(len(order)) - np.repeat(cuts[:-1], np.diff(cuts))
        columns = [getattr(self, name)[order] for name in self._fields[1:-1]]
        new_entity = np.diff(columns[0], prepend=-1) != 0  # an entity is in one shard: its rows are together
        entity_rank = np.cumsum(new_entity) - 1
        entity_cuts = entity_rank[cuts[:-1]].tolist() + [int(entity_rank[-1]) + 1]
        entity_rank -= np.repeat(entity_rank[cuts[:-1]], np.diff(cuts))  # an entity's index within its shard
        entities = [self.entities[e] for e in columns[0][new_entity].tolist()]
        pairs = []
        for rows, codes, values in self.distinct:
            base = max(len(values), 1)
            by_shard = np.argsort(row_shard[rows], kind="stable")
            rows, codes = rows[by_shard], codes[by_shard]
            used, renumbered = np.unique(row_shard[rows] * base + codes, return_inverse=True)
            pair_cuts = np.searchsorted(row_shard[rows], present).tolist() + [len(rows)]
            used_cuts = np.searchsorted(used // base, present)
            renumbered = renumbered.reshape(-1) - np.repeat(used_cuts, np.diff(pair_cuts))
            used_values = [values[c] for c in (used % base).tolist()]
            pairs.append((position[rows], renumbered, used_values, pair_cuts, used_cuts.tolist() + [len(used)]))
        cuts = cuts.tolist()
        for i, shard in enumerate(present.tolist()):
            a, b = cuts[i], cuts[i + 1]
            distinct = tuple(
                (rows[pc[i] : pc[i + 1]], codes[pc[i] : pc[i + 1]], values[uc[i] : uc[i + 1]])
                for rows, codes, values, pc, uc in pairs
            )
            yield (
                shard,
                BucketColumns(
                    entities[entity_cuts[i] : entity_cuts[i + 1]],
                    entity_rank[a:b],
                    *(column[a:b] for column in columns[1:]),
                    distinct,
                ),
            )

    def entity_buckets(self, layout):
        """(entity, {(width, start): Aggregates list}) per entity, the lists new (the caller's to change)."""
        numeric_counts = [layout.fields.index(f) for f in layout.numeric_fields]
        columns = [self.latest.tolist(), *self.counts.T.tolist()]
        for j, c in enumerate(numeric_counts):
            absent = self.counts[:, c] == 0
            for values in (self.sums, self.mins, self.maxs, self.last_micros, self.last_values):
                column = values[:, j].astype(object)
                column[absent] = None
                columns.append(column.tolist())
        for rows, codes, values in self.distinct:  # a set per bucket with values, None for the others
            sets, rows = [None] * len(self.entity), rows.tolist()
            of_pairs = [values[c] for c in codes.tolist()]
            firsts = np.flatnonzero(np.diff(rows, prepend=-1)).tolist() + [len(rows)]
            for a, b in zip(firsts, firsts[1:], strict=False):
                sets[rows[a]] = set(of_pairs[a:b])
            columns.append(sets)
        lists = list(map(list, zip(*columns, strict=True)))
        keys = list(zip(self.width.tolist(), self.start.tolist(), strict=True))
        entity = self.entity
        bounds = np.flatnonzero(np.append(True, entity[1:] != entity[:-1])).tolist() + [len(entity)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            yield self.entities[entity[a]], dict(zip(keys[a:b], lists[a:b], strict=True))
