from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vtune import _hardware
from vtune._errors import VtuneError
from vtune._hardware import (
    GpuInfo,
    cpu_cores,
    discover_gpus,
    gpu_links,
    gpu_memory_used_bytes,
    parse_smi_gpus,
    parse_topo_matrix,
    select_gpus,
)

# `nvidia-smi topo -m` of a 2 x H200 NVLink box (driver 570; header underlined with ANSI codes).
TOPO_NV18 = (
    "\t\x1b[4mGPU0\tGPU1\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tNV18\tSYS\t0-63\t0\t\tN/A\n"
    "GPU1\tNV18\t X \tSYS\t0-63\t0\t\tN/A\n"
    "NIC0\tSYS\tSYS\t X \t\t\t\t\n"
    "\n"
    "Legend:\n"
    "\n"
    "  X    = Self\n"
    "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)\n"
    "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node\n"
    "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)\n"
    "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)\n"
    "  PIX  = Connection traversing at most a single PCIe bridge\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n"
    "\n"
    "NIC Legend:\n"
    "\n"
    "  NIC0: mlx5_0\n"
)

# A 4-GPU PCIe box: two pairs under host bridges, pairs on different sockets (space separated).
TOPO_PCIE = """        GPU0    GPU1    GPU2    GPU3    CPU Affinity    NUMA Affinity
GPU0     X      PHB     SYS     SYS     0-15    0
GPU1    PHB      X      SYS     SYS     0-15    0
GPU2    SYS     SYS      X      PHB     16-31   1
GPU3    SYS     SYS     PHB      X      16-31   1

Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  NV#  = Connection traversing a bonded set of # NVLinks
"""

SMI_GPUS = """0, NVIDIA H200, 143771, GPU-5a3d1f2e-0000-1111-2222-333344445555
1, NVIDIA H200, 143771, GPU-6b4e2f3f-0000-1111-2222-333344445555
"""


def test_parse_topo_nvlink_pair() -> None:
    links = parse_topo_matrix(TOPO_NV18)
    assert len(links) == 1
    link = links[0]
    assert (link.gpu_a, link.gpu_b) == (0, 1)
    assert link.label == "NV18"
    assert link.kind == "nvlink" and link.is_nvlink
    assert link.nvlinks == 18
    assert link.to_dict()["kind"] == "nvlink"


def test_parse_topo_pcie_box() -> None:
    links = {(lk.gpu_a, lk.gpu_b): lk for lk in parse_topo_matrix(TOPO_PCIE)}
    assert sorted(links) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert links[(0, 1)].label == "PHB" and links[(2, 3)].label == "PHB"
    assert links[(0, 2)].label == "SYS" and links[(1, 3)].label == "SYS"
    assert all(lk.kind == "pcie" and not lk.is_nvlink and lk.nvlinks == 0 for lk in links.values())


# Recorded on a one-GPU H100 machine (the device tool), 2026-11-22.
TOPO_H100_SINGLE = (
    "\t\x1b[4mGPU0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \t0-15\t0\t\tN/A\n"
    "\n"
    "Legend:\n"
    "\n"
    "  X    = Self\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n"
)


def test_parse_topo_single_gpu_and_garbage() -> None:
    assert parse_topo_matrix(TOPO_H100_SINGLE) == []
    assert parse_topo_matrix("") == []
    assert parse_topo_matrix("No devices were found\n") == []


def test_parse_smi_gpus() -> None:
    gpus = parse_smi_gpus(SMI_GPUS + "garbage line\n")
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "NVIDIA H200"
    assert gpus[0].total_memory_bytes == 143771 * 1024 * 1024
    assert gpus[1].uuid.startswith("GPU-6b4e")
    assert gpus[0].total_memory_gib == pytest.approx(140.4, abs=0.1)


def _fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Puts a fake `nvidia-smi` first on PATH and hides NVML."""
    script = tmp_path / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  *memory.used*) printf '0, 1024\\n1, 70000\\n' ;;\n"
        f"  *memory.total*) printf '{SMI_GPUS.replace(chr(10), chr(92) + 'n')}' ;;\n"
        "  *topo*) cat <<'EOF'\n" + TOPO_PCIE + "EOF\n ;;\n"
        "  *) exit 9 ;;\n"
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(_hardware, "_nvml", lambda: None)


def test_discovery_through_fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_smi(tmp_path, monkeypatch)
    gpus = discover_gpus()
    assert [(g.index, g.name) for g in gpus] == [(0, "NVIDIA H200"), (1, "NVIDIA H200")]
    assert gpu_memory_used_bytes([1]) == {1: 70000 * 1024 * 1024}
    assert gpu_memory_used_bytes() == {0: 1024 * 1024 * 1024, 1: 70000 * 1024 * 1024}
    assert len(gpu_links()) == 6
    assert select_gpus("1") == [1]


def test_no_gpu_tools_means_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi
    monkeypatch.setattr(_hardware, "_nvml", lambda: None)
    assert discover_gpus() == []
    assert gpu_memory_used_bytes([0]) == {}
    assert gpu_links() == []
    assert select_gpus(None) == []
    with pytest.raises(VtuneError, match="no NVIDIA GPU found"):
        select_gpus("0")


def _gpus(n: int) -> list[GpuInfo]:
    return [GpuInfo(i, "NVIDIA H100 80GB HBM3", 80 * 1024**3, f"GPU-{i}") for i in range(n)]


def test_select_gpus_parsing() -> None:
    four = _gpus(4)
    assert select_gpus(None, available=four) == [0, 1, 2, 3]
    assert select_gpus("all", available=four) == [0, 1, 2, 3]
    assert select_gpus("0,1", available=four) == [0, 1]
    assert select_gpus(" 2 , 0 ", available=four) == [2, 0]
    assert select_gpus("1-3", available=four) == [1, 2, 3]
    assert select_gpus("0,2-3", available=four) == [0, 2, 3]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0,5", "GPU 5 is not present; this machine has GPUs 0,1,2,3"),
        ("a", "'a' is not a GPU index"),
        ("0,0", "names GPU 0 twice"),
        ("3-1", "runs backwards"),
        (",", "names no GPU"),
        ("-1", "is not a GPU index"),
    ],
)
def test_select_gpus_errors(spec: str, message: str) -> None:
    with pytest.raises(VtuneError, match=message) as info:
        select_gpus(spec, available=_gpus(4))
    assert "\n" not in str(info.value)


def test_cpu_cores_is_affinity() -> None:
    cores = cpu_cores()
    assert cores == sorted(os.sched_getaffinity(0))
    assert cores


def test_real_gpus_if_present() -> None:
    gpus = discover_gpus()
    if not gpus:
        print("no NVIDIA GPU here (neither NVML nor nvidia-smi): skipping the real-GPU checks")
        pytest.skip("no NVIDIA GPU (neither NVML nor nvidia-smi)")
    assert [g.index for g in gpus] == list(range(len(gpus)))
    assert all(g.total_memory_bytes > 0 and g.uuid for g in gpus)
    used = gpu_memory_used_bytes([g.index for g in gpus])
    assert set(used) == {g.index for g in gpus}
    links = gpu_links()
    n = len(gpus)
    assert len(links) == n * (n - 1) // 2
