"""Model rollouts: a canary (a share of requests, chosen by a stable hash of the request id) or a shadow
(every request, results kept out of the outputs) scored beside the primary model, per-version SLI rows
from the scoring outcomes, and the rollback of the canary when a burn-rate alert on its SLO fires.

The rollback reaches the routing step through a control file (local or gs://): the rollback step writes
it, the router checks whether it exists at most every `poll_seconds`, and from then on sends every
request to the primary. A file, not a side input or a loop in the graph: the local runners cannot refresh
side inputs from a watcher, a Beam graph has no cycles, and every worker of a Dataflow job can read the
same object (a Pub/Sub subscription would hand the message to one worker only).

The divergence of the versions' predictions is the skew measure of numeric features
(transforms.features.skew): per SLI window, the second version's values binned in the primary's
histogram, Jensen-Shannon divergence. The window gives one divergence event per prediction of the second
version it compared, all failed when the divergence is over the threshold: a timeslices SLO counts the
window as one bad minute, and the alerts' `min_events` counts the predictions behind it."""

import datetime
import hashlib
import json
import math
import time

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from transforms.features.skew import numeric_skew
from transforms.features.statistics import bin_counts, histogram, histogram_edges
from transforms.io.deadletter import DEAD_LETTER_TAG, GuardedDoFn
from transforms.scoring.model import ScoringBatch, received_seconds
from transforms.scoring.requests import RECEIVED_AT_KEY, ToPredictionRows, failed_batch_dead_letters
from transforms.sli.config import UNMATCHED_JOURNEY, JourneyMatcher
from transforms.sli.parsing import RequestEvent
from transforms.sli.rows import ComputeSliRows
from transforms.slo.status import ALERTS_TAG, ComputeSloStatus

CANARY_TAG = "canary"
SHADOW_TAG = "shadow"
ROLLOUT_METHOD = "PREDICT"  # the method of the scoring events the SLI config's journeys match
SUCCEEDED, FAILED = 200, 500  # the status of a scoring event: availability SLIs count 5xx as bad
WINDOW_SECONDS = 60  # the rollout SLI window
DIVERGENCE_PATH = "/rollout/divergence"  # the path of the per-window divergence events


def canary_bucket(request_id):
    """A request id's place in [0, 1): the first 8 bytes of its SHA-256, the same on every worker and run."""
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def version_path(version):
    """The path of a version's scoring events, which the SLI config's journeys match: /model/<version>."""
    return f"/model/{version}"


class RollbackControl:
    """Whether the control file exists, looked up at most every `poll_seconds`; once it exists the answer
    stays True (a rollback is undone by deleting the file and restarting the job)."""

    def __init__(self, path, poll_seconds, clock=time.monotonic):
        self._path, self._poll_seconds, self._clock = path, poll_seconds, clock
        self._checked_at, self._rolled_back = None, False

    def rolled_back(self):
        now = self._clock()
        if not self._rolled_back and (self._checked_at is None or now - self._checked_at >= self._poll_seconds):
            self._checked_at = now
            self._rolled_back = FileSystems.exists(self._path)
        return self._rolled_back


def _part(batch, rows):
    examples = {name: value[rows] for name, value in batch.examples.items()}
    return ScoringBatch([batch.requests[i] for i in rows], examples)


class RouteRequests(GuardedDoFn):
    """ScoringBatch -> the primary's part (main output) and the canary's part (CANARY_TAG): a request goes to
    the canary when its `canary_bucket` is under `canary_fraction`, until the control file exists. With
    `shadow`, the whole batch goes to both (the shadow's copy tagged SHADOW_TAG)."""

    STEP = "RouteRequests"

    def __init__(self, pipeline_name, canary_fraction=0.0, shadow=False, control_file=None, poll_seconds=10):
        super().__init__(pipeline_name)
        self._fraction, self._shadow = canary_fraction, shadow
        self._control_file, self._poll_seconds = control_file, poll_seconds

    def setup(self):
        self._control = RollbackControl(self._control_file, self._poll_seconds) if self._control_file else None
        self._to_canary = Metrics.counter(self._pipeline, "routed_to_canary")
        self._to_primary = Metrics.counter(self._pipeline, "routed_to_primary")

    def handle(self, batch):
        if self._shadow:
            yield batch
            yield beam.pvalue.TaggedOutput(SHADOW_TAG, batch)
            return
        rolled_back = self._control is not None and self._control.rolled_back()
        canary = [] if rolled_back else [canary_bucket(r.request_id) < self._fraction for r in batch.requests]
        if not any(canary):
            self._to_primary.inc(len(batch.requests))
            yield batch
            return
        chosen = np.asarray(canary)
        for rows, tag in ((np.flatnonzero(~chosen), None), (np.flatnonzero(chosen), CANARY_TAG)):
            if len(rows):
                (self._to_canary if tag else self._to_primary).inc(len(rows))
                part = _part(batch, rows)
                yield beam.pvalue.TaggedOutput(tag, part) if tag else part

    def dead_letter_payload(self, batch):
        return {"request_ids": [request.request_id for request in batch.requests]}, None


def run_model(requests, handler, labels, top_k, pipeline_name, prefix="", model_updates=None):
    """ScoringBatches -> (lists of prediction rows, [dead-letter PCollections]) through one RunInference;
    `prefix` keeps the step names of a second version apart (the primary's have none)."""
    inference, failed = (
        requests
        | f"{prefix}RunInference" >> RunInference(handler, model_metadata_pcoll=model_updates).with_exception_handling()
    )
    scored = inference | f"{prefix}ToPredictionRows" >> beam.ParDo(
        ToPredictionRows(labels, top_k, pipeline_name)
    ).with_outputs(DEAD_LETTER_TAG, main="rows")
    failures = failed.failed_inferences | f"{prefix}FailedBatches" >> beam.FlatMap(
        failed_batch_dead_letters, pipeline_name
    )
    return scored.rows, [scored[DEAD_LETTER_TAG], failures]


def _epoch(iso):
    return datetime.datetime.fromisoformat(iso).timestamp()


def prediction_events(rows, service):
    """A list of prediction rows -> one timestamped scoring event each: at the request's publish (or read)
    time, its latency the row's, succeeded."""
    for row in rows:
        latency_ms = row["latency_ms"] or 0.0
        received_at = received_seconds(row)
        event = RequestEvent(
            received_at, service, "", ROLLOUT_METHOD, version_path(row["model_version"]), SUCCEEDED, latency_ms, "score"
        )
        yield beam.window.TimestampedValue(event, received_at)


def failure_event(dead_letter, service, version):
    """A dead letter of a version's scoring -> its failed scoring event, at the time its request was received
    (as a prediction's event), its latency the time from then to the failure. A dead letter without that
    time (not one of a scoring failure) is an event at the failure, of latency 0."""
    failed_at = _epoch(dead_letter["failed_at"])
    received = next((a["value"] for a in dead_letter["attributes"] if a["key"] == RECEIVED_AT_KEY), None)
    received_at = failed_at if received is None else _epoch(received)
    latency_ms = max(failed_at - received_at, 0.0) * 1000
    event = RequestEvent(received_at, service, "", ROLLOUT_METHOD, version_path(version), FAILED, latency_ms, "score")
    return beam.window.TimestampedValue(event, received_at)


def prediction_value(row):
    """The number a prediction row adds to its version's distribution: the top label's score of a
    classifier, else the model's one output when it is one finite number; None otherwise."""
    if row["top_k"]:
        value = row["top_k"][0]["score"]
    else:
        outputs = json.loads(row["outputs"])
        value = next(iter(outputs.values())) if len(outputs) == 1 else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def divergence(primary, second):
    """Jensen-Shannon divergence (base 2) of the second version's values against the primary's, binned as
    skew.numeric_skew bins serving values against training: the histogram edges from the primary's min to
    its max, plus one bin below and one above."""
    edges = histogram_edges(min(primary), max(primary))
    reference = {"histogram": histogram(bin_counts(np.asarray(primary, dtype=np.float64), edges), edges)}
    served = bin_counts(np.asarray(second, dtype=np.float64), edges)
    return numeric_skew(reference, {"count": len(second), "missing": 0}, served)["js_divergence"]


def _side_values(rows, side):
    for row in rows:
        value = prediction_value(row)
        if value is not None:
            yield beam.window.TimestampedValue((side, value), received_seconds(row))


def _divergence_event(values, service, threshold, win=beam.DoFn.WindowParam):
    primary = [v for side, v in values if side == 0]
    second = [v for side, v in values if side == 1]
    if primary and second:
        status = SUCCEEDED if divergence(primary, second) <= threshold else FAILED
        at = win.max_timestamp().micros / 1e6  # inside the window, so the SLI rows count it there
        event = beam.window.TimestampedValue(
            RequestEvent(at, service, "", ROLLOUT_METHOD, DIVERGENCE_PATH, status, 0.0, "score"), at
        )
        for _ in second:
            yield event


def divergence_events(config, primary_rows, second_rows, threshold):
    """The divergence events of the two versions' prediction rows (lists of rows): per SLI window with
    predictions of both, one per prediction of the second version, all failed when the divergence is over
    `threshold`; [] unless a journey of the config matches DIVERGENCE_PATH. Predictions later than the
    window's end are left out."""
    if _journey_of_path(config, DIVERGENCE_PATH) == UNMATCHED_JOURNEY:
        return []
    values = (
        primary_rows | "PrimaryPredictionValues" >> beam.FlatMap(_side_values, 0),
        second_rows | "SecondPredictionValues" >> beam.FlatMap(_side_values, 1),
    )
    service = config.services[0].name
    return [
        values
        | "AllPredictionValues" >> beam.Flatten()
        | "DivergenceWindows" >> beam.WindowInto(beam.window.FixedWindows(WINDOW_SECONDS))
        | "DivergenceValues" >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
        | "DivergenceEvents" >> beam.FlatMap(_divergence_event, service, threshold)
        | "DivergenceEventsUnwindowed" >> beam.WindowInto(beam.window.GlobalWindows())  # as the other events
    ]


def _journey_of_path(config, path):
    return JourneyMatcher(config).match(config.services[0].name, ROLLOUT_METHOD, path)[0]


def journey_of(config, version):
    """The journey of the SLI config's one service that a version's events fall in (UNMATCHED_JOURNEY if
    none)."""
    return _journey_of_path(config, version_path(version))


def canary_slos(config, canary_version):
    """Names of the SLOs over an SLI of the canary's journey or of the divergence journey: their FIRING
    alerts roll the canary back."""
    service = config.services[0].name
    journeys = {journey_of(config, canary_version), _journey_of_path(config, DIVERGENCE_PATH)} - {UNMATCHED_JOURNEY}
    prefixes = tuple(f"{service}/{journey}/" for journey in journeys)
    return frozenset(slo.name for slo in config.slos if any(sli.startswith(prefixes) for sli, _ in slo.slis()))


def check_rollout_config(config, versions, flag):
    """Start-up checks of the rollout SLI config against the versions served; raises ValueError naming `flag`."""
    if len(config.services) != 1:
        raise ValueError(f"{flag}: give exactly one service (the scoring job), got {len(config.services)}")
    for version in versions:
        if journey_of(config, version) == UNMATCHED_JOURNEY:
            raise ValueError(
                f"{flag}: no journey of service {config.services[0].name!r} matches model version {version!r}: "
                f"add one with path: {version_path(version)}"
            )


class RollbackMessages(beam.DoFn):
    """Alert transitions -> a rollback message for each FIRING alert of a canary SLO."""

    def __init__(self, slo_names, canary_version, primary_version):
        self._slos, self._canary, self._primary = slo_names, canary_version, primary_version

    def process(self, alert):
        if alert["state"] == "FIRING" and alert["slo"] in self._slos:
            yield {
                "action": "rollback",
                "canary_version": self._canary,
                "primary_version": self._primary,
                "slo": alert["slo"],
                "severity": alert["severity"],
                "at": alert["at"],
                "burn_rate_long": alert["burn_rate_long"],
                "burn_rate_short": alert["burn_rate_short"],
                "threshold": alert["threshold"],
            }


class WriteControlFile(beam.DoFn):
    """A rollback message -> the control file the router reads, written whole (a temporary name, then a
    rename); writing it again changes nothing for the router."""

    def __init__(self, path, pipeline_name):
        self._path, self._pipeline = path, pipeline_name

    def setup(self):
        self._written = Metrics.counter(self._pipeline, "rollbacks")

    def process(self, message):
        temporary = f"{self._path}.{hashlib.sha256(json.dumps(message).encode()).hexdigest()[:12]}.tmp"
        with FileSystems.create(temporary) as f:
            f.write(json.dumps(message).encode())
        if FileSystems.exists(self._path):
            FileSystems.delete([temporary])
        else:
            FileSystems.rename([temporary], [self._path])
        self._written.inc()


def version_events(prefix, rows, dead_letters, service, version):
    """A version's scoring events: one per prediction row (lists of rows), one per dead letter of its
    scoring steps (`version` is the one it started with; a watched primary's rows carry their own)."""
    return [
        rows | f"{prefix}PredictionEvents" >> beam.FlatMap(prediction_events, service),
        dead_letters
        | f"{prefix}ScoringFailures" >> beam.Flatten()
        | f"{prefix}FailureEvents" >> beam.Map(failure_event, service, version),
    ]


class RolloutSlos(beam.PTransform):
    """Scoring events of every version -> (per-version SLI rows, SLO status rows, rollback messages),
    through the SLI pipeline's own aggregation (ComputeSliRows, one-minute windows) and SLO engine
    (ComputeSloStatus). Without SLOs in the config, the last two are None."""

    def __init__(self, config, pipeline_name, allowed_lateness_seconds, canary_version=None, primary_version=None):
        super().__init__()
        self._config, self._pipeline, self._lateness = config, pipeline_name, allowed_lateness_seconds
        self._canary, self._primary = canary_version, primary_version

    def expand(self, events):
        events = events | "AllScoringEvents" >> beam.Flatten()
        rows = events | "RolloutSliRows" >> ComputeSliRows(self._config, self._pipeline, WINDOW_SECONDS, self._lateness)
        if not self._config.slos:
            return rows, None, None
        slos = rows | "RolloutSloStatus" >> ComputeSloStatus(self._config, events.is_bounded, self._pipeline)
        rollbacks = None
        if self._canary is not None:
            rollbacks = slos[ALERTS_TAG] | "RollbackOnAlert" >> beam.ParDo(
                RollbackMessages(canary_slos(self._config, self._canary), self._canary, self._primary)
            )
        return rows, slos.status, rollbacks
