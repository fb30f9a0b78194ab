"""SLOs from per-window SLI rows: one `SloEvaluator` per SLO, its state in Beam state with event-time timers
when streaming, replayed in minute order per SLO when backfilling. Outputs status rows (one per SLO and
evaluated minute) and alert transitions (FIRING/RESOLVED, once each)."""

import datetime

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from transforms.slo.evaluator import EXCLUDED, TOO_OLD, SloEvaluator

ALERTS_TAG = "alerts"

SLO_STATUS_BQ_SCHEMA = {
    "fields": [
        {"name": "slo", "type": "STRING", "mode": "REQUIRED"},
        {"name": "evaluated_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "status", "type": "STRING", "mode": "REQUIRED"},
        {"name": "method", "type": "STRING", "mode": "REQUIRED"},
        {"name": "target", "type": "FLOAT64", "mode": "REQUIRED"},
        {"name": "window", "type": "STRING", "mode": "REQUIRED"},
        {"name": "window_days", "type": "INT64", "mode": "REQUIRED"},
        {"name": "compliance", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "events", "type": "INT64", "mode": "REQUIRED"},
        {"name": "bad_events", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "error_budget", "type": "FLOAT64", "mode": "REQUIRED"},
        {"name": "budget_consumed", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "budget_remaining", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "allowed_bad_events", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "allowed_bad_events_left", "type": "FLOAT64", "mode": "NULLABLE"},
        {
            "name": "burn_rates",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "window_minutes", "type": "INT64", "mode": "REQUIRED"},
                {"name": "burn_rate", "type": "FLOAT64", "mode": "NULLABLE"},
                {"name": "events", "type": "INT64", "mode": "REQUIRED"},
            ],
        },
        {"name": "excluded_minutes", "type": "INT64", "mode": "NULLABLE"},  # NULLABLE: addable to old tables
        {
            "name": "exclusions",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "reason", "type": "STRING", "mode": "REQUIRED"},
                {"name": "minutes", "type": "INT64", "mode": "REQUIRED"},
            ],
        },
        {"name": "alerts_firing", "type": "STRING", "mode": "REPEATED"},
    ]
}


class SliRowsToSloInputs(beam.DoFn):
    """SLI row -> (slo name, (minute, component index, good, total, pane index)) for each SLO using it."""

    def __init__(self, config):
        self._config = config

    def setup(self):
        self._uses = {}
        for slo in self._config.slos:
            for component, (sli_id, _) in enumerate(slo.slis()):
                self._uses.setdefault(sli_id, []).append((slo.name, component))

    def process(self, row):
        start = datetime.datetime.fromisoformat(row["window_start"]).timestamp()
        for slo_name, component in self._uses.get(row["sli_id"], ()):
            yield slo_name, (int(start // 60), component, row["good"], row["total"], row["pane_index"])


class _EvaluatorMixin:
    def __init__(self, config, pipeline_name):
        self._config, self._pipeline = config, pipeline_name

    def setup(self):
        self._slos = {slo.name: slo for slo in self._config.slos}
        self._ignored = Metrics.counter(self._pipeline, "late_updates_beyond_alert_windows")
        self._excluded = Metrics.counter(self._pipeline, "slo_inputs_in_exclusions")

    def _new(self, name):
        slo = self._slos[name]
        return SloEvaluator(slo, self._config.alerting, self._config.exclusions_for(slo))

    def _add(self, evaluator, value):
        outcome = evaluator.add(*value)
        if outcome == EXCLUDED:
            self._excluded.inc()
        elif outcome == TOO_OLD:
            self._ignored.inc()

    @staticmethod
    def _emit(rows, alerts):
        yield from rows
        for alert in alerts:
            yield beam.pvalue.TaggedOutput(ALERTS_TAG, alert)


class EvaluateSlosStreaming(_EvaluatorMixin, beam.DoFn):
    """Keyed by SLO; the evaluator's state (`SloEvaluator.state()`, packed arrays) lives in Beam state; an
    event-time timer evaluates each minute once the watermark has passed it (so every SLI window of that
    minute has arrived), or `delay_seconds` later: rows that come from another job (published after their
    minute, transforms/slo/health.py) get that long to arrive before their minute counts them."""

    EVALUATOR = ReadModifyWriteStateSpec("evaluator_state", BytesCoder())
    NEXT_MINUTE = TimerSpec("next_minute", TimeDomain.WATERMARK)

    def __init__(self, config, pipeline_name, delay_seconds=0):
        super().__init__(config, pipeline_name)
        self._delay = delay_seconds

    def setup(self):
        super().setup()
        self._reset = Metrics.counter(self._pipeline, "slo_states_reset_by_config_changes")

    def _restored(self, name, evaluator_state):
        """The SLO's evaluator with the state kept in Beam state; a fresh one the first time, or when the
        config has changed the state's shape."""
        evaluator, data = self._new(name), evaluator_state.read()
        if data is not None and not evaluator.restore(data):
            self._reset.inc()
        return evaluator

    def process(
        self, element, evaluator_state=beam.DoFn.StateParam(EVALUATOR), timer=beam.DoFn.TimerParam(NEXT_MINUTE)
    ):
        name, value = element
        evaluator = self._restored(name, evaluator_state)
        self._add(evaluator, value)
        pending = evaluator.first_pending_minute()  # None: nothing pending (excluded or too late)
        if pending is not None and (evaluator.now is None or not evaluator.active(evaluator.now)):
            timer.set((pending + 1) * 60 + self._delay)  # a paused SLO resumes with its data
        evaluator_state.write(evaluator.state())

    @on_timer(NEXT_MINUTE)
    def evaluate(
        self,
        key=beam.DoFn.KeyParam,
        fire_time=beam.DoFn.TimestampParam,
        evaluator_state=beam.DoFn.StateParam(EVALUATOR),
        timer=beam.DoFn.TimerParam(NEXT_MINUTE),
    ):
        if key not in self._slos:  # an SLO a job update removed from the config: its state goes too
            self._reset.inc()
            evaluator_state.clear()
            return
        evaluator = self._restored(key, evaluator_state)
        minute = int((fire_time.micros - self._delay * 1_000_000) // 60_000_000) - 1
        rows, alerts = evaluator.advance_to(minute)
        if evaluator.active(evaluator.now):
            timer.set((evaluator.now + 2) * 60 + self._delay)
        else:
            pending = evaluator.first_pending_minute()
            if pending is not None:
                timer.set((pending + 1) * 60 + self._delay)
        evaluator_state.write(evaluator.state())
        yield from self._emit(rows, alerts)


class EvaluateSlosBatch(_EvaluatorMixin, beam.DoFn):
    """Backfill: all SLI rows of one SLO, replayed in minute order through the same evaluator calls the
    streaming DoFn makes (evaluate up to the minute before, then add that minute's rows)."""

    def process(self, element):
        name, values = element
        evaluator = self._new(name)
        by_minute = {}
        for value in values:
            by_minute.setdefault(value[0], []).append(value)
        for minute in sorted(by_minute):
            yield from self._emit(*evaluator.advance_to(minute - 1))
            for value in by_minute[minute]:
                self._add(evaluator, value)
        end = max(by_minute) if by_minute else None
        while end is not None:  # evaluate on until the SLO goes idle, as the streaming timers do
            yield from self._emit(*evaluator.advance_to(end))
            if not evaluator.active(evaluator.now) or evaluator.slo.minutes_without_data == "bad":
                break  # (the rows end where the replayed period does: no later minute is missing)
            end = evaluator.now + 1


class ComputeSloStatus(beam.PTransform):
    """SLI rows -> SLO status rows (main output) and alert transitions (`alerts` output). Streaming,
    `delay_seconds` (EvaluateSlosStreaming) waits that long after each minute before evaluating it."""

    def __init__(self, config, bounded, pipeline_name, delay_seconds=0):
        super().__init__()
        self._config, self._bounded, self._pipeline = config, bounded, pipeline_name
        self._delay = delay_seconds

    def expand(self, sli_rows):
        inputs = (
            sli_rows
            | "ToSloInputs" >> beam.ParDo(SliRowsToSloInputs(self._config))
            | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        )
        if self._bounded:
            evaluated = (
                inputs
                | "GroupBySlo" >> beam.GroupByKey()
                | "EvaluateSlos"
                >> beam.ParDo(EvaluateSlosBatch(self._config, self._pipeline)).with_outputs(ALERTS_TAG, main="status")
            )
        else:
            evaluated = inputs | "EvaluateSlos" >> beam.ParDo(
                EvaluateSlosStreaming(self._config, self._pipeline, self._delay)
            ).with_outputs(ALERTS_TAG, main="status")
        return evaluated


def slo_status_row_key(row):
    """`~slo#<slo name>`: one row per SLO holding its latest status ('~' sorts after every service name,
    which starts with a letter or digit, so SLO rows never interleave with SLI series)."""
    return f"~slo#{row['slo']}"
