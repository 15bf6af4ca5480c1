"""Study settings: everything that defines a study, stored with it so that workers can join.

:func:`build_settings` makes them from what a user gives (the same inputs as ``vtune study``'s
flags): it sizes max-model-len for the workload, asks the memory model which layouts hold the
weights, builds the default search space over this hardware, applies a space file and keeps
fixed flags out of the sampling. :func:`load_settings` rebuilds them from a study's storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from vtune._errors import VtuneError
from vtune._objectives import Objective
from vtune._serve_config import ServeConfig
from vtune._space import SearchSpace
from vtune._target import Target
from vtune._workload import Workload

__all__ = ["ATTR", "SCHEMA_VERSION", "StudySettings", "build_settings", "check_target_rate", "default_study_name",
           "load_settings"]


SCHEMA_VERSION = 1

ATTR = "vtune"  # study user attribute holding the settings

@dataclass
class StudySettings:
    """Everything that defines a study (stored with it, so workers can join).

    Attributes:
        name: Study name (file names under ``studies/`` and ``configs/``).
        model: Model folder (or hub id) served by every trial.
        workload: The workload (load shape and SLOs).
        space: The search space.
        base: Fixed flags applied to every trial (``-- <flags>``).
        objectives: What to optimize.
        target: The hardware.
        duration_s: Measured load seconds per trial (None: the workload's).
        strict_memory: Also prune max-num-seqs far above the predicted KV concurrency.
        remeasure_top_k: Best configs re-measured at the end.
        enqueue: Extra configurations (flag lists) enqueued at the start.
        seed: Sampler seed.
        studies_dir: Folder of the study's artifacts.
        configs_dir: Folder the best config is exported to.
        target_rate_rps: Requests/s to serve within the SLOs (``--target-rate``): the
            study prefers the configuration needing the fewest GPUs for it (kept as the
            study user attribute ``target_rate_rps``); None: none.
        vllm_version: The vLLM release the memory model follows (``--vllm-version``); None:
            the installed one. Stored, so that workers, ``best`` and ``report`` follow it too.
    """

    name: str
    model: str
    workload: Workload
    space: SearchSpace
    base: ServeConfig
    objectives: list[Objective]
    target: Target
    duration_s: float | None = None
    strict_memory: bool = False
    remeasure_top_k: int = 2
    enqueue: list[list[str]] = field(default_factory=list)
    seed: int | None = None
    studies_dir: Path = Path("studies")
    configs_dir: Path = Path("configs")
    target_rate_rps: float | None = None
    vllm_version: str | None = None

    @property
    def study_dir(self) -> Path:
        """``studies/<name>/``."""
        return self.studies_dir / self.name

    def to_attr(self) -> dict[str, Any]:
        """The study user attribute."""
        return {
            "schema_version": SCHEMA_VERSION,
            "description": "vtune study settings; fields: vtune.study.StudySettings",
            "model": self.model,
            "workload": self.workload.to_dict(),
            "workload_source": self.workload.source,
            "space": self.space.to_dict(),
            "base": self.base.to_dict(),
            "objectives": [o.name for o in self.objectives],
            "target": self.target.to_dict(),
            "duration_s": self.duration_s,
            "strict_memory": self.strict_memory,
            "remeasure_top_k": self.remeasure_top_k,
            "vllm_version": self.vllm_version,
        }

def load_settings(study: optuna.Study, *, studies_dir: Path, configs_dir: Path) -> StudySettings:
    """Rebuilds a study's settings from its storage (for workers, best, report).

    Raises:
        VtuneError: The study was not created by vtune.
    """
    from vtune._hardware import cpu_cores
    from vtune._memory import Gpu
    from vtune._objectives import parse_objectives

    data = study.user_attrs.get(ATTR)
    if not data:
        raise VtuneError(f"study {study.study_name!r} has no vtune settings; it was not created by `vtune study`")
    if data.get("vllm_version"):  # the study's --vllm-version: this process's estimates follow it too
        from vtune._vllm_defaults import use_vllm_version

        use_vllm_version(data["vllm_version"])
    wl = Workload.from_dict(data["workload"], source=data.get("workload_source", "<study>"))
    t = data["target"]
    gpu = Gpu(t["gpu"], t["gpu_memory_gib"]) if t.get("gpu") else None
    target = Target(device=t["device"], gpus=tuple(t.get("gpus") or ()), gpu=gpu,
                    gpu_names=tuple(t.get("gpu_names") or ()), nvlink=t.get("nvlink"),
                    cpu_cores=tuple(cpu_cores()))
    return StudySettings(
        name=study.study_name, model=data["model"], workload=wl, space=SearchSpace.from_dict(data["space"]),
        base=ServeConfig.from_dict(data["base"]), objectives=parse_objectives(",".join(data["objectives"])),
        target=target, duration_s=data.get("duration_s"), strict_memory=bool(data.get("strict_memory")),
        remeasure_top_k=int(data.get("remeasure_top_k", 2)), studies_dir=studies_dir, configs_dir=configs_dir,
        target_rate_rps=_stored_rate(study.user_attrs.get("target_rate_rps")),
        vllm_version=data.get("vllm_version"),
    )

def _stored_rate(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

def check_target_rate(rate_rps: float | None, flag: str = "--target-rate") -> float | None:
    """``rate_rps`` if it is a finite number of requests/s above 0 (None passes).

    Raises:
        VtuneError: It is not.
    """
    import math

    if rate_rps is None:
        return None
    if isinstance(rate_rps, bool) or not isinstance(rate_rps, int | float) or not math.isfinite(rate_rps) \
            or rate_rps <= 0:
        raise VtuneError(f"{flag} must be a number of requests/s above 0, got {rate_rps!r}; e.g. {flag} 100")
    return float(rate_rps)

def default_study_name(model: str, workload: str) -> str:
    """``<model folder>-<workload>``, made a plain name (:func:`vtune._names.clean_name`)."""
    from vtune._names import clean_name

    stem = Path(model.rstrip("/")).name or "model"
    wl = Path(workload).stem
    return clean_name(f"{stem}-{wl}")


def build_settings(
    *,
    model: str | None = None,
    workload: str | Workload = "chatbot",
    fixed_flags: Sequence[str] | None = None,
    objectives: str | Sequence[Objective] | None = None,
    gpus: str | None = None,
    space_file: str | Path | None = None,
    concurrency: int | None = None,
    name: str | None = None,
    duration_s: float | None = None,
    strict_memory: bool = False,
    remeasure_top_k: int = 2,
    enqueue: Sequence[str | Sequence[str]] | None = None,
    seed: int | None = None,
    studies_dir: str | Path = Path("studies"),
    configs_dir: str | Path = Path("configs"),
    target: Target | None = None,
    target_rate_rps: float | None = None,
    vllm_version: str | None = None,
) -> StudySettings:
    """The settings of a study, as ``vtune study`` makes them from its flags.

    * the hardware: ``target``, else the GPUs found here (``gpus`` picks some), else vLLM's CPU engine;
    * the model: ``model``, else a model among ``fixed_flags``, else (CPU engine) the built-in one;
    * ``--max-model-len`` (unless fixed) is the workload's longest request rounded up to 256,
      so the KV cache is sized for the workload, not for the model's longest context;
    * vtune's engine defaults (the CPU engine's KV cache space) unless given;
    * the search space: the parallel layouts whose weights fit (memory model), batch limits and
      memory on this hardware, then ``space_file``; a dimension fixed by ``fixed_flags`` is not
      sampled (the layout is not when TP, PP or DP is fixed).

    Args:
        model: Model folder or hub id (``--model``).
        workload: A built-in name, a YAML or JSONL file, or a :class:`Workload` (``--workload``).
        fixed_flags: ``vllm serve`` flags fixed for every trial (what follows ``--``).
        objectives: ``capacity`` (default), ``capacity_per_gpu``, ``goodput``, ``throughput``, ... or a
            list of them (``--objectives``).
        gpus: GPU indices, e.g. ``0,1`` (``--gpus``; default: all found).
        space_file: A search-space YAML (``--space``).
        concurrency: Concurrent streams of the workload's load (``--concurrency``).
        name: The study's name (``--study``; default ``<model folder>-<workload>``).
        duration_s: Measured load seconds per trial (``--duration-s``; None: the workload's).
        strict_memory: Also prune max-num-seqs far above the KV concurrency (``--strict-memory``).
        remeasure_top_k: Best configurations re-measured at the end (``--remeasure``).
        enqueue: Extra configurations, tried right after the baselines: each a quoted flags string or a list of flags
            (``--enqueue``).
        seed: Sampler seed (``--seed``).
        studies_dir: Where studies live (``--studies-dir``).
        configs_dir: Where the best config is exported (``--configs-dir``).
        target: The hardware to use instead of finding it (e.g. tests, another machine's).
        target_rate_rps: Requests/s to serve within the SLOs (``--target-rate``).
        vllm_version: The vLLM release to plan for (``--vllm-version``; None: the installed one);
            the caller makes it current (:func:`vtune._vllm_defaults.use_vllm_version`).

    Raises:
        VtuneError: A bad argument, in one line naming the flag and the fix.
    """
    import shlex

    from vtune._memory import estimate_memory
    from vtune._model_shape import load_model_shape
    from vtune._objectives import parse_objectives
    from vtune._serve_config import parse_serve_args
    from vtune._space import default_space, load_space_file
    from vtune._target import apply_engine_defaults, resolve_model, resolve_target
    from vtune._workload import load_workload

    if isinstance(objectives, str) or objectives is None:
        objs = parse_objectives(objectives)
    else:
        objs = list(objectives)
        if not objs or not all(isinstance(o, Objective) for o in objs):
            raise VtuneError("--objectives: give names like goodput,ttft_p99 or a list of Objective")
    if duration_s is not None and duration_s <= 0:
        raise VtuneError(f"--duration-s must be > 0, got {duration_s:g}")
    if concurrency is not None and concurrency < 1:
        raise VtuneError(f"--concurrency must be >= 1, got {concurrency}")
    if remeasure_top_k < 0:
        raise VtuneError(f"--remeasure must be >= 0, got {remeasure_top_k}")
    if duration_s is not None and duration_s < 1 and any(o.is_capacity for o in objs):
        raise VtuneError(f"--duration-s must be at least 1 s with a capacity objective (each probe measures that "
                         f"long), got {duration_s:g}")
    rate = check_target_rate(target_rate_rps)
    if rate is not None and not any(o.is_capacity for o in objs):
        raise VtuneError("--target-rate needs a capacity objective (--objectives capacity or capacity_per_gpu): "
                         "the replicas for a rate come from each configuration's capacity")
    if name is not None:
        from vtune._names import check_name

        check_name(name, "--study")
    target = target or resolve_target(gpus)
    if isinstance(workload, Workload):
        wl, wl_label = workload, workload.name
    elif isinstance(workload, str):
        wl, wl_label = load_workload(workload, device=target.device), workload  # sized for the target's engine
    else:
        raise VtuneError(f"--workload: give a built-in name or a file, got {type(workload).__name__}")
    if concurrency is not None:
        import dataclasses

        wl = dataclasses.replace(wl, load=dataclasses.replace(wl.load, streams=concurrency))
    flags = list(fixed_flags or [])
    fixed = parse_serve_args(flags[1:] if flags[:1] == ["--"] else flags)
    model = resolve_model(model or fixed.model or None, target)
    fixed.model = model
    if fixed.max_model_len is None:
        # Size the KV cache for the workload, not for the model's maximum context.
        fixed.max_model_len = max(256, -(-wl.max_model_len_hint // 256) * 256)
    user_env = set(fixed.env)
    fixed = apply_engine_defaults(fixed, target)
    shape = load_model_shape(model)

    def weights_fit(tp: int, pp: int) -> bool:
        cfg = fixed.replace(tensor_parallel_size=tp, pipeline_parallel_size=pp, gpu_memory_utilization=0.95)
        est = estimate_memory(shape, cfg, target.gpu, device=target.device)
        return est.fits or "weights" not in (est.reason or "")

    space = default_space(device=target.device, num_gpus=target.num_gpus, shape=shape, weights_fit=weights_fit,
                          cpu_cores=len(target.cpu_cores), workload=wl)
    if space_file:
        space = load_space_file(space_file, space)
    for dim in list(space.dimensions):  # flags fixed after -- are not sampled
        if dim.name != "parallel_layout" and not dim.name.isupper() and getattr(fixed, dim.name, None) is not None:
            dim.fixed = getattr(fixed, dim.name)
        if dim.name.isupper() and dim.name in user_env:
            dim.fixed = fixed.env[dim.name]
    layout = space.get("parallel_layout")
    if layout is not None and any(getattr(fixed, f) is not None for f in (
            "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")):
        layout.enabled = False
    extra: list[list[str]] = []
    for item in enqueue or []:
        tokens = shlex.split(item) if isinstance(item, str) else [str(x) for x in item]
        if not tokens:
            raise VtuneError("--enqueue: give the quoted vLLM flags of a configuration, e.g. --enqueue "
                             "\"--max-num-seqs 64\"")
        try:
            parse_serve_args(tokens)
        except VtuneError as exc:
            raise VtuneError(f"--enqueue {shlex.join(tokens)}: {exc}") from None
        extra.append(tokens)
    return StudySettings(
        name=name or default_study_name(model, wl_label), model=model, workload=wl, space=space, base=fixed,
        objectives=objs, target=target, duration_s=duration_s, strict_memory=strict_memory,
        remeasure_top_k=remeasure_top_k, enqueue=extra, seed=seed, studies_dir=Path(studies_dir),
        configs_dir=Path(configs_dir), target_rate_rps=rate, vllm_version=vllm_version,
    )
