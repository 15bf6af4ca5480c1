"""The report of the real 2 x H200 study kept in the repo (no engine is started)."""

from __future__ import annotations

import shutil
from pathlib import Path

from vtune._report import write_report

GPU_STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu-study-2xh200" / "study.db"


def test_best_configuration_and_baselines_count_every_measurement(tmp_path: Path) -> None:
    db = tmp_path / "gpu-8b-chatbot.db"
    shutil.copy(GPU_STUDY, db)
    path = write_report("gpu-8b-chatbot", storage_url=f"sqlite:///{db}", studies_dir=tmp_path,
                        configs_dir=tmp_path / "configs")
    text = path.read_text()
    assert (path.parent / "history.png").stat().st_size and (path.parent / "importances.png").stat().st_size
    assert "![history.png](history.png)" in text
    # DP=2 / 1024 / 8192 / 0.85 was measured twice (177.9 and 107.4 req/s): it is shown by its mean
    assert "measured 2 times (trials 5, 6): goodput = 142.642 mean (107.370 to 177.915)" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| size-preset") or line.startswith("| vllm-defaults")}
    # the size preset's configuration was measured twice too (trials 1 and 3): 14.04 req/s, 6,616 tok/s
    assert rows["size-preset"][1] == "2" and rows["size-preset"][5] == "10.16" and rows["size-preset"][6] == "2.37"
    assert rows["vllm-defaults"][1] == "1" and rows["vllm-defaults"][5] == "29.02"
