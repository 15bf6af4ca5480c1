"""Packing benchmark: the same CPU-engine trials one at a time, then two at once on disjoint cores.

Runs a small set of real trials (``vllm serve`` on the CPU engine with the built-in
model, GuideLLM load) twice, the way a study runs them:

* one at a time: each trial has the whole machine (no pinning), as
  ``vtune study --max-concurrent-trials 1`` does;
* packed: trials run in threads that lease cores from a
  :class:`vtune.study._packing.ResourcePool` (one core per engine rank), as the
  default ``vtune study`` does on the CPU engine, two at once here.

It prints both wall times, the speed-up, and per trial the engine start, load and
total seconds and the measured output tokens/s (a trial on one core measures
less than one with the whole machine: packing trades per-trial resources for
more trials per hour, and every trial of a packed study has the same share).
The 1-minute load average before and after is printed too: other processes on
the machine slow both runs down.

Usage::

    python benchmarks/bench_packing.py [--trials 4] [--at-once 2] [--duration-s 6] [--json PATH]

It takes several minutes on 2 cores (engine starts dominate).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vtune._hardware import cpu_cores
from vtune._serve_config import ServeConfig
from vtune._target import Target, apply_engine_defaults
from vtune._tiny_model import build_tiny_model
from vtune._trial import TrialRecord, run_trial
from vtune._workload import load_workload
from vtune.study._packing import ResourcePool

SEQS = [4, 8, 16, 32, 64, 128]


def configs(n: int) -> list[ServeConfig]:
    model = str(build_tiny_model())
    target = Target(device="cpu", cpu_cores=tuple(cpu_cores()))
    out = []
    for i in range(n):
        cfg = ServeConfig(model=model, max_model_len=512, max_num_seqs=SEQS[i % len(SEQS)],
                          max_num_batched_tokens=512, dtype="float32", enforce_eager=True)
        out.append(apply_engine_defaults(cfg, target))
    return out


def run_mode(name: str, cfgs: list[ServeConfig], root: Path, duration_s: float, at_once: int) -> dict[str, Any]:
    wl = load_workload("chatbot")
    cache = root / "cache"
    pool = ResourcePool(Target(device="cpu", cpu_cores=tuple(cpu_cores()))) if at_once > 1 else None

    def one(i: int, cfg: ServeConfig) -> tuple[TrialRecord, float, float]:
        run_dir = root / name / str(i)
        if pool is None:
            t0 = time.monotonic()
            return run_trial(cfg, wl, run_dir, duration_s=duration_s, cache_dir=cache), t0, time.monotonic()
        with pool.lease(cfg.num_gpus) as cores:
            t0 = time.monotonic()
            rec = run_trial(cfg, wl, run_dir, cpu_cores=cores, duration_s=duration_s, cache_dir=cache)
            return rec, t0, time.monotonic()

    load_before = os.getloadavg()[0]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=at_once) as ex:
        done = list(ex.map(lambda ic: one(*ic), enumerate(cfgs)))
    wall = time.monotonic() - start
    trials = []
    for rec, t0, t1 in done:
        r = rec.result
        trials.append({
            "flags": rec.flags_line, "status": rec.status if not rec.failure else f"failed {rec.failure.kind}",
            "cpu_cores": rec.cpu_cores, "start_s": round(t0 - start, 1), "end_s": round(t1 - start, 1),
            "engine_start_s": rec.engine_start_s, "load_s": rec.load_s, "total_s": rec.total_s,
            "output_tokens_per_second": r.output_tokens_per_second if r else None,
        })
    return {"mode": name, "at_once": at_once, "wall_s": wall, "load_avg_before": load_before,
            "load_avg_after": os.getloadavg()[0], "trials": trials}


def show(res: dict[str, Any]) -> None:
    print(f"\n{res['mode']}: {len(res['trials'])} trials, {res['at_once']} at once: wall {res['wall_s']:.1f} s "
          f"(1-min load average {res['load_avg_before']:.2f} -> {res['load_avg_after']:.2f})")
    print(f"  {'cores':>6} {'from s':>7} {'to s':>7} {'start s':>8} {'load s':>7} {'total s':>8} {'out tok/s':>10}  "
          "status  flags")
    for t in res["trials"]:
        cores = ",".join(str(c) for c in t["cpu_cores"]) if t["cpu_cores"] else "all"
        tok = t["output_tokens_per_second"]
        print(f"  {cores:>6} {t['start_s']:>7.1f} {t['end_s']:>7.1f} {t['engine_start_s'] or 0:>8.1f} "
              f"{t['load_s'] or 0:>7.1f} {t['total_s']:>8.1f} {'-' if tok is None else f'{tok:.1f}':>10}  "
              f"{t['status']}  {' '.join(t['flags'].split(' serve ', 1)[-1].split()[1:])[:70]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4, help="trials in the set (default 4)")
    p.add_argument("--at-once", type=int, default=2, help="trials at once when packed (default 2)")
    p.add_argument("--duration-s", type=float, default=6.0, help="measured load seconds per trial (default 6)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    if len(cpu_cores()) < args.at_once:
        raise SystemExit(f"--at-once {args.at_once} needs that many CPU cores; this process may use {cpu_cores()}")
    cfgs = configs(args.trials)
    with tempfile.TemporaryDirectory(prefix="vtune-bench-packing-") as tmp:
        root = Path(tmp)
        # Warm the compile/tokenizer caches once so neither mode pays the first start alone.
        run_trial(cfgs[0], load_workload("chatbot"), root / "warmup", duration_s=3, cache_dir=root / "cache")
        one = run_mode("one at a time", cfgs, root, args.duration_s, 1)
        packed = run_mode("packed", cfgs, root, args.duration_s, args.at_once)
    show(one)
    show(packed)
    print(f"\nwall time: one at a time {one['wall_s']:.1f} s, packed ({args.at_once} at once) "
          f"{packed['wall_s']:.1f} s: {one['wall_s'] / packed['wall_s']:.2f}x as many trials per hour")
    if args.json:
        Path(args.json).write_text(json.dumps({"one_at_a_time": one, "packed": packed}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
