"""Measures vtune's own overhead per trial, and what the capacity search costs against the engine start.

Runs a short real study (default: the CPU engine with the built-in model; ``--model`` and
vLLM flags after ``--`` for a GPU), then splits each launched trial's wall time (Optuna's
start to complete).

With a fixed-load objective (``--objectives goodput``):

* engine start: launch to /health 200 (vLLM's own cost);
* measured load: the workload's warmup + measured seconds (the measurement itself);
* load tool: the rest of the load phase: GuideLLM start-up not hidden behind the engine
  start, the gaps between steps (draining, restarting workers), report parsing;
* teardown: stopping the engine group and verifying it (port, orphans, GPU memory);
* vtune: the remainder: sampling, memory model, storage writes, artifacts.

With the default capacity objective, per trial: the probes the search ran (and where it
started and was capped, from what the study knew), their measured and warmup seconds, the
search's wall seconds (``search_s``: probes plus GuideLLM's workers and drains between
them), the engine start, and ``search_s / engine_start_s``: what measuring capacity costs
against the launch every trial pays anyway.

Also times the study loop alone with a fake trial function (no engine, no load) to
isolate sampling + memory model + storage per trial.

Usage::

    python benchmarks/bench_overhead.py [--trials 3] [--duration-s 6] [--objectives capacity] [--out FILE]
    python benchmarks/bench_overhead.py --model /models/Llama-3.1-8B --trials 4 --out /tmp/o.json \
        -- --max-model-len 4096
    python benchmarks/bench_overhead.py --no-fake --from-study studies/S.db S    # a study already run (a GPU's)

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
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]


def real_study(workdir: Path, trials: int, duration_s: float, *, objectives: str = "capacity",
               model: str | None = None, workload: str = "chatbot", flags: list[str] | None = None,
               ) -> list[dict[str, Any]]:
    """Runs the study; one row per launched trial (module docstring)."""
    cmd = [sys.executable, "-m", "vtune", "study", "--study", "overhead", "--n-trials", str(trials),
           "--duration-s", str(duration_s), "--remeasure", "0", "--seed", "3", "--json", "--objectives", objectives,
           "--workload", workload, "--max-concurrent-trials", "1"]
    if model:
        cmd += ["--model", model]
    if flags:
        cmd += ["--", *flags]
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    subprocess.run(cmd, cwd=workdir, check=True, capture_output=True, text=True, env=env)  # this checkout's vtune
    return study_rows(optuna.load_study(study_name="overhead",
                                        storage=f"sqlite:///{workdir / 'studies' / 'overhead.db'}"))


def study_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per launched trial of a finished study (a fixed-load trial's load files must still exist)."""
    rows: list[dict[str, Any]] = []
    for t in study.trials:
        tim = t.user_attrs.get("timings")
        run_dir = t.user_attrs.get("run_dir")
        if not tim or not run_dir or t.datetime_complete is None or t.datetime_start is None:
            continue
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        start, load_s, teardown = tim["engine_start_s"] or 0.0, tim["load_s"] or 0.0, tim["teardown_s"] or 0.0
        cap = t.user_attrs.get("capacity")
        if cap is not None:
            probes = cap["probes"]
            measured = sum(float(p["seconds"]) for p in probes)
            warmup = float(cap["warmup_s"]) * len(probes)
            rows.append({
                "trial": t.number, "state": t.state.name, "baseline": t.user_attrs.get("baseline"),
                "flags": t.user_attrs.get("flags"), "wall_s": wall, "engine_start_s": start,
                "start_streams": cap["start_streams"], "max_streams": cap["max_streams"],
                "probes": len(probes), "probe_trace": " ".join(f"{p['streams']}{'+' if p['slo_met'] else '-'}"
                                                                for p in probes),
                "capacity_streams": cap["capacity_streams"], "bounded_by": cap["bounded_by"],
                "measured_s": measured, "warmup_s": warmup, "search_s": load_s,
                "probe_overhead_s": sum(float(p["wall_s"]) for p in probes) - measured - warmup,
                "search_per_engine_start": load_s / start if start else None, "teardown_s": teardown,
                "vtune_s": wall - start - load_s - teardown,
                "gpu_seconds_saved": t.user_attrs.get("gpu_seconds_saved"),
            })
            continue
        load = json.loads((Path(run_dir) / "load" / "load_result.json").read_text())
        wl = json.loads((Path(run_dir) / "load" / "load_spec.json").read_text())["workload"]
        measured = float(load["result"]["duration_s"]) + float(wl.get("warmup_s", 0))
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
                                      "--configs-dir", str(workdir / "c"), "--remeasure", "0",
                                      "--objectives", "goodput"])  # the fake trial measures a fixed load
    settings = _settings_from_args(args)
    t0 = time.perf_counter()
    run_study(settings, n_trials=trials, quiet=True, trial_fn=fake_trial, export=False)
    return (time.perf_counter() - t0) / trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--duration-s", type=float, default=6.0, help="measured seconds per trial (per probe with a "
                    "capacity objective)")
    ap.add_argument("--objectives", default="capacity", help="the study's objectives (default capacity)")
    ap.add_argument("--model", help="model folder (default: the built-in model on the CPU engine)")
    ap.add_argument("--workload", default="chatbot")
    ap.add_argument("--out", help="also write every row as JSON to this file")
    ap.add_argument("--no-fake", action="store_true", help="skip the fake-trial study loop timing")
    ap.add_argument("--from-study", nargs=2, metavar=("DB", "NAME"), help="read the trials of a study already run "
                    "(e.g. a GPU study's SQLite file and its name) instead of running one")
    ap.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- vLLM flags fixed for every trial")
    args = ap.parse_args()
    flags = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
    out: dict[str, Any] = {"command": " ".join(sys.argv), "objectives": args.objectives}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_fake:
            per = fake_study(Path(tmp), 20)
            out["study_loop_ms_per_trial"] = per * 1e3
            print(f"study loop alone (sampling + memory model + SQLite, fake trials): {per * 1e3:.0f} ms per trial")
        if args.from_study:
            rows = study_rows(optuna.load_study(study_name=args.from_study[1], storage=f"sqlite:///{args.from_study[0]}"))
        else:
            rows = real_study(Path(tmp), args.trials, args.duration_s, objectives=args.objectives, model=args.model,
                              workload=args.workload, flags=flags)
    out["trials"] = rows
    capacity = [r for r in rows if "probes" in r]
    if capacity:
        keys = ["wall_s", "engine_start_s", "probes", "measured_s", "warmup_s", "probe_overhead_s", "search_s",
                "search_per_engine_start", "vtune_s"]
        print("trial " + " ".join(f"{k:>23s}" for k in keys) + "  probes (+ met the SLOs)")
        for r in capacity:
            print(f"{r['trial']:5d} " + " ".join(f"{r[k]:23.2f}" if r[k] is not None else f"{'-':>23s}"
                                                 for k in keys) + f"  {r['probe_trace']}")
        summary = {k: statistics.median(r[k] for r in capacity if r[k] is not None) for k in keys
                   if any(r[k] is not None for r in capacity)}
        out["summary"] = summary
        print("median per trial: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
        print("search_s = the capacity search's wall seconds (probes + GuideLLM between them); "
              "search_per_engine_start = search_s / engine_start_s")
    fixed = [r for r in rows if "probes" not in r]
    if fixed:
        keys = ["wall_s", "engine_start_s", "measured_load_s", "load_tool_s", "teardown_s", "vtune_s", "overhead_s"]
        print("trial " + " ".join(f"{k:>16s}" for k in keys))
        for r in fixed:
            print(f"{r['trial']:5d} " + " ".join(f"{r[k]:16.2f}" for k in keys))
        for k in ("load_tool_s", "teardown_s", "vtune_s", "overhead_s"):
            print(f"median {k}: {statistics.median(r[k] for r in fixed):.2f} s")
        print("overhead_s = wall - engine start - measured load (warmup + steps): load tool + teardown + vtune")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
