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


def test_report_of_a_study_with_an_off_space_baseline(tmp_path: Path) -> None:
    """vLLM's defaults on two GPUs run TP=1/DP=1, a layout the space does not offer: the report says the
    sampler was kept from it, and the importances are computed on the trials inside the space."""
    import optuna

    from tests.study.test_worker import fake_trial, make_settings
    from vtune._memory import resolve_gpu
    from vtune._model_shape import load_model_shape
    from vtune._report import _in_space_copy
    from vtune._space import default_space
    from vtune._target import Target
    from vtune.study._storage import make_storage
    from vtune.study._study import run_study

    target = Target(device="gpu", gpus=(0, 1), gpu=resolve_gpu("H200"), gpu_names=("NVIDIA H200",) * 2)
    settings = make_settings(tmp_path, name="off", target=target)
    settings.space = default_space(device="gpu", num_gpus=2, shape=load_model_shape(settings.model))
    summary = run_study(settings, n_trials=6, trial_fn=fake_trial, quiet=True, export=False)
    path = write_report("off", storage_url=summary.storage, studies_dir=settings.studies_dir,
                        configs_dir=settings.configs_dir)
    rows = {line.split("|")[1].strip(): line for line in path.read_text().splitlines() if line.startswith("| ")}
    assert "kept out (off the space: parallel_layout)" in rows["vllm-defaults"]
    assert "learns from it" in rows["memory-model-guess"] and "learns from it" in rows["size-preset"]
    study = optuna.load_study(study_name="off", storage=make_storage(summary.storage, heartbeat=False))
    kept = _in_space_copy(study).get_trials()
    assert len(kept) == len(study.trials) - 1 and all(t.user_attrs.get("baseline") != "vllm-defaults" for t in kept)
    assert (path.parent / "importances.png").stat().st_size
