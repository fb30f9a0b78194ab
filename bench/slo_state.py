"""Benchmark: the streaming SLO evaluator's Beam state, today's packed layout against the one it replaced
(the whole `SloEvaluator` pickled, as of commit 83fc86a): 1,000 SLOs with a 28-day window and the default
alert rules, each after 28 days of history, then every minute one SLI row per SLO (`process`) and the
event-time timer that evaluates the minute before (`evaluate`).

    python -m bench.slo_state [--slos 1000] [--minutes 3]

`EvaluateSlosStreaming`'s own methods are called directly, with an in-memory stand-in for Beam state that
keeps each SLO's value encoded with the state spec's coder (a read decodes, a write encodes, as a runner's
state does): the CPU measured is the DoFn's, evaluation and state round trips together. The baseline's
DoFn and evaluator are read from git (`git show 83fc86a:transforms/slo/...`, so the benchmark needs the
repository's history) into modules of their own. Each layout runs in its own process; both must give the
same status rows and alerts.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import time
import types
from pathlib import Path

from apache_beam.utils.timestamp import Timestamp

from transforms.sli.config import parse_sli_config

BASELINE = "83fc86a"
ROOT = Path(__file__).resolve().parent.parent
START = 29_000_000 - 29_000_000 % 60  # a minute index on an hour boundary (2025-02-20)
HISTORY = 28 * 24 * 60


def requests(minute):
    """(good, total) of the one SLI row a minute: 1,000 requests, a few of them bad."""
    return 1000 - minute % 7, 1000


def config(n_slos):
    services = [{"name": "svc", "journeys": [{"name": "j", "path": "/j"}]}]
    slos = [
        {"name": f"slo-{i:04d}", "sli": "svc/j/availability", "target": 0.999, "window_days": 28} for i in range(n_slos)
    ]
    return parse_sli_config(json.dumps({"services": services, "slos": slos}), "bench")


def baseline_status():
    """transforms/slo/status.py as of BASELINE, importing evaluator.py as of BASELINE."""
    for name in ("evaluator", "status"):
        path = f"transforms/slo/{name}.py"
        source = subprocess.run(
            ["git", "show", f"{BASELINE}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        module = types.ModuleType(f"transforms.slo.{name}")
        sys.modules[module.__name__] = module  # pickled evaluators name their class by this module
        exec(compile(source, f"{BASELINE}:{path}", "exec"), module.__dict__)
    return module


class State:
    """Beam state stand-in: the value held encoded, as a runner holds it."""

    def __init__(self, coder, encoded):
        self.coder, self.encoded = coder, encoded

    def read(self):
        return self.coder.decode(self.encoded)

    def write(self, value):
        self.encoded = self.coder.encode(value)


class Timer:
    def set(self, timestamp):
        self.timestamp = timestamp


def measure(layout, n_slos, minutes):
    """{cpu_seconds_per_minute, state_bytes (per SLO, at the end), digest of the rows and alerts}."""
    if layout == "baseline":
        status = baseline_status()
    else:
        from transforms.slo import status
    cfg = config(n_slos)
    dofn = status.EvaluateSlosStreaming(cfg, "bench")
    dofn.setup()
    coder = dofn.EVALUATOR.coder
    # one SLO's 28 days of history, built once, copied to every SLO as its state's starting value
    evaluator = status.SloEvaluator(cfg.slos[0], cfg.alerting, [])
    for m in range(START, START + HISTORY):
        evaluator.add(m, 0, *requests(m))
        evaluator.advance_to(m)
    states = {}
    for slo in cfg.slos:
        if layout == "baseline":
            evaluator.slo = slo  # the old state held its SLO's config
            states[slo.name] = State(coder, coder.encode(evaluator))
        else:
            states[slo.name] = State(coder, coder.encode(evaluator.state()))
    outputs, timer = [], Timer()
    cpu = time.process_time()
    for m in range(START + HISTORY, START + HISTORY + minutes):
        for name, state in states.items():
            dofn.process((name, (m, 0, *requests(m), 0)), evaluator_state=state, timer=timer)
            fire = Timestamp(seconds=(m + 1) * 60)
            outputs += dofn.evaluate(key=name, fire_time=fire, evaluator_state=state, timer=timer)
    cpu = time.process_time() - cpu
    assert len(outputs) == n_slos * minutes  # one status row per SLO and minute, no alert transition
    text = "\n".join(json.dumps(getattr(o, "value", o), sort_keys=True) for o in outputs)
    return {
        "cpu_seconds_per_minute": cpu / minutes,
        "state_bytes": sum(len(s.encoded) for s in states.values()) / n_slos,
        "digest": hashlib.sha256(text.encode()).hexdigest(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slos", type=int, default=1000, help="SLOs, each its own key. Default: 1000.")
    parser.add_argument("--minutes", type=int, default=3, help="Evaluated minutes measured. Default: 3.")
    parser.add_argument("--layout", choices=["baseline", "packed"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.layout:
        return print(json.dumps(measure(args.layout, args.slos, args.minutes)))

    results = {}
    for layout in ("baseline", "packed"):
        command = [sys.executable, "-m", "bench.slo_state", "--layout", layout]
        command += ["--slos", str(args.slos), "--minutes", str(args.minutes)]
        out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        results[layout] = json.loads(out.splitlines()[-1])
    print(f"{args.slos:,} SLOs, 28-day window, default rules, 28 days of history; {args.minutes} minutes measured")
    print(f"{'state layout':<38} {'CPU s/minute':>12} {'of one core':>12} {'state bytes/SLO':>16}")
    names = {"baseline": f"evaluator pickled ({BASELINE}, baseline)", "packed": "packed arrays (BytesCoder)"}
    for layout, r in results.items():
        cpu = r["cpu_seconds_per_minute"]
        print(f"{names[layout]:<38} {cpu:>12.3f} {cpu / 60:>12.2%} {r['state_bytes']:>16,.0f}")
    base, packed = results["baseline"], results["packed"]
    same = "identical" if base["digest"] == packed["digest"] else "DIFFERENT"
    print(
        f"ratio baseline/packed: CPU {base['cpu_seconds_per_minute'] / packed['cpu_seconds_per_minute']:.1f}x, "
        f"state size {base['state_bytes'] / packed['state_bytes']:.1f}x; status rows: {same}"
    )
    if same != "identical":
        sys.exit("the two layouts' status rows differ")


if __name__ == "__main__":
    main()
