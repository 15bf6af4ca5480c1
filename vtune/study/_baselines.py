"""The enqueued baselines: the memory model's guess, vLLM's defaults, the size preset, ``--enqueue``."""

from __future__ import annotations

import math
from typing import Any

import optuna

from vtune._memory import estimate_memory, parameter_count
from vtune._model_shape import ModelShape
from vtune._serve_config import ServeConfig
from vtune._space import apply_values, layout_name
from vtune.study._settings import StudySettings

__all__ = ["baseline_configs", "enqueue_baselines"]


# --------------------------------------------------------------------- baselines
def baseline_configs(
    settings: StudySettings, shape: ModelShape
) -> list[tuple[str, ServeConfig]]:
    """The enqueued baselines: the memory model's guess, vLLM's defaults, the size preset.

    The guess goes first: it is the configuration vtune expects to be best before any
    measurement, so a study stopped early has it, and the early-stopping pruner's bar
    comes from a strong trial. Baselines are never stopped early, so the order does not
    change what the report compares.
    """
    target = settings.target
    # vLLM's defaults take only the user's fixed flags; the other baselines also take the
    # space's fixed dimensions (e.g. eager mode on the CPU engine), as every sampled trial does.
    fixed_dims = {d.name: d.fixed for d in settings.space.dimensions if d.enabled and d.fixed is not None}
    out: list[tuple[str, ServeConfig]] = [("vllm-defaults", settings.base)]
    base = apply_values(settings.base, fixed_dims)
    gpus = max(1, target.num_gpus)
    params_b = parameter_count(shape) / 1e9
    preset = {"max_num_seqs": 512, "max_num_batched_tokens": 8192}
    if target.device == "gpu":
        preset["gpu_memory_utilization"] = 0.95  # type: ignore[assignment]
        if params_b < 7:
            tp = 1
        elif params_b <= 20:
            tp = min(2, gpus)
            preset.update(max_num_seqs=256)
        else:
            tp = gpus
            preset.update(max_num_seqs=128)
        tp = _largest_valid_tp(shape, tp)
        preset["parallel_layout"] = layout_name(tp, 1, gpus // tp)  # type: ignore[assignment]
    out.append(("size-preset", apply_values(base, preset)))
    guess = _memory_guess(settings, shape, base)
    if guess is not None:
        out.insert(0, ("memory-model-guess", guess))
    for i, flags in enumerate(settings.enqueue):
        from vtune._serve_config import parse_serve_args

        out.append((f"enqueued-{i}", parse_serve_args(flags, base=base)))
    return out

def _largest_valid_tp(shape: ModelShape, tp: int) -> int:
    from vtune._memory import check_layout

    while tp > 1 and check_layout(shape, tp, 1) is not None:
        tp -= 1
    return tp

def _memory_guess(settings: StudySettings, shape: ModelShape, base: ServeConfig) -> ServeConfig | None:
    """The memory model's pick of a layout, with max-num-seqs from its KV cache.

    Among the layouts that fit, those whose KV cache holds the workload's
    concurrent streams at its request length (in all replicas) are preferred, and
    of those the one with the most data-parallel replicas: tensor parallelism
    only buys KV room and latency with communication, and once the room is there
    more replicas serve more (measured: DP=2 served 1.7-2.8x the tokens of TP=2 for
    an 8B shape on two H200s; ``validate`` warns about TP on such models). When
    none holds them (or the load has no stream count), the layout whose KV cache
    holds the most requests in all.
    """
    space, target = settings.space, settings.target
    layout_dim = space.get("parallel_layout")
    layouts = (layout_dim.choices or []) if layout_dim and layout_dim.active else [None]
    tokens = 8192 if target.device == "gpu" else 2048
    per_req = max(1, settings.workload.max_model_len_hint)
    streams = settings.workload.load.streams
    seqs_dim = space.get("max_num_seqs")
    hi = int(seqs_dim.high or 1024) if seqs_dim else 1024
    fitting: list[tuple[float, int, ServeConfig]] = []  # (requests held in all replicas, replicas, config)
    for layout in layouts:
        values: dict[str, Any] = {"max_num_batched_tokens": tokens}
        if layout:
            values["parallel_layout"] = layout
        if target.device == "gpu":
            values["gpu_memory_utilization"] = 0.92
        cfg = apply_values(base, values)
        est = estimate_memory(shape, cfg, target.gpu, device=target.device, num_gpus=target.num_gpus or None)
        if not est.fits:
            continue
        conc = est.kv_cache_tokens / per_req  # requests of the workload's length one replica holds
        seqs = 2 ** max(1, int(math.log2(max(2.0, min(conc, hi)))))
        fitting.append((conc * cfg.dp, cfg.dp, apply_values(cfg, {"max_num_seqs": seqs})))
    if not fitting:
        return None
    holding = [f for f in fitting if streams and f[0] >= streams]
    if holding:
        return max(holding, key=lambda f: (f[1], f[0]))[2]
    return max(fitting, key=lambda f: f[0])[2]

def enqueue_baselines(study: optuna.Study, settings: StudySettings, shape: ModelShape) -> int:
    """Enqueues the baselines once per study (a resumed study does not repeat them)."""
    if study.user_attrs.get("baselines_enqueued"):
        return 0
    n = 0
    for name, cfg in baseline_configs(settings, shape):
        values = {"max_num_seqs": cfg.max_num_seqs, "max_num_batched_tokens": cfg.max_num_batched_tokens,
                  "gpu_memory_utilization": cfg.gpu_memory_utilization,
                  "parallel_layout": layout_name(cfg.tp, cfg.pp, cfg.dp)}
        for dim in settings.space.active:
            if dim.name.isupper() and dim.name in cfg.env:
                values[dim.name] = cfg.env[dim.name]
            elif hasattr(cfg, dim.name) and getattr(cfg, dim.name) is not None:
                values[dim.name] = getattr(cfg, dim.name)
        values = {k: v for k, v in values.items() if v is not None}
        # The defaults have no value for many dimensions; use each dimension's middle/first value.
        params = settings.space.project(values)
        for dim in settings.space.active:
            if dim.name not in params:
                params[dim.name] = dim.project(dim.choices[0] if dim.kind == "categorical" and dim.choices
                                               else math.sqrt(float(dim.low or 1) * float(dim.high or 1))
                                               if dim.log else (float(dim.low or 0) + float(dim.high or 0)) / 2)
        study.enqueue_trial(params, user_attrs={"baseline": name, "baseline_config": cfg.to_dict()},
                            skip_if_exists=False)
        n += 1
    study.set_user_attr("baselines_enqueued", n)
    return n
