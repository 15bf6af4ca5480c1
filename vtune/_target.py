"""Where trials run: the GPUs found here (or asked for), else vLLM's CPU engine.

Shared by ``bench`` and ``study``: it decides the device, the model to serve
when none is given (the built-in small model, on a machine with no GPU), and
the engine defaults vtune applies (a KV cache space on the CPU engine, because
vLLM's own CPU default takes 90% of the machine's memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vtune._errors import VtuneError
from vtune._memory import GIB, Gpu, gpu_for_device
from vtune._serve_config import ServeConfig
from vtune._vllm_defaults import VTUNE_CPU_KV_CACHE_SPACE_GIB

__all__ = ["CPU_DEFAULT_KV_SPACE_GIB", "Target", "apply_engine_defaults", "resolve_model", "resolve_target"]

#: KV cache space (GiB, ``VLLM_CPU_KVCACHE_SPACE``) vtune gives the CPU engine when the user sets none
#: (an alias of :data:`vtune._vllm_defaults.VTUNE_CPU_KV_CACHE_SPACE_GIB`, kept for importers).
CPU_DEFAULT_KV_SPACE_GIB = VTUNE_CPU_KV_CACHE_SPACE_GIB


@dataclass(frozen=True)
class Target:
    """The hardware trials run on.

    Attributes:
        device: ``gpu`` or ``cpu`` (vLLM's CPU engine).
        gpus: GPU indices trials may use (empty on the CPU engine).
        gpu: The GPU model with its total memory (None on the CPU engine).
        gpu_names: Device names as NVML reports them.
        nvlink: Whether every GPU pair is NVLink-connected (None: unknown/one GPU).
        cpu_cores: CPU cores this process may use.
    """

    device: str
    gpus: tuple[int, ...] = ()
    gpu: Gpu | None = None
    gpu_names: tuple[str, ...] = ()
    nvlink: bool | None = None
    cpu_cores: tuple[int, ...] = field(default_factory=tuple)

    @property
    def num_gpus(self) -> int:
        """GPUs available to trials (0 on the CPU engine)."""
        return len(self.gpus)

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.device == "cpu":
            return f"vLLM CPU engine on {len(self.cpu_cores)} core(s)"
        link = {True: ", NVLink", False: ", PCIe", None: ""}[self.nvlink]
        mem = f"{self.gpu.memory_gib:.2f} GiB" if self.gpu else "?"
        return f"{self.num_gpus} x {self.gpu_names[0] if self.gpu_names else 'GPU'} ({mem}){link}"

    def to_dict(self) -> dict[str, object]:
        """Plain data for study attributes."""
        return {
            "device": self.device,
            "gpus": list(self.gpus),
            "gpu": self.gpu.name if self.gpu else None,
            "gpu_memory_gib": self.gpu.memory_gib if self.gpu else None,
            "gpu_names": list(self.gpu_names),
            "nvlink": self.nvlink,
            "cpu_cores": list(self.cpu_cores),
        }


def resolve_target(gpus_spec: str | None = None, *, device: str | None = None) -> Target:
    """Finds the GPUs (``--gpus``), or falls back to the CPU engine.

    Args:
        gpus_spec: ``--gpus`` as given (``"0,1"``, ``"0-3"``), or None for all found.
        device: Force ``cpu`` or ``gpu``; None decides from what is found.

    Raises:
        VtuneError: ``--gpus`` names GPUs that are not here, or ``gpu`` was asked
            for on a machine without one.
    """
    from vtune._hardware import cpu_cores, discover_gpus, gpu_links, select_gpus

    cores = tuple(cpu_cores())
    found = [] if device == "cpu" else discover_gpus()
    if not found:
        if device == "gpu" or gpus_spec:
            raise VtuneError(
                f"--gpus {gpus_spec or ''}: no NVIDIA GPU found here (NVML and nvidia-smi see none); "
                "drop --gpus to use vLLM's CPU engine"
            )
        return Target(device="cpu", cpu_cores=cores)
    chosen = select_gpus(gpus_spec, available=found)
    infos = [g for g in found if g.index in chosen]
    mem_gib = _torch_total_bytes(infos[0].index, infos[0].total_memory_bytes) / GIB
    gpu = gpu_for_device(infos[0].name, mem_gib)
    nvlink = None
    if len(chosen) > 1:
        links = [ln for ln in gpu_links() if ln.gpu_a in chosen and ln.gpu_b in chosen]
        nvlink = bool(links) and all(ln.is_nvlink for ln in links)
    return Target(device="gpu", gpus=tuple(chosen), gpu=gpu, gpu_names=tuple(g.name for g in infos),
                  nvlink=nvlink, cpu_cores=cores)


def _torch_total_bytes(index: int, nvml_total_bytes: int) -> int:
    """Total memory of a GPU as torch (and so vLLM) sees it.

    Asked in a child process so that vtune's own process never creates a CUDA
    context (it would hold GPU memory during every trial). Without torch, NVML's
    total less the 480 MiB that the H100 showed between the two is used.
    """
    import os
    import subprocess
    import sys

    code = "import torch; print(torch.cuda.mem_get_info(0)[1])"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(index)}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        return int(out.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return nvml_total_bytes - 480 * (1 << 20)


def resolve_model(model: str | None, target: Target) -> str:
    """The model to serve: the given one, else the built-in small model on the CPU engine.

    Raises:
        VtuneError: No model given on a GPU machine, or a path that does not exist.
    """
    if model:
        path = Path(model).expanduser()
        if path.exists():
            return str(path.resolve())
        if "/" in model and not model.startswith((".", "/", "~")):
            return model  # a Hugging Face id, for machines that can reach the hub
        raise VtuneError(f"--model {model}: no such directory; pass a local model folder (or a hub id)")
    if target.device == "gpu":
        raise VtuneError("--model is required on a GPU machine (the built-in small model is for the CPU engine)")
    from vtune._tiny_model import build_tiny_model

    return str(build_tiny_model())


def apply_engine_defaults(cfg: ServeConfig, target: Target) -> ServeConfig:
    """Fills what vtune sets unless the user did: the CPU engine's KV cache space.

    The space is this process's ``VLLM_CPU_KVCACHE_SPACE`` when set, else
    :data:`vtune._vllm_defaults.VTUNE_CPU_KV_CACHE_SPACE_GIB` (the same order the
    memory model assumes, :func:`vtune._vllm_defaults.cpu_kv_cache_space_gib`).
    """
    if target.device == "cpu" and "VLLM_CPU_KVCACHE_SPACE" not in cfg.env:
        import os

        space = os.environ.get("VLLM_CPU_KVCACHE_SPACE") or str(VTUNE_CPU_KV_CACHE_SPACE_GIB)
        return cfg.replace(env={**cfg.env, "VLLM_CPU_KVCACHE_SPACE": space})
    return cfg
