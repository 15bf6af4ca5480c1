"""Command-line interface: parses arguments and calls the library.

Each sub-command is one function ``_cmd_<name>(args) -> exit code``. Bad input
raises :class:`~vtune._errors.VtuneError`, printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vtune._errors import VtuneError

DESCRIPTION = (
    "vtune finds the best vLLM serving configuration for a model, GPUs and workload by measuring it: "
    "an Optuna study launches real `vllm serve` engines and drives them with GuideLLM load."
)


# --------------------------------------------------------------------- helpers
def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    """Flags named exactly as vLLM's engine arguments (for estimate)."""
    g = p.add_argument_group("vLLM engine arguments (same names as `vllm serve`)")
    g.add_argument("--tensor-parallel-size", "-tp", type=int, help="GPUs per replica, heads split")
    g.add_argument("--pipeline-parallel-size", "-pp", type=int, help="pipeline stages per replica")
    g.add_argument("--data-parallel-size", "-dp", type=int, help="engine replicas")
    g.add_argument("--max-model-len", type=int, help="longest request in tokens (default: the model's)")
    g.add_argument("--gpu-memory-utilization", type=float, help="fraction of GPU memory vLLM may use (0.92)")
    g.add_argument("--max-num-seqs", type=int, help="sequences per step per replica")
    g.add_argument("--max-num-batched-tokens", type=int, help="tokens per step per replica")
    g.add_argument("--dtype", help="auto, bfloat16, float16, float32")
    g.add_argument("--kv-cache-dtype", help="auto, fp8, fp8_e4m3, fp8_e5m2")
    g.add_argument("--quantization", help="fp8, int8, awq, gptq, mxfp4, ...")
    g.add_argument("--block-size", type=int, help="tokens per KV block (16 on GPUs)")
    g.add_argument("--enforce-eager", action="store_true", default=None, help="no CUDA graphs")
    g.add_argument("--disable-hybrid-kv-cache-manager", action="store_true", default=None,
                   help="charge sliding-window layers as full attention")


def _add_gpu_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hardware")
    g.add_argument("--gpu", help="GPU model from the catalog (default: the GPU found here, else H100-80GB)")
    g.add_argument("--gpu-memory-gib", type=float, help="total GPU memory in GiB, instead of --gpu")
    g.add_argument("--num-gpus", type=int, help="GPUs available (default: those found here, else 1)")
    g.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="the engine: GPU or vLLM's CPU backend")
    g.add_argument("--cpu-kv-cache-gib", type=float, help="CPU engine KV space (VLLM_CPU_KVCACHE_SPACE)")


def _resolve_hardware(args: argparse.Namespace) -> tuple[Any, int | None]:
    """The GPU model and count: flags first, then the GPUs found here, then H100-80GB x 1."""
    from vtune._memory import gpu_for_device, resolve_gpu

    if args.num_gpus is not None and args.num_gpus < 1:
        raise VtuneError(f"--num-gpus must be >= 1, got {args.num_gpus}")
    if args.gpu or args.gpu_memory_gib:
        return resolve_gpu(args.gpu, args.gpu_memory_gib), args.num_gpus
    found = []
    if args.device == "gpu":
        try:
            from vtune._hardware import discover_gpus

            found = discover_gpus()
        except Exception:
            found = []
    if found:
        gpu = gpu_for_device(found[0].name, found[0].total_memory_bytes / (1 << 30))
        return gpu, args.num_gpus or len(found)
    return resolve_gpu(None), args.num_gpus


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _table(rows: list[list[Any]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(x) for x in r]) for r in rows]
    return "\n".join(lines)


# -------------------------------------------------------------------- estimate
def _cmd_estimate(args: argparse.Namespace) -> int:
    from vtune._memory import estimate_memory, valid_layouts
    from vtune._model_shape import load_model_shape
    from vtune._serve_config import ServeConfig

    shape = load_model_shape(args.model)
    gpu, num_gpus = _resolve_hardware(args)
    base = ServeConfig(
        model=str(args.model),
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        data_parallel_size=args.data_parallel_size,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        quantization=args.quantization,
        block_size=args.block_size,
        enforce_eager=args.enforce_eager,
        disable_hybrid_kv_cache_manager=args.disable_hybrid_kv_cache_manager,
    )
    if args.tensor_parallel_size is not None or (num_gpus or 1) == 1:
        configs = [base]
    else:
        configs = [
            base.replace(tensor_parallel_size=tp, pipeline_parallel_size=pp, data_parallel_size=dp)
            for tp, pp, dp in valid_layouts(shape, num_gpus or 1)
            if (args.pipeline_parallel_size is None or pp == args.pipeline_parallel_size)
            and (args.data_parallel_size is None or dp == args.data_parallel_size)
        ]
    kw = {"device": args.device, "num_gpus": num_gpus, "cpu_kv_cache_gib": args.cpu_kv_cache_gib}
    estimates = [estimate_memory(shape, c, gpu, **kw) for c in configs]  # type: ignore[arg-type]
    fitting = [e for e in estimates if e.fits]
    best = max(fitting or estimates, key=lambda e: (e.fits, e.max_concurrency_total, -e.tensor_parallel_size))
    if args.json:
        out = best.to_dict()
        if len(estimates) > 1:
            out["layouts"] = [e.to_dict() for e in estimates]
        _print_json(out)
        return 0
    print(f"model {args.model}: {shape.model_type}, {shape.num_layers} layers, {shape.num_heads} heads "
          f"({shape.num_kv_heads} KV), {args.device} {best.gpu} {best.total_memory_gib:.2f} GiB"
          + (f" x {num_gpus}" if num_gpus else ""))
    header = ["TP", "PP", "DP", "weights", "activation", "non-torch", "cudagraph", "KV GiB", "KV tokens",
              "max conc", "conc x DP", "fits"]
    rows = [[e.tensor_parallel_size, e.pipeline_parallel_size, e.data_parallel_size, f"{e.weights_gib:.2f}",
             f"{e.activation_peak_gib:.2f}", f"{e.non_torch_gib:.2f}", f"{e.cudagraph_gib:.2f}",
             f"{e.kv_cache_gib:.2f}", f"{e.kv_cache_tokens:,}", f"{e.max_concurrency:.2f}x",
             f"{e.max_concurrency_total:.2f}", "yes" if e.fits else "NO"] for e in estimates]
    print(_table(rows, header))
    print(f"(GiB per GPU; concurrency = requests of max-model-len {best.max_model_len} the KV cache holds per "
          f"replica; requested {best.requested_memory_gib:.2f} GiB at utilization {best.gpu_memory_utilization})")
    for e in estimates:
        if not e.fits:
            print(f"  TP{e.tensor_parallel_size} PP{e.pipeline_parallel_size} DP{e.data_parallel_size}: {e.reason}")
    for note in best.notes:
        print(f"note: {note}")
    return 0


# -------------------------------------------------------------------- validate
def _cmd_validate(args: argparse.Namespace) -> int:
    from vtune._model_shape import load_model_shape
    from vtune._serve_config import parse_serve_args
    from vtune._validate import Finding, check_flags_with_vllm, validate_config

    flags = list(args.vllm_args)
    if flags and flags[0] == "--":
        flags = flags[1:]
    cfg = parse_serve_args(flags)
    model = args.model or cfg.model
    if not model:
        raise VtuneError("validate needs the model: --model PATH (or the model path first among the vLLM flags)")
    cfg.model = str(model)
    shape = load_model_shape(model)
    gpu, num_gpus = _resolve_hardware(args)
    needed = None
    if args.workload:
        from vtune._workload import load_workload

        needed = load_workload(args.workload).max_model_len_hint
    report = validate_config(shape, cfg, gpu, num_gpus=num_gpus, needed_model_len=needed, device=args.device)
    if not args.no_vllm_check:
        problem = check_flags_with_vllm([cfg.model, *cfg.to_cli_args(include_model=False)])
        if problem:
            report.errors.insert(0, Finding("invalid_flag", problem))
    if args.json:
        _print_json(report.to_dict())
        return report.exit_code
    e = report.estimate
    if e is not None:
        print(f"{cfg.to_flags_line()}\n  on {e.gpu} ({e.total_memory_gib:.2f} GiB): weights {e.weights_gib:.2f} GiB, "
              f"KV {e.kv_cache_gib:.2f} GiB = {e.kv_cache_tokens:,} tokens, {e.max_concurrency:.2f}x requests of "
              f"{e.max_model_len} tokens per replica")
    for f in report.errors:
        print(f"ERROR   [{f.code}] {f.message}")
    for f in report.warnings:
        print(f"WARNING [{f.code}] {f.message}")
    for r in report.recommendations:
        print(f"try     {r}")
    if report.exit_code == 0:
        print("OK: no problems found")
    return report.exit_code



# ----------------------------------------------------------------------- bench
def _with_concurrency(workload: Any, streams: int | None) -> Any:
    """The workload with ``--concurrency`` streams (GPU-sized load from a CPU-sized profile)."""
    if streams is None:
        return workload
    if streams < 1:
        raise VtuneError(f"--concurrency must be >= 1, got {streams}")
    import dataclasses

    return dataclasses.replace(workload, load=dataclasses.replace(workload.load, streams=streams))


def _split_dashdash(items: list[str]) -> list[str]:
    return items[1:] if items and items[0] == "--" else items


def _bench_table(records: list[Any], labels: list[str]) -> str:
    def pct(p: Any, key: str) -> str:
        v = None if p is None else getattr(p, key)
        return "-" if v is None else f"{v:.0f}"

    rows = []
    for label, rec in zip(labels, records, strict=True):
        r = rec.result
        m = rec.metrics or {}
        kv = m.get("kv_cache_usage_max")
        rows.append([
            label, rec.status if not rec.failure else f"FAILED {rec.failure.kind}",
            f"{r.output_tokens_per_second:.1f}" if r else "-",
            f"{r.requests_per_second:.2f}" if r else "-",
            f"{r.goodput_requests_per_second:.2f}" if r else "-",
            "/".join(pct(r.ttft_ms if r else None, k) for k in ("p50", "p90", "p99")),
            "/".join(pct(r.itl_ms if r else None, k) for k in ("p50", "p90", "p99")),
            "/".join(pct(r.e2e_latency_ms if r else None, k) for k in ("p50", "p99")),
            str(r.errored_requests) if r else "-",
            "-" if kv is None else f"{100 * kv:.0f}%",
            "-" if m.get("num_preemptions_delta") is None else f"{m['num_preemptions_delta']:.0f}",
            "-" if rec.engine_start_s is None else f"{rec.engine_start_s:.0f}",
        ])
    header = ["config", "status", "out tok/s", "req/s", "goodput/s", "TTFT ms p50/90/99", "ITL ms p50/90/99",
              "E2E ms p50/99", "errors", "KV max", "preempt", "start s"]
    return _table(rows, header)


def _config_file_args(path: str) -> tuple[str | None, list[str], dict[str, str]]:
    """A ``vllm serve --config`` file: its model, ``--config PATH``, and the env file beside it."""
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.is_file() or p.suffix not in (".yaml", ".yml"):
        raise VtuneError(f"--config {path}: no such YAML file; pass a vllm serve --config file (configs/<study>.yaml)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise VtuneError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    env: dict[str, str] = {}
    env_file = p.with_suffix(".env")
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, eq, value = line.strip().partition("=")
            if eq and key and not key.startswith("#"):
                env[key] = value
    model = data.get("model") if isinstance(data, dict) else None
    return (str(model) if model else None), ["--config", str(p.resolve())], env


def _cmd_bench(args: argparse.Namespace) -> int:
    import shlex
    import time
    from pathlib import Path

    from vtune._serve_config import parse_serve_args
    from vtune._target import apply_engine_defaults, resolve_model, resolve_target
    from vtune._trial import record_summary, run_trial
    from vtune._workload import load_workload

    if args.duration_s is not None and args.duration_s <= 0:
        raise VtuneError(f"--duration-s must be > 0, got {args.duration_s}")
    workload = _with_concurrency(load_workload(args.workload), args.concurrency)
    target = resolve_target(args.gpus)
    common = _split_dashdash(list(args.vllm_args))
    flag_sets = [shlex.split(f) for f in args.compare] if args.compare else [[]]
    if args.compare is not None and len(flag_sets) < 2:
        raise VtuneError('--compare needs two or more flag sets, e.g. --compare "--max-num-seqs 2" "--max-num-seqs 32"')
    configs = []
    from_file = _config_file_args(args.config) if args.config else None
    for extra in flag_sets:
        cfg = parse_serve_args([*common, *extra])
        if from_file is not None:
            cfg.extra_args = [*from_file[1], *cfg.extra_args]
            cfg.env = {**from_file[2], **cfg.env}
        cfg.model = resolve_model(args.model or cfg.model or (from_file[0] if from_file else None) or None, target)
        configs.append(apply_engine_defaults(cfg, target))
    root = Path(args.run_dir or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    labels = [f"#{i}" for i in range(len(configs))] if len(configs) > 1 else ["#0"]
    gpus = list(target.gpus) if target.device == "gpu" else None
    records = []
    for label, cfg in zip(labels, configs, strict=True):
        run_dir = root if len(configs) == 1 else root / f"config-{label[1:]}"
        if not args.json:
            print(f"{label} {cfg.to_flags_line()}", flush=True)

        def phase(p: str, label: str = label) -> None:
            if not args.json:
                print(f"  {label} {p} ...", flush=True)

        records.append(run_trial(cfg, workload, run_dir, gpus=gpus, duration_s=args.duration_s,
                                 cache_dir=root / "cache", on_phase=phase))
    if args.json:
        objs = [record_summary(r) for r in records]
        _print_json(objs[0] if len(objs) == 1 else {"configs": objs})
    else:
        print(f"\nworkload {workload.name} on {target.describe()}")
        print(_bench_table(records, labels))
        for label, rec in zip(labels, records, strict=True):
            if rec.failure:
                line = f"  log line: {rec.failure.log_line}" if rec.failure.log_line else ""
                print(f"{label} failed ({rec.failure.kind}): {rec.failure.message}{line}")
        print(f"runs kept under {root}")
    return 2 if any(r.failure for r in records) else 0


# ----------------------------------------------------------------------- study
def _parse_duration_s(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:].lower() in units:
            value = float(text[:-1]) * units[text[-1].lower()]
        else:
            value = float(text)
    except ValueError:
        raise VtuneError(f"{flag} {text}: give seconds, or a number with s/m/h (e.g. 90m)") from None
    if value <= 0:
        raise VtuneError(f"{flag} must be > 0, got {text}")
    return value


def _default_study_name(model: str, workload: str) -> str:
    import re
    from pathlib import Path

    stem = Path(model.rstrip("/")).name or "model"
    wl = Path(workload).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{stem}-{wl}").strip("-")


def _settings_from_args(args: argparse.Namespace) -> Any:
    import shlex
    from pathlib import Path

    from vtune._memory import estimate_memory
    from vtune._model_shape import load_model_shape
    from vtune._objectives import parse_objectives
    from vtune._serve_config import parse_serve_args
    from vtune._space import default_space, load_space_file
    from vtune._target import apply_engine_defaults, resolve_model, resolve_target
    from vtune._workload import load_workload
    from vtune.study._settings import StudySettings

    objectives = parse_objectives(args.objectives)
    if args.n_trials is not None and args.n_trials < 1:
        raise VtuneError(f"--n-trials must be >= 1, got {args.n_trials}")
    if args.duration_s is not None and args.duration_s <= 0:
        raise VtuneError(f"--duration-s must be > 0, got {args.duration_s}")
    workload = _with_concurrency(load_workload(args.workload), args.concurrency)
    target = resolve_target(args.gpus)
    fixed = parse_serve_args(_split_dashdash(list(args.vllm_args)))
    model = resolve_model(args.model or fixed.model or None, target)
    fixed.model = model
    if fixed.max_model_len is None:
        # Size the KV cache for the workload, not for the model's maximum context.
        fixed.max_model_len = max(256, -(-workload.max_model_len_hint // 256) * 256)
    user_env = set(fixed.env)
    fixed = apply_engine_defaults(fixed, target)
    shape = load_model_shape(model)

    def weights_fit(tp: int, pp: int) -> bool:
        cfg = fixed.replace(tensor_parallel_size=tp, pipeline_parallel_size=pp, gpu_memory_utilization=0.95)
        est = estimate_memory(shape, cfg, target.gpu, device=target.device)
        return est.fits or "weights" not in (est.reason or "")

    space = default_space(device=target.device, num_gpus=target.num_gpus, shape=shape, weights_fit=weights_fit,
                          cpu_cores=len(target.cpu_cores))
    if args.space:
        space = load_space_file(args.space, space)
    for dim in list(space.dimensions):  # flags fixed after -- are not sampled
        if dim.name != "parallel_layout" and not dim.name.isupper() and getattr(fixed, dim.name, None) is not None:
            dim.fixed = getattr(fixed, dim.name)
        if dim.name.isupper() and dim.name in user_env:
            dim.fixed = fixed.env[dim.name]
    layout = space.get("parallel_layout")
    if layout is not None and any(getattr(fixed, f) is not None for f in (
            "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")):
        layout.enabled = False
    name = args.study or _default_study_name(model, args.workload)
    return StudySettings(
        name=name, model=model, workload=workload, space=space, base=fixed, objectives=objectives, target=target,
        duration_s=args.duration_s, strict_memory=args.strict_memory, remeasure_top_k=args.remeasure,
        enqueue=[shlex.split(e) for e in (args.enqueue or [])], seed=args.seed,
        studies_dir=Path(args.studies_dir), configs_dir=Path(args.configs_dir),
    )


def _cmd_study(args: argparse.Namespace) -> int:
    from vtune.study._export import dump_json
    from vtune.study._study import run_study

    settings = _settings_from_args(args)
    timeout_s = _parse_duration_s(args.timeout, "--timeout")
    if not args.json:
        active = ", ".join(d.name for d in settings.space.active)
        from vtune.study._packing import default_concurrency

        k = args.max_concurrent_trials or default_concurrency(settings)
        print(f"study {settings.name}: {settings.model} on {settings.target.describe()}, workload "
              f"{settings.workload.name}, objectives {','.join(o.name for o in settings.objectives)}\n"
              f"  sampling: {active}\n  fixed: {settings.base.to_flags_line()}\n"
              f"  trials at once: {k}", flush=True)
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        raise VtuneError(f"--max-concurrent-trials must be >= 1, got {args.max_concurrent_trials}")
    summary = run_study(settings, storage_url=args.storage, n_trials=args.n_trials, timeout_s=timeout_s,
                        quiet=args.json, max_concurrent_trials=args.max_concurrent_trials)
    if args.report:
        from vtune._report import write_report

        write_report(settings.name, storage_url=summary.storage, studies_dir=settings.studies_dir,
                     configs_dir=settings.configs_dir)
    if args.json:
        print(dump_json(summary.to_dict()))
        return 0
    print(f"\n{summary.finished_trials} trials finished: {summary.launches} engine launches, "
          f"{summary.pruned_before_launch} pruned before launch by the memory model (launches saved), "
          f"{summary.stopped_early} stopped early ({summary.gpu_seconds_saved:.0f} GPU/core-seconds saved), "
          f"{summary.failed} failed")
    if summary.recovered:
        print(f"resumed: trial(s) {summary.recovered} were left running by a killed process and are marked failed")
    if summary.best_trial is None:
        print("no trial finished with a result yet")
        return 1
    print(f"best: trial {summary.best_trial}: {summary.best_flags}")
    for path in summary.exported:
        print(f"  wrote {path}")
    print(f"storage: {summary.storage}\n  see: vtune report --study {settings.name}; "
          f"vtune dashboard --study {settings.name}")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vtune.study._export import dump_json
    from vtune.study._study import run_worker

    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        raise VtuneError(f"--max-concurrent-trials must be >= 1, got {args.max_concurrent_trials}")
    summary = run_worker(args.study, args.storage, gpus=args.gpus, n_trials=args.n_trials,
                         max_concurrent_trials=args.max_concurrent_trials, studies_dir=Path(args.studies_dir),
                         quiet=args.json)
    if args.json:
        print(dump_json(summary.to_dict()))
        return 0
    print(f"worker done: ran trial(s) {summary.ran_here or 'none'} ({summary.max_concurrent_trials} at once); "
          f"the study has {summary.finished_trials} finished trial(s), {summary.failed} failed")
    if summary.recovered:
        print(f"trial(s) {summary.recovered} left running by a dead process here were marked failed")
    if summary.best_trial is not None:
        print(f"best so far: trial {summary.best_trial}: {summary.best_flags}")
    print(f"the study's `vtune study` process re-measures and exports the best; storage: {summary.storage}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from vtune.study._packing import layout_sizes
    from vtune.study._submit import walltime_hms, worker_job_script

    if args.storage.startswith(("sqlite", "journal:")):
        raise VtuneError(f"--storage {args.storage}: workers on other machines need a storage server they all "
                         "reach, e.g. postgresql://user@host/db (SQLite and journal files are for one machine)")
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        raise VtuneError(f"--max-concurrent-trials must be >= 1, got {args.max_concurrent_trials}")
    _, settings, url = _open_existing(args)
    largest = max(layout_sizes(settings))
    gpu = settings.target.device == "gpu"
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (largest if gpu else 0)
    if gpu and gpus < 1:
        raise VtuneError(f"--gpus-per-worker {gpus}: study {args.study} runs on GPUs; give each worker at least one")
    if not gpu and gpus:
        raise VtuneError(f"--gpus-per-worker {gpus}: study {args.study} runs on vLLM's CPU engine; drop it")
    cpus = args.cpus_per_worker or (max(8, 4 * gpus) if gpu else max(2, largest))
    log_dir = (Path(args.studies_dir) / args.study / "workers").resolve()
    script = Path(args.script or log_dir / f"{args.study}-{args.scheduler}.sh").resolve()
    text = worker_job_script(
        args.scheduler, study=args.study, storage_url=url, workers=args.workers, gpus_per_worker=gpus,
        cpus_per_worker=cpus, walltime=walltime_hms(args.walltime), workdir=str(Path(args.workdir).resolve()),
        python=args.python or sys.executable, log_dir=str(log_dir), queue=args.queue, account=args.account,
        max_concurrent_trials=args.max_concurrent_trials)
    log_dir.mkdir(parents=True, exist_ok=True)
    script.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)  # the storage URL is in it
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(script, 0o700)
    tool = {"slurm": "sbatch", "pbs": "qsub"}[args.scheduler]
    print(f"wrote {script}: {args.workers} worker(s) with {gpus} GPU(s) and {cpus} core(s) each, "
          f"walltime {walltime_hms(args.walltime)}")
    if not args.submit:
        print(f"submit with: {tool} {script}")
        return 0
    if shutil.which(tool) is None:
        raise VtuneError(f"--submit: {tool} is not on PATH here; run `{tool} {script}` on the cluster's login node")
    done = subprocess.run([tool, str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise VtuneError(f"{tool} {script} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    print(done.stdout.strip())
    return 0


def _open_existing(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from pathlib import Path

    import optuna

    from vtune.study._settings import load_settings
    from vtune.study._storage import default_storage, make_storage

    url = args.storage or default_storage(args.study, Path(args.studies_dir))
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise VtuneError(f"--study {args.study}: no study database at {url.removeprefix('sqlite:///')}; "
                         "run `vtune study` first or pass --storage")
    try:
        study = optuna.load_study(study_name=args.study, storage=make_storage(url, heartbeat=False))
    except KeyError:
        raise VtuneError(f"--study {args.study}: no such study in {url}") from None
    settings = load_settings(study, studies_dir=Path(args.studies_dir), configs_dir=Path(args.configs_dir))
    return study, settings, url


def _cmd_best(args: argparse.Namespace) -> int:
    from vtune._serve_config import ServeConfig
    from vtune.study._export import dump_json
    from vtune.study._selection import pick_trial

    study, settings, _ = _open_existing(args)
    trial = pick_trial(study, settings, args.pick)
    if trial is None:
        raise VtuneError(f"--study {args.study}: no finished trial yet")
    cfg = ServeConfig.from_dict(trial.user_attrs["config"])
    if args.format == "yaml":
        env = "".join(f"# env: {k}={v}\n" for k, v in sorted(cfg.env.items()))
        print(env + cfg.replace(env={}).to_yaml(), end="")
    elif args.format == "flags":
        print(cfg.to_flags_line())
    else:
        print(dump_json({"trial": trial.number, "values": trial.values,
                         "objectives": [o.name for o in settings.objectives], "config": cfg.to_dict(),
                         "flags": cfg.to_flags_line(), "env": cfg.env, "result": trial.user_attrs.get("result")}))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vtune._report import write_report

    _, _, url = _open_existing(args)
    path = write_report(args.study, storage_url=url, studies_dir=Path(args.studies_dir),
                        configs_dir=Path(args.configs_dir))
    print(f"wrote {path}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    _, _, url = _open_existing(args)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise VtuneError("optuna-dashboard is not installed: pip install 'vtune[dashboard]'") from None
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ for {url} (Ctrl-C to stop)", flush=True)
    run_server(url, host=args.host, port=args.port)
    return 0


def _add_study_location(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--study", required=required, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    p.add_argument("--studies-dir", default="studies", help="where studies live (default: studies)")
    p.add_argument("--configs-dir", default="configs", help="where best configs are exported (default: configs)")

# ---------------------------------------------------------------------- parser
_STOP_CODES = ("130 Ctrl-C (SIGINT), 143 SIGTERM (Slurm's time limit, Kubernetes' pod deletion), 129 SIGHUP: the "
               "running trials' engines are stopped, their trials recorded as failed with failure kind "
               "'interrupted' (not counted in --n-trials), one line is printed; re-run the same command to resume.")
_STOP_EPILOG = ("Exit codes: 0 done; 1 no trial finished with a result yet; 2 bad input (one line, nothing run); "
                + _STOP_CODES)
_WORKER_EPILOG = "Exit codes: 0 done; 2 bad input (one line, nothing run); " + _STOP_CODES


def build_parser() -> argparse.ArgumentParser:
    """Builds the top-level parser with one sub-command per capability."""
    parser = argparse.ArgumentParser(prog="vtune", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("estimate", help="predict vLLM's memory accounting (weights, KV cache, concurrency)",
                       description="Predict, per GPU, what vLLM will report at startup for a configuration.")
    p.add_argument("--model", required=True, help="local model directory (or config.json) to read")
    _add_engine_flags(p)
    _add_gpu_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_estimate)

    p = sub.add_parser("validate", help="lint a vllm serve command line before spending GPU time",
                       description="Errors for what cannot start, warnings with the numbers behind them. "
                                   "Exit 0 clean, 1 warnings, 2 errors.")
    p.add_argument("--model", help="local model directory (else the first positional vLLM argument)")
    _add_gpu_flags(p)
    p.add_argument("--workload", help="workload name or file, to check max-model-len against its need")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-vllm-check", action="store_true", help="skip parsing the flags with vLLM's own parser")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then the vllm serve flags")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("bench", help="measure one configuration (or several side by side) on a real engine",
                       description="Launch vllm serve with the given flags, drive it with the workload's GuideLLM "
                                   "load, print throughput, latency percentiles and goodput. Exit 2 on failure.")
    p.add_argument("--model", help="local model directory (default on a machine with no GPU: the built-in model)")
    p.add_argument("--workload", default="chatbot", help="built-in name (chatbot, batch, interactive, "
                   "long-context, reasoning), a workload YAML, or a JSONL file of prompts")
    p.add_argument("--duration-s", type=float, help="measured seconds of load (default: the workload's)")
    p.add_argument("--gpus", help="GPU indices to use, e.g. 0,1 (default: all found)")
    p.add_argument("--compare", nargs="+", metavar="FLAGS",
                   help='two or more quoted flag sets measured one after the other, e.g. '
                        '--compare "--max-num-seqs 2" "--max-num-seqs 32" (flags after -- apply to all)')
    p.add_argument("--config", help="a vllm serve --config YAML (e.g. configs/<study>.yaml) served as is; the .env "
                   "file beside it is applied")
    p.add_argument("--concurrency", type=int, help="concurrent streams of the workload's load (override)")
    p.add_argument("--run-dir", help="folder for logs and reports (default: runs/bench-<time>)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then vllm serve flags")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("study", help="tune: a Bayesian search over vLLM flags on real engines (the main job)",
                       description="Sample vLLM flags with Optuna, prune what cannot fit with the memory model, "
                                   "measure the rest on real engines under the workload, export the best config. "
                                   "Re-running the same command resumes the study.",
                       epilog=_STOP_EPILOG)
    p.add_argument("--model", help="local model directory or hub id (default without GPU: the built-in model)")
    p.add_argument("--workload", default="chatbot", help="chatbot, batch, interactive, long-context, reasoning, "
                   "or a workload YAML / JSONL file")
    _add_study_location(p, required=False)
    p.add_argument("--n-trials", type=int, default=10, help="trials in all, resumed ones included (default 10)")
    p.add_argument("--timeout", help="wall-time budget in all, e.g. 3600, 90m, 2h")
    p.add_argument("--objectives", default="goodput", help="goodput (default), throughput, requests, or a latency "
                   "percentile like ttft_p99; two or more comma-separated for a Pareto study")
    p.add_argument("--space", help="YAML file that fixes, narrows, widens or adds dimensions (see README)")
    p.add_argument("--duration-s", type=float, help="measured load seconds per trial (default: the workload's)")
    p.add_argument("--concurrency", type=int, help="concurrent streams of the workload's load (override)")
    p.add_argument("--gpus", help="GPU indices to use, e.g. 0,1 (default: all found)")
    p.add_argument("--max-concurrent-trials", type=int, default=None,
                   help="trials run at once on disjoint GPUs (or CPU cores); default: as many as fill the node "
                        "(GPUs // the smallest layout's GPUs; on the CPU engine one core per rank), 1 when every "
                        "layout needs the whole node")
    p.add_argument("--strict-memory", action="store_true",
                   help="also prune max-num-seqs far above the KV concurrency the memory model predicts")
    p.add_argument("--remeasure", type=int, default=2, help="best configs re-measured at the end (default 2)")
    p.add_argument("--enqueue", action="append", metavar="FLAGS",
                   help="extra configuration to try first (quoted vLLM flags); repeatable")
    p.add_argument("--seed", type=int, help="sampler seed")
    p.add_argument("--report", action="store_true", help="write the report at the end")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no progress lines)")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then vllm serve flags fixed for every trial")
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("worker", help="join a running study from another machine (or more GPUs) and run its trials",
                       description="Rebuild a study from its storage (model, workload, space, objectives, budget) "
                                   "and run its trials on this machine's GPUs (or CPU cores) until its budget is "
                                   "spent. Workers only run trials: the `vtune study` process enqueues baselines, "
                                   "re-measures and exports. Use a PostgreSQL --storage shared by all machines, "
                                   "and one vtune process per machine (each fills its node; on one machine raise "
                                   "--max-concurrent-trials instead).",
                       epilog=_WORKER_EPILOG)
    _add_study_location(p)
    p.add_argument("--gpus", help="GPU indices this worker uses, e.g. 0,1 (default: all found)")
    p.add_argument("--n-trials", type=int, help="most trials this worker runs (default: until the study's budget "
                   "is spent)")
    p.add_argument("--max-concurrent-trials", type=int, default=None,
                   help="trials run at once here on disjoint GPUs (or CPU cores); default: as many as fill the node")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no progress lines)")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("submit", help="write (and submit) a Slurm or PBS job script that starts N workers",
                       description="Write a job-array script whose tasks each run `vtune worker` on one node, "
                                   "joining the study on its shared storage. The study must exist (start it with "
                                   "`vtune study --storage postgresql://...`). Prints the sbatch/qsub command, or "
                                   "runs it with --submit.")
    p.add_argument("--scheduler", required=True, choices=("slurm", "pbs"), help="the cluster's batch system")
    p.add_argument("--workers", type=int, required=True, help="workers (array tasks), one node each")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", required=True, help="the study's shared storage, e.g. postgresql://user@host/db "
                   "(a password in it is written to the script: prefer ~/.pgpass)")
    p.add_argument("--studies-dir", default="studies", help="where the script and the jobs' logs go "
                   "(default: studies)")
    p.add_argument("--configs-dir", default="configs", help=argparse.SUPPRESS)
    p.add_argument("--gpus-per-worker", type=int, help="GPUs per worker (default: the study's largest layout; "
                   "0 on the CPU engine)")
    p.add_argument("--cpus-per-worker", type=int, help="CPU cores per worker (default: 4 per GPU, at least 8)")
    p.add_argument("--walltime", default="4h", help="per job, e.g. 4h, 90m, 12:00:00 (default 4h)")
    p.add_argument("--queue", help="Slurm partition or PBS queue")
    p.add_argument("--account", help="account/project to charge")
    p.add_argument("--max-concurrent-trials", type=int, help="trials at once per worker (default: fill its node)")
    p.add_argument("--workdir", default=".", help="folder the workers run in (default: here)")
    p.add_argument("--python", help="Python with vtune installed on the nodes (default: this one)")
    p.add_argument("--script", help="where to write the script (default: studies/<study>/workers/<study>-<sched>.sh)")
    p.add_argument("--submit", action="store_true", help="also run sbatch/qsub on it")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("best", help="print the best configuration of a study")
    _add_study_location(p)
    p.add_argument("--format", choices=("yaml", "flags", "json"), default="flags")
    p.add_argument("--pick", help="with several objectives: e.g. 'ttft_p99<500' picks the best first objective "
                   "among Pareto trials meeting it")
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("report", help="write a Markdown report with tables and plots for a study")
    _add_study_location(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("dashboard", help="open optuna-dashboard on a study's storage")
    _add_study_location(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_cmd_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except VtuneError as exc:
        print(f"vtune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or a study's StudyInterrupted (SIGINT, SIGTERM, SIGHUP)
        print(f"vtune: {exc}" if str(exc) else "vtune: interrupted", file=sys.stderr, flush=True)
        return int(getattr(exc, "exit_code", 130))
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
        return 0
