"""Measures vtune's own overhead per trial: everything but engine start-up and measured load.

Runs a short real study on the CPU engine (built-in model), then splits each launched
trial's wall time (Optuna's start to complete) into:

* engine start: launch to /health 200 (vLLM's own cost);
* measured load: the workload's warmup + measured seconds (the measurement itself);
* load tool: the rest of the load phase: GuideLLM start-up not hidden behind the engine
  start, the gaps between steps (draining, restarting workers), report parsing;
* teardown: stopping the engine group and verifying it (port, orphans, GPU memory);
* vtune: the remainder: sampling, memory model, storage writes, artifacts.

Also times the study loop alone with a fake trial function (no engine, no load) to
isolate sampling + memory model + storage per trial.

Usage: python benchmarks/bench_overhead.py [--trials 3] [--duration-s 6]
Target (issue 4): vtune's own overhead under 3 s per trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna


def real_study(workdir: Path, trials: int, duration_s: float) -> list[dict[str, float]]:
    cmd = [sys.executable, "-m", "vtune", "study", "--study", "overhead", "--n-trials", str(trials),
           "--duration-s", str(duration_s), "--remeasure", "0", "--seed", "3", "--json"]
    subprocess.run(cmd, cwd=workdir, check=True, capture_output=True, text=True)
    study = optuna.load_study(study_name="overhead", storage=f"sqlite:///{workdir / 'studies' / 'overhead.db'}")
    rows = []
    for t in study.trials:
        tim = t.user_attrs.get("timings")
        run_dir = t.user_attrs.get("run_dir")
        if not tim or not run_dir or t.datetime_complete is None or t.datetime_start is None:
            continue
        load = json.loads((Path(run_dir) / "load" / "load_result.json").read_text())
        wl = json.loads((Path(run_dir) / "load" / "load_spec.json").read_text())["workload"]
        measured = float(load["result"]["duration_s"]) + float(wl.get("warmup_s", 0))
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        start, load_s, teardown = tim["engine_start_s"], tim["load_s"], tim["teardown_s"]
        rows.append({
            "trial": t.number, "wall_s": wall, "engine_start_s": start, "measured_load_s": measured,
            "load_tool_s": load_s - measured, "teardown_s": teardown,
            "vtune_s": wall - start - load_s - teardown,
            "overhead_s": wall - start - measured,
        })
    return rows


def fake_study(workdir: Path, trials: int) -> float:
    """Seconds per trial of the study loop itself (no engine, no load)."""
    from vtune._cli import _settings_from_args, build_parser
    from vtune._trial import TrialRecord
    from vtune.engines import StartupNumbers
    from vtune.loads._results import Percentiles, TrialResult
    from vtune.study._study import run_study

    def fake_trial(cfg, workload, run_dir, **kw):
        p = Percentiles(p50=10.0, p90=20.0, p99=30.0, mean=12.0)
        res = TrialResult(output_tokens_per_second=100.0 + (cfg.max_num_seqs or 0), requests_per_second=2.0,
                          goodput_requests_per_second=1.5, ttft_ms=p, itl_ms=p, tpot_ms=p, e2e_latency_ms=p,
                          successful_requests=10, errored_requests=0, incomplete_requests=0, duration_s=5.0,
                          slo_attainment=1.0, slo_met={}, slo_observed_ms={"ttft_ms": 20.0, "itl_ms": 20.0})
        return TrialRecord(config=cfg.to_dict(), flags_line=cfg.to_flags_line(), status="ok",
                           startup=StartupNumbers(), result=res, run_dir=str(run_dir), engine_start_s=0.0,
                           load_s=0.0, teardown_s=0.0)

    args = build_parser().parse_args(["study", "--study", "fake", "--studies-dir", str(workdir / "s"),
                                      "--configs-dir", str(workdir / "c"), "--remeasure", "0"])
    settings = _settings_from_args(args)
    t0 = time.perf_counter()
    run_study(settings, n_trials=trials, quiet=True, trial_fn=fake_trial, export=False)
    return (time.perf_counter() - t0) / trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--duration-s", type=float, default=6.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        per = fake_study(Path(tmp), 20)
        print(f"study loop alone (sampling + memory model + SQLite, fake trials): {per * 1e3:.0f} ms per trial")
        rows = real_study(Path(tmp), args.trials, args.duration_s)
    keys = ["wall_s", "engine_start_s", "measured_load_s", "load_tool_s", "teardown_s", "vtune_s", "overhead_s"]
    print("trial " + " ".join(f"{k:>16s}" for k in keys))
    for r in rows:
        print(f"{r['trial']:5d} " + " ".join(f"{r[k]:16.2f}" for k in keys))
    for k in ("load_tool_s", "teardown_s", "vtune_s", "overhead_s"):
        print(f"median {k}: {statistics.median(r[k] for r in rows):.2f} s")
    print("overhead_s = wall - engine start - measured load (warmup + steps): load tool + teardown + vtune")


if __name__ == "__main__":
    main()
