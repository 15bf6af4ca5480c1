"""What hardware vtune may place engines on: GPUs, their links, CPU cores.

GPUs are found through NVML (the ``pynvml`` module of ``nvidia-ml-py``) when it
imports and initialises, else through ``nvidia-smi``; with neither, the machine has
no GPU as far as vtune is concerned and every GPU function answers empty. Indices
are NVML's (``nvidia-smi``'s) and are what ``CUDA_VISIBLE_DEVICES`` takes.

:func:`gpu_links` reads the ``nvidia-smi topo -m`` matrix: ``NV#`` cells are NVLink
(``#`` bonded links), ``PIX``/``PXB``/``PHB``/``NODE``/``SYS`` are PCIe paths of
growing distance. :func:`parse_topo_matrix` is the pure parser.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vtune._errors import VtuneError

__all__ = [
    "GpuInfo",
    "GpuLink",
    "cpu_cores",
    "discover_gpus",
    "gpu_links",
    "gpu_memory_used_bytes",
    "parse_topo_matrix",
    "select_gpus",
]

_MIB = 1024 * 1024
_SMI_TIMEOUT_S = 20.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GPU_LABEL = re.compile(r"^GPU(\d+)$")
_PCIE_LABELS = ("PIX", "PXB", "PHB", "NODE", "SYS", "SOC")


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU.

    Attributes:
        index: NVML index (what ``CUDA_VISIBLE_DEVICES`` takes).
        name: Product name, e.g. ``NVIDIA H100 80GB HBM3``.
        total_memory_bytes: Total device memory.
        uuid: ``GPU-...`` identifier, stable across reboots.
    """

    index: int
    name: str
    total_memory_bytes: int
    uuid: str

    @property
    def total_memory_gib(self) -> float:
        """Total memory in GiB."""
        return self.total_memory_bytes / 1024**3

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return asdict(self)


@dataclass(frozen=True)
class GpuLink:
    """How two GPUs talk, from ``nvidia-smi topo -m``.

    Attributes:
        gpu_a: Lower GPU index.
        gpu_b: Higher GPU index.
        label: The matrix cell as printed (``NV18``, ``PHB``, ``SYS``, ...).
        kind: ``nvlink``, ``pcie`` or ``unknown``.
        nvlinks: Bonded NVLinks (the ``#`` of ``NV#``); 0 for PCIe.
    """

    gpu_a: int
    gpu_b: int
    label: str
    kind: str
    nvlinks: int = 0

    @property
    def is_nvlink(self) -> bool:
        """Whether the pair is connected by NVLink."""
        return self.kind == "nvlink"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return asdict(self)


# ------------------------------------------------------------------ NVML / smi
def _nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None when NVML is not usable."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except Exception:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _smi(args: Sequence[str]) -> str | None:
    """Output of ``nvidia-smi ARGS``, or None when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout


def _smi_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.strip():
            rows.append([cell.strip() for cell in line.split(",")])
    return rows


def discover_gpus() -> list[GpuInfo]:
    """Lists the NVIDIA GPUs of this machine.

    Returns:
        One :class:`GpuInfo` per GPU in index order; empty without NVML and
        ``nvidia-smi`` (a CPU-only machine).
    """
    nvml = _nvml()
    if nvml is not None:
        try:
            gpus = []
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                gpus.append(
                    GpuInfo(
                        index=i,
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        total_memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    )
                )
            return gpus
        except Exception:
            pass  # fall through to nvidia-smi
    out = _smi(["--query-gpu=index,name,memory.total,uuid", "--format=csv,noheader,nounits"])
    if out is None:
        return []
    return parse_smi_gpus(out)


def parse_smi_gpus(text: str) -> list[GpuInfo]:
    """Parses ``nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader,nounits``.

    Args:
        text: The command's output (memory in MiB).

    Returns:
        One :class:`GpuInfo` per well-formed line.
    """
    gpus = []
    for row in _smi_rows(text):
        if len(row) < 4:
            continue
        try:
            gpus.append(GpuInfo(int(row[0]), row[1], int(float(row[2])) * _MIB, row[3]))
        except ValueError:
            continue
    return sorted(gpus, key=lambda g: g.index)


def gpu_memory_used_bytes(indices: Iterable[int] | None = None) -> dict[int, int]:
    """Device memory in use per GPU, as NVML or ``nvidia-smi`` reports it.

    Args:
        indices: GPUs to report; None for all.

    Returns:
        ``{index: used bytes}``; empty on a machine without NVIDIA GPUs. NVML's
        figure includes memory the driver reserves (about 0.5 GiB on an H100)
        and ``nvidia-smi``'s does not, so compare only readings of one call site
        on one machine (the source does not change while a process runs).
    """
    wanted = None if indices is None else set(indices)
    used: dict[int, int] = {}
    nvml = _nvml()
    if nvml is not None:
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                if wanted is None or i in wanted:
                    handle = nvml.nvmlDeviceGetHandleByIndex(i)
                    used[i] = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
            return used
        except Exception:
            used = {}
    out = _smi(["--query-gpu=index,memory.used", "--format=csv,noheader,nounits"])
    if out is None:
        return {}
    for row in _smi_rows(out):
        try:
            index, mib = int(row[0]), int(float(row[1]))
        except (ValueError, IndexError):
            continue
        if wanted is None or index in wanted:
            used[index] = mib * _MIB
    return used


# -------------------------------------------------------------------- topology
def _link(a: int, b: int, label: str) -> GpuLink:
    lo, hi = min(a, b), max(a, b)
    match = re.fullmatch(r"NV(\d+)", label)
    if match:
        return GpuLink(lo, hi, label, "nvlink", int(match.group(1)))
    if label in _PCIE_LABELS:
        return GpuLink(lo, hi, label, "pcie", 0)
    return GpuLink(lo, hi, label, "unknown", 0)


def parse_topo_matrix(text: str) -> list[GpuLink]:
    """Parses the matrix ``nvidia-smi topo -m`` prints.

    Args:
        text: The command's output (ANSI colour codes are tolerated).

    Returns:
        One :class:`GpuLink` per unordered GPU pair, sorted by ``(gpu_a, gpu_b)``.
    """
    lines = [_ANSI.sub("", line) for line in text.splitlines()]
    header: list[int] | None = None
    links: dict[tuple[int, int], GpuLink] = {}
    for line in lines:
        tokens = line.split()
        if not tokens:
            if header is not None and links:
                break  # the legend follows the matrix after a blank line
            continue
        if header is None:
            gpu_cols = [int(m.group(1)) for m in (_GPU_LABEL.match(t) for t in tokens) if m]
            if gpu_cols and _GPU_LABEL.match(tokens[0]):
                header = gpu_cols
            continue
        row = _GPU_LABEL.match(tokens[0])
        if row is None:
            continue  # NIC rows
        a = int(row.group(1))
        for b, cell in zip(header, tokens[1 : 1 + len(header)], strict=False):
            if a != b and cell != "X":
                links.setdefault((min(a, b), max(a, b)), _link(a, b, cell))
    return [links[key] for key in sorted(links)]


def gpu_links() -> list[GpuLink]:
    """The link between every pair of GPUs, from ``nvidia-smi topo -m``.

    Returns:
        One :class:`GpuLink` per GPU pair; empty with fewer than two GPUs or
        without ``nvidia-smi``.
    """
    out = _smi(["topo", "-m"])
    return [] if out is None else parse_topo_matrix(out)


# ------------------------------------------------------------------------ CPUs
def cpu_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask), sorted."""
    return sorted(os.sched_getaffinity(0))


# ------------------------------------------------------------------- selection
def _parse_index_list(spec: str) -> list[int]:
    indices: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if not (lo.isdigit() and (not dash or hi.isdigit())):
            raise VtuneError(f"--gpus {spec!r}: {part!r} is not a GPU index; write e.g. --gpus 0,1 or --gpus 0-3")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise VtuneError(f"--gpus {spec!r}: range {part!r} runs backwards; write e.g. --gpus 0-3")
        indices.extend(range(first, last + 1))
    if not indices:
        raise VtuneError(f"--gpus {spec!r} names no GPU; write e.g. --gpus 0,1")
    duplicates = sorted({i for i in indices if indices.count(i) > 1})
    if duplicates:
        raise VtuneError(f"--gpus {spec!r} names GPU {duplicates[0]} twice; list each GPU once")
    return indices


def select_gpus(spec: str | None, *, available: Sequence[GpuInfo] | None = None) -> list[int]:
    """Resolves a ``--gpus`` value to GPU indices, checked against this machine.

    Args:
        spec: ``"0,1"``, ``"0-3"``, ``"all"``, or None (all GPUs present; empty on
            a CPU-only machine).
        available: GPUs to validate against; default :func:`discover_gpus`.

    Returns:
        The GPU indices, in the order given.

    Raises:
        VtuneError: A malformed list, a duplicate, or an index not present.
    """
    gpus = list(available) if available is not None else discover_gpus()
    present = [g.index for g in gpus]
    if spec is None or spec.strip().lower() == "all":
        return present
    indices = _parse_index_list(spec)
    if not present:
        raise VtuneError(
            f"--gpus {spec}: no NVIDIA GPU found (neither NVML nor nvidia-smi answered); "
            "leave --gpus out to run on the CPU engine"
        )
    missing = [i for i in indices if i not in present]
    if missing:
        listing = ",".join(str(i) for i in present)
        raise VtuneError(f"--gpus {spec}: GPU {missing[0]} is not present; this machine has GPUs {listing}")
    return indices
