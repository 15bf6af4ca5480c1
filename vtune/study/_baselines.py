"""The enqueued baselines, and what the sampler learns from them.

The baselines: the memory model's guess, vLLM's defaults, the size preset, ``--enqueue``.

A trial's parameters are what it ran with, baselines included; the sampler learns only from
trials inside the search space:

* Every baseline is a fully specified point: a dimension it leaves unset gets vLLM's own
  default written out (:func:`vllm_default_values`), so its config, flags line and parameters
  all say what ran (on two GPUs vLLM's defaults are recorded as ``tp1-pp1-dp1``, 1024 seqs,
  8192 batched tokens, 0.92, not as a point of the space near them).
* A baseline whose every value is a valid choice of the space is an ordinary trial of the
  space, enqueued with exactly those values: the sampler learns from it.
* A baseline with a value outside the space (a layout the space does not offer, a number
  outside a range, a default vtune does not know) is *off-space*: it runs as a trial whose
  parameters are exactly what ran, with ``off_space = {dimension: why}`` in its user
  attributes, and the sampler never sees it (:class:`InSpaceSampler`). A number outside a
  range is recorded with the range widened; a value outside a categorical dimension's
  choices, and an unknown default, are not recorded as parameters at all (Optuna's storages
  keep one set of choices per parameter), only in the trial's config. It is measured, ranked,
  re-measured, exported and reported like every other trial.

Why not widen the space instead: offering the baselines' values to the sampler would add, for
example, one-GPU layouts on a multi-GPU node (vLLM's default TP=1/DP=1), which the sampler
would then spend launches on and which would change how many trials are packed at once.
Why not project them (as vtune did): the sampler then learned from a point that never ran.
Why keep them from the sampler: TPE converts every earlier value with the current
distribution (a categorical value outside it crashes it), a widened numeric distribution drops
the dimension from its multivariate model, and a missing parameter drops it from the
intersection search space.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vtune._errors import VtuneError
from vtune._memory import estimate_memory, parameter_count
from vtune._model_shape import ModelShape
from vtune._serve_config import ServeConfig
from vtune._space import Dimension, SearchSpace, apply_values, layout_name
from vtune.study._settings import StudySettings

__all__ = [
    "InSpaceSampler", "baseline_configs", "baseline_params", "dimension_value", "enqueue_baselines",
    "in_dimension", "is_off_space", "suggest_baseline", "vllm_default_values",
]


# --------------------------------------------------------------------- baselines
def baseline_configs(
    settings: StudySettings, shape: ModelShape
) -> list[tuple[str, ServeConfig]]:
    """The enqueued baselines: the memory model's guess, vLLM's defaults, the size preset.

    The guess goes first: it is the configuration vtune expects to be best before any
    measurement, so a study stopped early has it, and the early-stopping pruner's bar
    comes from a strong trial. Baselines are never stopped early, so the order does not
    change what the report compares. Every dimension of the space a baseline leaves unset
    has vLLM's default written out (:func:`vllm_default_values`).
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
    return [(name, _with_vllm_defaults(settings, shape, cfg)) for name, cfg in out]

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
    from vtune import _vllm_defaults as vd

    tokens = vd.serve_batch_defaults(target.device, target.gpu)[0] if target.device == "gpu" else 2048
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
            values["gpu_memory_utilization"] = vd.GPU_MEMORY_UTILIZATION
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

# ------------------------------------------------------------- vLLM's defaults
def vllm_default_values(settings: StudySettings, shape: ModelShape, cfg: ServeConfig) -> dict[str, Any]:
    """The values vLLM picks for the dimensions vtune samples when a command line leaves them unset.

    Only what vtune knows (vLLM 0.26-0.32 ``vllm serve``); a dimension missing here has no
    known default. ``parallel_layout`` is never unset (TP = PP = DP = 1 by default).
    """
    # From vtune._vllm_defaults (each value with the vLLM release and source it holds for); the
    # batch limits and memory fraction as the memory model resolves them from the same module.
    from vtune import _vllm_defaults as vd

    gpu = settings.target.device == "gpu"
    out: dict[str, Any] = {"kv_cache_dtype": "auto", "enable_prefix_caching": vd.ENABLE_PREFIX_CACHING,
                           "enable_chunked_prefill": vd.ENABLE_CHUNKED_PREFILL, "enforce_eager": False,
                           "async_scheduling": gpu and vd.ASYNC_SCHEDULING_GPU and cfg.pp == 1}
    try:
        est = estimate_memory(shape, cfg, settings.target.gpu, device=settings.target.device,
                              num_gpus=settings.target.num_gpus or None)
    except VtuneError:
        est = None  # a flag the memory model rejects: vLLM will say so at startup
    if est is not None:
        out.update(max_num_seqs=est.max_num_seqs, max_num_batched_tokens=est.max_num_batched_tokens)
        if gpu:
            out["gpu_memory_utilization"] = est.gpu_memory_utilization
            if not cfg.enforce_eager:
                out["max_cudagraph_capture_size"] = vd.default_max_cudagraph_capture_size(
                    est.max_num_seqs, est.max_num_batched_tokens, gpu=settings.target.gpu)
    dtype = (shape.dtype or "").lower()
    if dtype:
        # vLLM's _resolve_auto_dtype: a float32 checkpoint runs in the platform's first dtype
        # (bfloat16 on x86/aarch64 CPUs and Ampere+ GPUs), others in their own.
        out["dtype"] = "bfloat16" if dtype in ("float32", "float") else dtype
    return out

def _with_vllm_defaults(settings: StudySettings, shape: ModelShape, cfg: ServeConfig) -> ServeConfig:
    """``cfg`` with vLLM's default written out for every sampled dimension it leaves unset."""
    unset = [d for d in settings.space.active if dimension_value(d, cfg) is None]
    if not unset:
        return cfg
    defaults = vllm_default_values(settings, shape, cfg)
    return apply_values(cfg, {d.name: defaults[d.name] for d in unset if defaults.get(d.name) is not None})

# ---------------------------------------------------------- values and the space
def dimension_value(dim: Dimension, cfg: ServeConfig) -> Any:
    """The value a configuration has for a dimension (None: unset, vLLM's default applies)."""
    name = dim.name
    if name == "parallel_layout":
        return layout_name(cfg.tp, cfg.pp, cfg.dp)
    if name.isupper():
        raw = cfg.env.get(name)
        return None if raw is None else _from_text(dim, raw)
    if name.startswith("--"):
        return _extra_arg_value(dim, cfg.extra_args)
    return getattr(cfg, name, None)

def _extra_arg_value(dim: Dimension, args: list[str]) -> Any:
    value: Any = None
    flag, negated = dim.name, "--no-" + dim.name[2:]
    for i, tok in enumerate(args):
        if tok == negated:
            value = False
        elif tok.startswith(flag + "="):
            value = _from_text(dim, tok.split("=", 1)[1])
        elif tok == flag:
            nxt = args[i + 1] if i + 1 < len(args) else None
            value = True if nxt is None or nxt.startswith("--") else _from_text(dim, nxt)
    return value

def _from_text(dim: Dimension, raw: str) -> Any:
    """A flag's or environment variable's text as the dimension's value (``"2"`` -> 2)."""
    if dim.kind == "categorical":
        return next((c for c in dim.choices or [] if str(c) == raw), raw)
    try:
        return int(raw) if dim.kind == "int" else float(raw)
    except ValueError:
        return raw

def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (True is not 1 here)."""
    return isinstance(a, bool) == isinstance(b, bool) and isinstance(a, str) == isinstance(b, str) and a == b

def in_dimension(dim: Dimension, value: Any) -> bool:
    """Whether ``value`` is one the dimension can sample."""
    if value is None:
        return False
    if dim.kind == "categorical":
        return any(_same(c, value) for c in dim.choices or [])
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    lo, hi = float(dim.low or 0), float(dim.high or 0)
    if not lo <= value <= hi:
        return False
    if dim.kind == "int":
        return float(value).is_integer()
    if dim.step:
        k = (value - lo) / dim.step
        return abs(k - round(k)) < 1e-6
    return True

def _widened(dim: Dimension, value: Any) -> Dimension | None:
    """The dimension widened to hold an outside ``value``, to record it as a parameter (None: it cannot be).

    Optuna's storages keep one kind, scale and (categorical) set of choices per parameter of a
    study, so only a number outside a numeric range can be recorded, with the range widened.
    """
    if dim.kind == "categorical" or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if dim.kind == "int" and not float(value).is_integer():
        return None
    lo, hi = min(float(dim.low or 0), float(value)), max(float(dim.high or 0), float(value))
    if dim.log and lo <= 0:
        return None
    wide = dataclasses.replace(dim, low=int(lo) if dim.kind == "int" else lo, high=int(hi) if dim.kind == "int" else hi,
                               fixed=None)
    if dim.kind == "float" and dim.step and not in_dimension(wide, value):
        wide.step = None
    return wide

def baseline_params(space: SearchSpace, cfg: ServeConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """A configuration's parameters in ``space`` and why it is off the space.

    Returns:
        ``(params, off_space)``: the value of every sampled dimension it has and that can be
        recorded (a number outside a range can, with the range widened; a value outside a
        categorical dimension's choices cannot: Optuna keeps one set of choices per parameter),
        and for each dimension whose value is unset or outside the space, why.
    """
    params: dict[str, Any] = {}
    off: dict[str, str] = {}
    for dim in space.active:
        value = dimension_value(dim, cfg)
        if value is None:
            off[dim.name] = "unset: vLLM's default, which vtune does not know (not recorded as a parameter)"
            continue
        if in_dimension(dim, value):
            params[dim.name] = value
            continue
        where = (f"choices {dim.choices}" if dim.kind == "categorical"
                 else f"[{dim.low:g}, {dim.high:g}]" + (f" in steps of {dim.step:g}" if dim.step else ""))
        off[dim.name] = f"{value!r} is outside the space ({where})"
        if _widened(dim, value) is None:
            off[dim.name] += "; not recorded as a parameter (it is in the config)"
        else:
            params[dim.name] = value
    return params, off

def is_off_space(trial: FrozenTrial) -> bool:
    """Whether a trial ran outside the search space (the sampler does not see it)."""
    return bool(trial.user_attrs.get("off_space"))

def enqueue_baselines(study: optuna.Study, settings: StudySettings, shape: ModelShape) -> int:
    """Enqueues the baselines once per study (a resumed study does not repeat them).

    Each is enqueued with exactly its values (:func:`baseline_params`); one off the space
    is marked ``off_space`` and kept from the sampler.
    """
    if study.user_attrs.get("baselines_enqueued"):
        return 0
    n = 0
    for name, cfg in baseline_configs(settings, shape):
        params, off = baseline_params(settings.space, cfg)
        attrs: dict[str, Any] = {"baseline": name, "baseline_config": cfg.to_dict()}
        if off:
            attrs["off_space"] = off
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
        n += 1
    study.set_user_attr("baselines_enqueued", n)
    return n

def suggest_baseline(trial: optuna.Trial, settings: StudySettings) -> ServeConfig:
    """A baseline trial's configuration, with its parameters recorded as exactly what it runs with.

    Values inside the space are recorded with the space's distributions; outside ones
    (an off-space baseline) with the dimension widened to hold them. A baseline
    enqueued by an older vtune with projected values is marked ``off_space`` from here on.
    """
    cfg = ServeConfig.from_dict(trial.user_attrs["baseline_config"]).replace(model=settings.model)
    params, off = baseline_params(settings.space, cfg)
    mismatched: dict[str, str] = {}
    for dim in settings.space.active:
        if dim.name not in params:
            continue
        want = params[dim.name]
        got = (_widened(dim, want) or dim if dim.name in off else dim).suggest(trial)
        if not _same(got, want) and not (isinstance(got, int | float) and isinstance(want, int | float)
                                         and math.isclose(float(got), float(want))):
            mismatched[dim.name] = f"recorded as {got!r} by an older vtune; it ran with {want!r}"
    if mismatched or (off and not trial.user_attrs.get("off_space")):
        trial.set_user_attr("off_space", {**(trial.user_attrs.get("off_space") or {}), **off, **mismatched})
    return cfg

# ------------------------------------------------------------ what the sampler sees
class InSpaceSampler(optuna.samplers.BaseSampler):
    """A sampler that learns only from the trials inside the search space.

    Every call is passed to ``sampler`` with a view of the study without the off-space
    trials (:func:`is_off_space`): their parameters hold values the space does not have,
    which the wrapped sampler could not model (TPE raises on a categorical value outside
    its choices).

    Args:
        sampler: The sampler that does the work (by default TPE with constant liar).
    """

    def __init__(self, sampler: optuna.samplers.BaseSampler) -> None:
        self.sampler = sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.sampler.infer_relative_search_space(_in_space(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self.sampler.sample_relative(_in_space(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self.sampler.sample_independent(_in_space(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(_in_space(study), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self.sampler.after_trial(_in_space(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()

def _in_space(study: optuna.Study) -> optuna.Study:
    return study if isinstance(study, _InSpaceView) else _InSpaceView(study)

class _InSpaceView(optuna.Study):
    """A study as its sampler sees it: the same study without its off-space trials.

    Everything but the trial lists is the wrapped study's (attribute access is passed
    on); ``Study.__init__`` is not called. Samplers read trials through ``get_trials``
    and Optuna's private ``Study._get_trials`` (TPE, the intersection search space), so
    both are filtered: checked against Optuna 5.0.0.
    """

    def __init__(self, study: optuna.Study) -> None:  # noqa: D107 - no Study.__init__: a view
        self.__dict__["_inner"] = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return [t for t in self.__dict__["_inner"].get_trials(deepcopy=deepcopy, states=states)
                if not is_off_space(t)]

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return [t for t in self.__dict__["_inner"]._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
                if not is_off_space(t)]
