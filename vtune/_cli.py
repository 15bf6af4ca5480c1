"""Command-line interface: parses arguments and calls the library.

Each sub-command is one function ``_cmd_<name>(args) -> exit code``. Bad input
raises :class:`~vtune._errors.VtuneError`, printed as one line with exit code 2.
The engine flags of ``estimate`` are generated from :class:`~vtune.ServeConfig`'s
fields (:func:`~vtune._serve_config.add_serve_flags`), so each is spelled once.
A study name (``--study``) is checked as a plain name before any command runs.

This module is longer than 500 lines because it is the one table of every command's
flags and help: splitting it would scatter the user interface over several files.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vtune._errors import VtuneError
from vtune._names import check_name

#: The built-in workloads (configs/workloads/), for help texts without importing the workload module.
_BUILTIN_WORKLOADS = "chatbot, rag, multimodal, reasoning, replay, batch, interactive, long-context"

DESCRIPTION = (
    "vtune finds the best vLLM serving configuration for a model, GPUs and workload by measuring it: "
    "an Optuna study launches real `vllm serve` engines and drives them with GuideLLM load."
)


# --------------------------------------------------------------------- helpers
def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    """Flags named exactly as vLLM's engine arguments, one per ServeConfig field (for estimate)."""
    from vtune._serve_config import add_serve_flags

    add_serve_flags(p.add_argument_group("vLLM engine arguments (same names as `vllm serve`)"))


def _add_gpu_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hardware")
    g.add_argument("--gpu", help="GPU model from the catalog (default: the GPU found here, else H100-80GB)")
    g.add_argument("--gpu-memory-gib", type=float, help="total GPU memory in GiB, instead of --gpu")
    g.add_argument("--num-gpus", type=int, help="GPUs available (default: those found here, else 1)")
    g.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="the engine: GPU or vLLM's CPU backend")
    g.add_argument("--cpu-kv-cache-gib", type=float, help="CPU engine KV space (VLLM_CPU_KVCACHE_SPACE)")


def _found_gpu(device: str) -> tuple[Any, int] | None:
    """The GPU model found here and how many, with the memory the study uses (torch's reading).

    Read by :func:`vtune._target.resolve_target`, as a study does, so that estimate and
    the study plan with one number (e.g. 139.80 GiB on an H200, not NVML's 140.40).
    """
    if device != "gpu":
        return None
    try:
        from vtune._target import resolve_target

        target = resolve_target(None)
    except Exception:
        return None
    if target.device != "gpu" or target.gpu is None:
        return None
    return target.gpu, target.num_gpus


def _add_version_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vllm-version", metavar="X.Y.Z",
                   help="plan for this vLLM release's accounting, 0.15 to 0.33 (default: the installed vLLM)")


def _use_vllm_version(args: argparse.Namespace) -> str:
    """Makes ``--vllm-version`` (else the installed vLLM) the release every estimate follows."""
    from vtune._vllm_defaults import use_vllm_version

    return use_vllm_version(getattr(args, "vllm_version", None))


def _resolve_hardware(args: argparse.Namespace) -> tuple[Any, int | None]:
    """The GPU model and count: flags first, then the GPUs found here, then H100-80GB x 1.

    ``--gpu`` naming the model found here takes the found GPU's memory (the
    study's number); ``--gpu-memory-gib`` is used as given.
    """
    from vtune._memory import resolve_gpu

    if args.num_gpus is not None and args.num_gpus < 1:
        raise VtuneError(f"--num-gpus must be >= 1, got {args.num_gpus}")
    if args.gpu_memory_gib is not None:
        return resolve_gpu(args.gpu, args.gpu_memory_gib), args.num_gpus
    named = resolve_gpu(args.gpu) if args.gpu else None
    found = _found_gpu(args.device)
    if found is not None and (named is None or named.name == found[0].name):
        return found[0], args.num_gpus or found[1]
    return (named or resolve_gpu(None)), args.num_gpus


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
    from vtune._serve_config import serve_config_from_args

    if args.check_log:
        return _check_log(args)
    version = _use_vllm_version(args)
    shape = load_model_shape(args.model)
    gpu, num_gpus = _resolve_hardware(args)
    base = serve_config_from_args(args, model=str(args.model))
    if args.tensor_parallel_size is not None or (num_gpus or 1) == 1:
        configs = [base]
    else:
        configs = [
            base.replace(tensor_parallel_size=tp, pipeline_parallel_size=pp, data_parallel_size=dp)
            for tp, pp, dp in valid_layouts(shape, num_gpus or 1)
            if (args.pipeline_parallel_size is None or pp == args.pipeline_parallel_size)
            and (args.data_parallel_size is None or dp == args.data_parallel_size)
        ]
    kw = {"device": args.device, "num_gpus": num_gpus, "cpu_kv_cache_gib": args.cpu_kv_cache_gib,
          "version": version}
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
          + (f" x {num_gpus}" if num_gpus else "") + f", vLLM {best.vllm_version} accounting")
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


def _check_log(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vtune._check_log import check_startup_log, format_log_check
    from vtune._memory import resolve_gpu
    from vtune._model_shape import load_model_shape

    path = Path(args.check_log)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise VtuneError(f"--check-log {path}: cannot read it ({exc.strerror or exc})") from None
    if args.vllm_version:
        _use_vllm_version(args)
    shape = load_model_shape(args.model)
    gpu = resolve_gpu(args.gpu, args.gpu_memory_gib) if (args.gpu or args.gpu_memory_gib) else None
    check = check_startup_log(text, shape, path=str(path), gpu=gpu, version=args.vllm_version)
    if args.json:
        _print_json(check.to_dict())
    else:
        print(format_log_check(check))
    return 0


# -------------------------------------------------------------------- validate
def _cmd_validate(args: argparse.Namespace) -> int:
    from vtune._model_shape import load_model_shape
    from vtune._serve_config import parse_serve_args
    from vtune._validate import validate_config

    flags = list(args.vllm_args)
    if flags and flags[0] == "--":
        flags = flags[1:]
    cfg = parse_serve_args(flags)
    model = args.model or cfg.model
    if not model:
        raise VtuneError("validate needs the model: --model PATH (or the model path first among the vLLM flags)")
    cfg.model = str(model)
    version = _use_vllm_version(args)
    shape = load_model_shape(model)
    gpu, num_gpus = _resolve_hardware(args)
    needed = None
    if args.workload:
        from vtune._workload import load_workload

        needed = load_workload(args.workload, device=args.device).max_model_len_hint  # sized for that engine
    report = validate_config(shape, cfg, gpu, num_gpus=num_gpus, needed_model_len=needed, device=args.device,
                             cpu_kv_cache_gib=args.cpu_kv_cache_gib, argv=flags, vllm_check=not args.no_vllm_check,
                             version=version)
    if args.json:
        _print_json(report.to_dict())
        return report.exit_code
    headline = report.headline()
    if headline is not None:
        print(f"{cfg.to_flags_line()}\n  {headline}")
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


def _capacity_table(records: list[Any], labels: list[str], target_rate_rps: float | None = None) -> str:
    """``bench --objective capacity``: each configuration's capacity side by side."""
    from vtune._serve_config import ServeConfig
    from vtune._trial import capacity_summary

    def p90(pct: Any) -> str:
        return "-" if pct is None or pct.p90 is None or pct.p90 != pct.p90 else f"{pct.p90:.0f}"

    rows = []
    for label, rec in zip(labels, records, strict=True):
        cap = rec.capacity
        row = [label, rec.status if not rec.failure else f"FAILED {rec.failure.kind}"]
        if cap is None:
            row += ["-"] * (8 + (target_rate_rps is not None))
        else:
            row += [str(cap.capacity_streams), f"{cap.requests_per_second:.2f}", f"{cap.output_tokens_per_second:.1f}",
                    p90(cap.ttft_ms), p90(cap.itl_ms), " ".join(f"{q.streams}{'+' if q.slo_met else '-'}"
                                                               for q in cap.probes),
                    cap.bounded_by, f"{cap.wall_s:.0f}"]
            if target_rate_rps is not None:
                summary = capacity_summary(cap, num_gpus=ServeConfig.from_dict(rec.config).num_gpus,
                                           target_rate_rps=target_rate_rps)
                row.append("cannot" if summary["gpus"] is None else f"{summary['gpus']} ({summary['replicas']} x "
                           f"{summary['num_gpus']})")
        rows.append(row)
    header = ["config", "status", "streams", "req/s", "out tok/s", "TTFT p90 ms", "ITL p90 ms", "probes (+ met)",
              "bounded by", "search s"]
    if target_rate_rps is not None:
        header.append(f"GPUs for {target_rate_rps:g} req/s")
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
    from vtune.study._settings import check_target_rate

    if args.duration_s is not None and args.duration_s <= 0:
        raise VtuneError(f"--duration-s must be > 0, got {args.duration_s}")
    if args.objective == "capacity" and args.duration_s is not None and args.duration_s < 1:
        raise VtuneError(f"--duration-s must be at least 1 s with --objective capacity (each probe measures that "
                         f"long), got {args.duration_s:g}")
    rate = check_target_rate(args.target_rate)
    if rate is not None and args.objective != "capacity":
        raise VtuneError("--target-rate needs --objective capacity: the servers for a rate come from the capacity")
    _use_vllm_version(args)  # --vllm-version: the memory model's release for the pre-launch checks
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

        capacity = _bench_capacity(cfg, workload, target) if args.objective == "capacity" else None
        records.append(run_trial(cfg, workload, run_dir, gpus=gpus, duration_s=args.duration_s,
                                 cache_dir=root / "cache", on_phase=phase, capacity=capacity))
    if args.json:
        objs = [record_summary(r, target_rate_rps=rate) for r in records]
        _print_json(objs[0] if len(objs) == 1 else {"configs": objs})
    else:
        print(f"\nworkload {workload.name} on {target.describe()}")
        print(_capacity_table(records, labels, rate) if args.objective == "capacity" else _bench_table(records, labels))
        for label, rec in zip(labels, records, strict=True):
            if rec.failure:
                line = f"  log line: {rec.failure.log_line}" if rec.failure.log_line else ""
                print(f"{label} failed ({rec.failure.kind}): {rec.failure.message}{line}")
        print(f"runs kept under {root}")
    return 2 if any(r.failure for r in records) else 0


def _bench_capacity(cfg: Any, workload: Any, target: Any) -> Any:
    """``bench --objective capacity``'s search, as a study's first trial would run it.

    From the workload's streams (``--concurrency``), within the configuration's batch
    (max-num-seqs x DP, vLLM's default for this hardware when not given; searched up to
    twice that).
    """
    from vtune._trial import CapacityOptions
    from vtune._vllm_defaults import resolve_batch_limits
    from vtune.study._capacity import CPU_TOLERANCE, GPU_TOLERANCE, search_bounds

    device = target.device
    if cfg.max_num_seqs is None and cfg.max_model_len is not None:
        seqs, _ = resolve_batch_limits(None, cfg.max_num_batched_tokens, max_model_len=cfg.max_model_len,
                                       enable_chunked_prefill=cfg.enable_chunked_prefill, device=device,
                                       gpu=target.gpu, world_size=max(1, cfg.tp) * max(1, cfg.pp))
        cfg = cfg.replace(max_num_seqs=seqs)  # only for the bounds: the engine still runs its own default
    start, most = search_bounds(cfg, None, workload.load.streams, None,
                                workload.prompt_tokens.mean + workload.output_tokens.mean)
    return CapacityOptions(start_streams=start, max_streams=most,
                           tolerance=CPU_TOLERANCE if device == "cpu" else GPU_TOLERANCE)


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


def _settings_from_args(args: argparse.Namespace) -> Any:
    from vtune.study._settings import build_settings

    _use_vllm_version(args)  # --vllm-version: the memory model's release for pruning and the space
    if args.n_trials is not None and args.n_trials < 1:
        raise VtuneError(f"--n-trials must be >= 1, got {args.n_trials}")
    return build_settings(
        model=args.model, workload=args.workload, fixed_flags=_split_dashdash(list(args.vllm_args)),
        objectives=args.objectives, gpus=args.gpus, space_file=args.space, concurrency=args.concurrency,
        name=args.study, duration_s=args.duration_s, strict_memory=args.strict_memory,
        remeasure_top_k=args.remeasure, enqueue=args.enqueue, seed=args.seed, studies_dir=args.studies_dir,
        configs_dir=args.configs_dir, target_rate_rps=args.target_rate,
        vllm_version=getattr(args, "vllm_version", None),
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
    print(f"best: {summary.best_text}\n  {summary.best_flags}")
    if summary.best_capacity_streams is not None:
        print(f"  capacity {summary.best_capacity_streams} concurrent streams within the SLOs")
    if summary.target_rate_line:
        print(f"  {summary.target_rate_line}")
    if summary.remeasure_skipped:
        print(f"re-measurement skipped ({summary.remeasure_skipped}): the time left under --timeout would not "
              "cover one more measurement" + (f"; re-measured trial(s) {summary.remeasured}" if summary.remeasured
                                              else ""))
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


def _load_existing(args: argparse.Namespace) -> tuple[Any, str]:
    """The study ``--study`` names in ``--storage`` (or ``studies/<study>.db``) and its storage URL.

    Raises:
        VtuneError: No such database or study.
    """
    from pathlib import Path

    import optuna

    from vtune.study._storage import default_storage, make_storage

    url = args.storage or default_storage(args.study, Path(args.studies_dir))
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise VtuneError(f"--study {args.study}: no study database at {url.removeprefix('sqlite:///')}; "
                         "run `vtune study` first or pass --storage")
    try:
        study = optuna.load_study(study_name=args.study, storage=make_storage(url, heartbeat=False))
    except KeyError:
        raise VtuneError(f"--study {args.study}: no such study in {url}") from None
    return study, url


def _open_existing(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from pathlib import Path

    from vtune.study._settings import load_settings

    study, url = _load_existing(args)
    settings = load_settings(study, studies_dir=Path(args.studies_dir), configs_dir=Path(args.configs_dir))
    return study, settings, url


def _cmd_best(args: argparse.Namespace) -> int:
    from vtune._serve_config import ServeConfig
    from vtune.study._export import best_record, dump_json
    from vtune.study._settings import check_target_rate

    study, settings, _ = _open_existing(args)
    rate = check_target_rate(args.target_rate)
    if rate is not None and not any(o.is_capacity for o in settings.objectives):
        raise VtuneError(f"--target-rate: study {args.study} measured no capacity (objectives "
                         f"{','.join(o.name for o in settings.objectives)}); run a study with --objectives capacity")
    record = best_record(study, settings, args.pick, rate)  # means over the configuration's measurements
    if record is None:
        raise VtuneError(f"--study {args.study}: no finished trial yet")
    cfg = ServeConfig.from_dict(record["config"])
    line = record.get("target_rate_line")
    if args.format == "yaml":
        env = "".join(f"# env: {k}={v}\n" for k, v in sorted(cfg.env.items()))
        print((f"# {line}\n" if line else "") + env + cfg.replace(env={}).to_yaml(), end="")
    elif args.format == "flags":
        print(cfg.to_flags_line())
        if line:  # stdout stays the one flags line
            print(line, file=sys.stderr)
    else:
        print(dump_json(record))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vtune._report import write_report

    _, _, url = _open_existing(args)
    path = write_report(args.study, storage_url=url, studies_dir=Path(args.studies_dir),
                        configs_dir=Path(args.configs_dir))
    print(f"wrote {path}")
    return 0


#: First port ``vtune dashboard`` tries when ``--port`` is not given.
DASHBOARD_PORT = 8080
#: Ports tried from :data:`DASHBOARD_PORT` upwards before giving up.
DASHBOARD_PORT_TRIES = 20


def _port_free(host: str, port: int) -> bool:
    """Whether a server can listen on ``host:port`` now (bound as the dashboard's server binds).

    Raises:
        VtuneError: ``--host`` is not an address of this machine.
    """
    import errno
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise VtuneError(f"--host {host}: unknown host ({exc.strerror}); use 127.0.0.1, 0.0.0.0 or an address "
                         "of this machine") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as wsgiref's server does
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise VtuneError(f"--host {host}: cannot listen there ({exc.strerror}); use 127.0.0.1, 0.0.0.0 or an "
                             "address of this machine") from None
    return True


def _dashboard_port(host: str, port: int | None) -> int:
    """The port to serve on: ``--port`` if free, else (no ``--port``) the next free one from 8080.

    Raises:
        VtuneError: ``--port`` is in use, or no port of the range is free.
    """
    if port is not None:
        if not 1 <= port <= 65535:
            raise VtuneError(f"--port {port}: not a TCP port; give 1-65535")
        if not _port_free(host, port):
            raise VtuneError(f"--port {port}: already in use on {host}; pick another port or drop --port to take "
                             f"the next free one from {DASHBOARD_PORT}")
        return port
    for candidate in range(DASHBOARD_PORT, DASHBOARD_PORT + DASHBOARD_PORT_TRIES):
        if _port_free(host, candidate):
            return candidate
    last = DASHBOARD_PORT + DASHBOARD_PORT_TRIES - 1
    raise VtuneError(f"ports {DASHBOARD_PORT}-{last} are all in use on {host}; free one or pass --port")


def _cmd_dashboard(args: argparse.Namespace) -> int:
    _, url = _load_existing(args)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise VtuneError("optuna-dashboard is not installed: pip install optuna-dashboard (a vtune dependency)") \
            from None
    port = _dashboard_port(args.host, args.port)
    if args.port is None and port != DASHBOARD_PORT:
        print(f"port {DASHBOARD_PORT} is in use; using {port}", flush=True)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"optuna-dashboard on http://{shown}:{port}/ for {url} (Ctrl-C to stop)", flush=True)
    try:
        run_server(url, host=args.host, port=port)
    except OSError as exc:  # taken between the check and the bind
        raise VtuneError(f"optuna-dashboard could not listen on {args.host}:{port} ({exc.strerror or exc}); "
                         "run it again or pass another --port") from None
    return 0


# ---------------------------------------------------------------------- schema
def _cmd_schema(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.kind == "workload":
        from vtune._workload import workload_json_schema

        schema = workload_json_schema()
    else:
        from vtune._space import space_json_schema

        schema = space_json_schema()
    text = json.dumps(schema, indent=2) + "\n"
    if not args.out:
        print(text, end="")
        return 0
    out = Path(args.out)
    if not out.parent.is_dir():
        raise VtuneError(f"--out {args.out}: folder {out.parent} does not exist; create it or write elsewhere")
    if out.is_dir():
        raise VtuneError(f"--out {args.out}: is a folder; give a file name, e.g. {out / (args.kind + '.schema.json')}")
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def _add_study_location(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--study", required=required, help="study name: letters, digits, '-', '_' and '.' (it names "
                   "studies/<study>.db and studies/<study>/)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    p.add_argument("--studies-dir", default="studies", help="where studies live (default: studies)")
    p.add_argument("--configs-dir", default="configs", help="where best configs are exported (default: configs)")

# ---------------------------------------------------------------------- parser
def _inline_compare(argv: list[str], bench: argparse.ArgumentParser) -> list[str]:
    """``bench --compare A B`` as ``--compare=A --compare=B``.

    argparse takes a lone flag-looking value (``--enforce-eager``) for an option
    of its own and rejects it; written ``--compare=VALUE`` it is a value. Every
    token after ``--compare`` up to the next option of ``bench`` or ``--`` is a
    flag set.
    """
    first = next((i for i, tok in enumerate(argv) if not tok.startswith("-")), None)
    if first is None or argv[first] != "bench":
        return argv
    own = set(bench._option_string_actions)
    out = argv[: first + 1]
    i = first + 1
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out += argv[i:]
            break
        if tok != "--compare":
            out.append(tok)
            i += 1
            continue
        i += 1
        sets = []
        while i < len(argv) and argv[i] != "--" and argv[i].partition("=")[0] not in own:
            sets.append(argv[i])
            i += 1
        out += [f"--compare={flags}" for flags in sets] or ["--compare"]
    return out


class _Parser(argparse.ArgumentParser):
    """The top-level parser: reads ``bench --compare`` flag sets that look like flags."""

    bench: argparse.ArgumentParser | None = None

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        if self.bench is not None:
            argv = _inline_compare(argv, self.bench)
        return super().parse_known_args(argv, namespace)


_STOP_CODES = ("130 Ctrl-C (SIGINT), 143 SIGTERM (Slurm's time limit, Kubernetes' pod deletion), 129 SIGHUP: the "
               "running trials' engines are stopped, their trials recorded as failed with failure kind "
               "'interrupted' (not counted in --n-trials), one line is printed; re-run the same command to resume.")
_STOP_EPILOG = ("Exit codes: 0 done; 1 no trial finished with a result yet; 2 bad input (one line, nothing run); "
                + _STOP_CODES)
_WORKER_EPILOG = "Exit codes: 0 done; 2 bad input (one line, nothing run); " + _STOP_CODES


def build_parser() -> argparse.ArgumentParser:
    """Builds the top-level parser with one sub-command per capability."""
    parser = _Parser(prog="vtune", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("estimate", help="predict vLLM's memory accounting (weights, KV cache, concurrency)",
                       description="Predict, per GPU, what vLLM will report at startup for a configuration.")
    p.add_argument("--model", required=True, help="local model directory (or config.json) to read")
    _add_engine_flags(p)
    _add_gpu_flags(p)
    _add_version_flag(p)
    p.add_argument("--check-log", metavar="SERVER_LOG",
                   help="compare the model with a vllm serve log, term by term: its flags, GPU memory and vLLM "
                        "version are read from the log (the engine flags here are ignored)")
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
    _add_version_flag(p)
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then the vllm serve flags")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("bench", help="measure one configuration (or several side by side) on a real engine",
                       description="Launch vllm serve with the given flags, drive it with the workload's GuideLLM "
                                   "load, print throughput, latency percentiles and goodput (or, with --objective "
                                   "capacity, the highest load meeting the SLOs). Exit 2 on failure.")
    p.add_argument("--model", help="local model directory (default on a machine with no GPU: the built-in model)")
    p.add_argument("--workload", default="chatbot", help=f"built-in name ({_BUILTIN_WORKLOADS}), a workload "
                   "YAML, or a JSONL file of prompts")
    p.add_argument("--duration-s", type=float, help="measured seconds of load (default: the workload's)")
    p.add_argument("--gpus", help="GPU indices to use, e.g. 0,1 (default: all found)")
    p.add_argument("--compare", action="append", metavar="FLAGS",
                   help='two or more quoted flag sets measured one after the other, e.g. '
                        '--compare "--enforce-eager" "--max-num-seqs 32" (every value up to the next bench flag or '
                        '-- is a set; --compare=FLAGS repeated works too; flags after -- apply to all)')
    p.add_argument("--config", help="a vllm serve --config YAML (e.g. configs/<study>.yaml) served as is; the .env "
                   "file beside it is applied")
    p.add_argument("--concurrency", type=int, help="concurrent streams of the workload's load (override); with "
                   "--objective capacity, the search's first probe")
    p.add_argument("--objective", choices=("goodput", "capacity"), default="goodput",
                   help="goodput (default): the workload's fixed load; capacity: search the highest load meeting the "
                        "SLOs (probes of --duration-s seconds each)")
    p.add_argument("--target-rate", type=float, metavar="RPS", help="with --objective capacity: how many servers "
                   "(and GPUs) serve this many requests/s within the SLOs")
    p.add_argument("--run-dir", help="folder for logs and reports (default: runs/bench-<time>)")
    _add_version_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then vllm serve flags")
    p.set_defaults(func=_cmd_bench)
    parser.bench = p

    p = sub.add_parser("study", help="tune: a Bayesian search over vLLM flags on real engines (the main job)",
                       description="Sample vLLM flags with Optuna, prune what cannot fit with the memory model, "
                                   "measure the rest on real engines under the workload, export the best config. "
                                   "Re-running the same command resumes the study.",
                       epilog=_STOP_EPILOG)
    p.add_argument("--model", help="local model directory or hub id (default without GPU: the built-in model)")
    p.add_argument("--workload", default="chatbot", help=f"built-in name ({_BUILTIN_WORKLOADS}), or a "
                   "workload YAML / JSONL file")
    _add_study_location(p, required=False)
    p.add_argument("--n-trials", type=int, default=10, help="trials in all, resumed ones included (default 10)")
    p.add_argument("--timeout", help="wall-time budget in all, e.g. 3600, 90m, 2h")
    p.add_argument("--objectives", default=None, help="capacity (default: requests/s at the highest load meeting "
                   "the SLOs, found by a search per trial), capacity_per_gpu, or at the fixed load (--concurrency): "
                   "goodput, throughput, requests, a latency percentile like ttft_p99; two or more comma-separated "
                   "for a Pareto study (latencies then at capacity)")
    p.add_argument("--target-rate", type=float, metavar="RPS", help="requests/s to serve within the SLOs: prefer the "
                   "configuration needing the fewest GPUs for it (replicas x GPUs each; needs a capacity objective)")
    p.add_argument("--space", help="YAML file that fixes, narrows, widens or adds dimensions (see README)")
    p.add_argument("--duration-s", type=float, help="measured load seconds per trial; with a capacity objective, "
                   "per probe (default: the workload's, per step)")
    p.add_argument("--concurrency", type=int, help="concurrent streams of the workload's load (override); with a "
                   "capacity objective, where the first search starts")
    p.add_argument("--gpus", help="GPU indices to use, e.g. 0,1 (default: all found)")
    p.add_argument("--max-concurrent-trials", type=int, default=None,
                   help="trials run at once on disjoint GPUs (or CPU cores); default: as many as fill the node "
                        "(GPUs // the smallest layout's GPUs; on the CPU engine one core per rank), 1 when every "
                        "layout needs the whole node")
    p.add_argument("--strict-memory", action="store_true",
                   help="also prune max-num-seqs far above the KV concurrency the memory model predicts")
    p.add_argument("--remeasure", type=int, default=2, help="best configs re-measured at the end (default 2)")
    p.add_argument("--enqueue", action="append", metavar="FLAGS",
                   help="extra configuration to try, right after the baselines (quoted vLLM flags); repeatable")
    p.add_argument("--seed", type=int, help="sampler seed")
    _add_version_flag(p)
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
    p.add_argument("--target-rate", type=float, metavar="RPS", help="requests/s to serve within the SLOs: the "
                   "configuration needing the fewest GPUs for it (default: the study's --target-rate)")
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("report", help="write a Markdown report with tables and plots for a study")
    _add_study_location(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("dashboard", help="open optuna-dashboard on a study's storage",
                       description="Serve optuna-dashboard for a study. It listens on this machine only "
                                   "(127.0.0.1) unless --host opens it up.")
    _add_study_location(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=None,
                   help=f"port to listen on; fails with one line if it is in use (default: {DASHBOARD_PORT}, or the "
                        f"next free port up to {DASHBOARD_PORT + DASHBOARD_PORT_TRIES - 1}, printed)")
    p.set_defaults(func=_cmd_dashboard)

    p = sub.add_parser("schema", help="print the JSON schema of a workload or search-space file",
                       description="Print (or write with --out) the JSON schema of vtune's workload files "
                                   "(--workload FILE) or search-space files (--space FILE), for editors and "
                                   "validators.")
    p.add_argument("kind", choices=("workload", "space"), help="which file's schema")
    p.add_argument("--out", metavar="FILE", help="write the schema to FILE instead of printing it")
    p.set_defaults(func=_cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if getattr(args, "study", None) is not None:  # it names files: checked before anything is written
            check_name(args.study, "--study")
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
