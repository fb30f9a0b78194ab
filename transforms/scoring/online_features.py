"""Online features at scoring time: each request gets its entity's window features as they were at the
request's time, read from the Bigtable online store that `pipelines.window_features` writes (row key =
entity, family "features", one column per feature, cell timestamp = the window's time_index), through
Beam's `Enrichment` transform and its `BigTableEnrichmentHandler`.

The request's time is its window spec `time_field` when the request has one (in the spec's epoch_unit
for numbers), else its Pub/Sub publish time, else the time it was read. A window's value is valid from
its time_index (the window end) until the next window of the spec ends: time_index + period for sliding
windows, time_index + size for fixed ones (the offline table's valid_until; the point-in-time join in
sql/window_features_join.py uses the same rule). A feature whose newest cell at or before the request's
time is past that is stale: the entity had no events in the window since, and the feature gets the
value of no events (0 for count, distinct_count and sum; no value for mean, min, max and last, where
--missing_feature_value gives one).

Requests move one Beam element each through the lookup (the Bigtable handler reads one row per request)
and are batched again for parsing.
"""

import time
from typing import NamedTuple

import apache_beam as beam
import orjson
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.io.requestresponse import NoOpsRepeater
from apache_beam.transforms.enrichment import Enrichment
from apache_beam.transforms.enrichment_handlers.bigtable import BigTableEnrichmentHandler
from apache_beam.transforms.enrichment_handlers.utils import ExceptionLevel

from transforms.core.records import is_missing, record_dict
from transforms.io.deadletter import DEAD_LETTER_TAG, GuardedBatchDoFn, GuardedDoFn, RecordError, payload_and_attributes
from transforms.io.sources import BatchRecords
from transforms.scoring.requests import ENVELOPE_KEYS, FEATURE_TIMES_KEY
from transforms.window_features.aggregate import (
    BIGTABLE_COLUMN_FAMILY,
    MAX_ENTITY_BYTES,
    as_of_filter,
    event_time_micros,
    features_at,
)


class OnlineFeatureStore(NamedTuple):
    project: str
    instance: str
    table: str
    spec: object  # the WindowFeatureSpec the table was written with
    entity_field: str  # the request field holding the entity id
    missing_value: float | None = None  # for features with no value (mean, min, max, last of no events)


def _row_key(request):
    return request.entity.encode("utf-8")


class PointInTimeBigtableHandler(BigTableEnrichmentHandler):
    """Beam's Bigtable enrichment handler, reading each request's row as of the request's own time (the
    handler takes one filter; this one sets it per request, one call at a time) and answering a failed
    read with beam.Row(error=...) instead of raising, so that the request becomes a dead letter and the
    job goes on."""

    def __init__(self, project, instance, table):
        super().__init__(
            project,
            instance,
            table,
            row_filter=None,
            row_key_fn=_row_key,
            include_timestamp=True,
            exception_level=ExceptionLevel.QUIET,
        )

    def __call__(self, request, *args, **kwargs):
        self._row_filter = as_of_filter(request.as_of)
        try:
            return super().__call__(request)
        except Exception as e:  # noqa: BLE001 - a failed read: the request's dead letter (JoinOnlineFeatures)
            return request, beam.Row(error=f"{type(e).__name__}: {str(e)[:500]}")


def request_entity(record, entity_field):
    """The entity id of a request: its `entity_field`, at the top level or under `features`."""
    features = record.get("features")
    value = record.get(entity_field)
    if is_missing(value) and isinstance(features, dict):
        value = features.get(entity_field)
    if is_missing(value) or isinstance(value, (dict, list)):
        raise RecordError("missing_entity", f"the request has no entity field '{entity_field}' (--entity_field)")
    entity = str(value)
    try:
        size = len(entity.encode("utf-8"))
    except UnicodeEncodeError:
        raise RecordError("bad_key", f"the entity {entity[:40]!r} is not valid Unicode text") from None
    if size > MAX_ENTITY_BYTES:
        raise RecordError("entity_too_long", f"the entity '{entity[:40]}...' is over {MAX_ENTITY_BYTES} bytes")
    return entity


def request_time_micros(record, raw, spec, read_at):
    """Whole microseconds since the epoch: the spec's time field of the request, else the Pub/Sub
    publish time, else `read_at` (seconds)."""
    value = record.get(spec.time_field)
    if not is_missing(value):
        return event_time_micros(value, spec.epoch_unit)
    if isinstance(raw, PubsubMessage) and raw.publish_time:
        return int(raw.publish_time.timestamp() * 1_000_000)
    return int(read_at * 1_000_000)


class FeatureRequests(GuardedBatchDoFn):
    """A batch of raw requests -> beam.Row(entity, as_of (micros), raw) per request, the lookup's input;
    a dead letter for a request that is unreadable, a TF Serving body, or without entity."""

    STEP = "OnlineFeatures"

    def __init__(self, store, pipeline_name):
        super().__init__(pipeline_name)
        self._store = store

    def handle(self, raw):
        yield self._request(raw, time.time())

    def _request(self, raw, read_at):
        record = record_dict(payload_and_attributes(raw)[0])
        body = [key for key in ENVELOPE_KEYS if key in record]
        if body:
            raise RecordError(
                "bad_field",
                f"a TF Serving body ('{body[0]}') cannot get online features (--feature_store_table): send one "
                f"request per entity",
            )
        store = self._store
        return beam.Row(
            entity=request_entity(record, store.entity_field),
            as_of=request_time_micros(record, raw, store.spec, read_at),
            raw=raw,
        )


def with_features(record, features, times):
    """The request with the features set (over its own values of them; those with no value left as the
    request gives them) where its inputs are: under `features`, else at the top level."""
    record = dict(record)
    target = record
    if isinstance(record.get("features"), dict):
        target = record["features"] = dict(record["features"])
    target.update({name: value for name, value in features.items() if value is not None})
    record[FEATURE_TIMES_KEY] = times
    return record


class JoinOnlineFeatures(GuardedDoFn):
    """(request Row, the handler's response Row) -> the raw request with its features (a PubsubMessage
    stays one, its JSON body enriched); a failed read -> a dead letter (feature_lookup_failed)."""

    STEP = "OnlineFeatures"

    def __init__(self, store, pipeline_name):
        super().__init__(pipeline_name)
        self._store = store

    def dead_letter_payload(self, pair):
        return payload_and_attributes(pair[0].raw)

    def handle(self, pair):
        request, response = pair
        response = response._asdict()
        if "error" in response:
            s = self._store
            raise RecordError(
                "feature_lookup_failed",
                f"reading entity '{request.entity[:100]}' from --feature_store_instance {s.instance} "
                f"--feature_store_table {s.table} failed: {response['error']}; check the table exists and the "
                f"job's service account can read it",
            )
        cells = response.get(BIGTABLE_COLUMN_FAMILY) or {}
        features, times = features_at(cells, self._store.spec, request.as_of, self._store.missing_value)
        raw = request.raw
        record = with_features(record_dict(payload_and_attributes(raw)[0]), features, times)
        if isinstance(raw, PubsubMessage):
            yield PubsubMessage(orjson.dumps(record), raw.attributes, raw.message_id, raw.publish_time)
        else:
            yield record


class OnlineFeatureOutputs(NamedTuple):
    batches: beam.PCollection  # lists of enriched raw requests
    dead_letters: beam.PCollection


def _pair(request, response):
    return request, response


class AddOnlineFeatures(beam.PTransform):
    """Batches of raw requests -> OnlineFeatureOutputs: batches of the requests with their entity's
    features as of each request's time (see the module doc), and the dead letters of those that could
    not get them. The lookup is Beam's Enrichment with the Bigtable handler; its retries are the Bigtable
    client's own (a read that still fails is a dead letter, never a stopped job)."""

    def __init__(self, store, pipeline_name):
        super().__init__()
        self._store, self._pipeline = store, pipeline_name

    def expand(self, batches):
        s = self._store
        requests = batches | "FeatureRequests" >> beam.ParDo(FeatureRequests(s, self._pipeline)).with_outputs(
            DEAD_LETTER_TAG, main="requests"
        )
        handler = PointInTimeBigtableHandler(s.project, s.instance, s.table)
        joined = (
            requests.requests
            | "LookupFeatures"
            >> Enrichment(handler, join_fn=_pair, use_custom_types=True, timeout=None, repeater=NoOpsRepeater())
            | "JoinFeatures"
            >> beam.ParDo(JoinOnlineFeatures(s, self._pipeline)).with_outputs(DEAD_LETTER_TAG, main="records")
        )
        dead_letters = (requests[DEAD_LETTER_TAG], joined[DEAD_LETTER_TAG]) | "FeatureDeadLetters" >> beam.Flatten()
        return OnlineFeatureOutputs(joined.records | "BatchEnriched" >> BatchRecords(), dead_letters)
