"""The report of the real 2 x H200 study kept in the repo, and of capacity studies made from synthetic capacity
results (tests/data/capacity/make_landscape.py); no engine is started."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from vtune._errors import VtuneError
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


def test_enqueued_configurations_are_compared_with_the_best(tmp_path: Path) -> None:
    """A user's own preset (``--enqueue``) is the comparison they came for: it has its row in "Tuned vs
    baselines" and its flags under the table (the H200 VL study left it out)."""
    from tests.study.test_worker import fake_trial, make_settings
    from vtune.study._study import run_study

    settings = make_settings(tmp_path, name="enq", enqueue=[["--max-num-seqs", "2"]])
    summary = run_study(settings, n_trials=5, trial_fn=fake_trial, quiet=True, export=False)
    text = write_report("enq", storage_url=summary.storage, studies_dir=settings.studies_dir,
                        configs_dir=settings.configs_dir).read_text()
    section = text.split("### Tuned vs baselines", 1)[1].split("## Trials", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    assert {"memory-model-guess", "vllm-defaults", "enqueued-0"} <= set(rows)
    assert "| measured |" in rows["enqueued-0"]
    flags = next(line for line in section.splitlines() if line.startswith("- enqueued-0 (trial "))
    assert "--max-num-seqs 2" in flags


# ----------------------------------------------------------------------------- capacity studies

MAKE_LANDSCAPE = Path(__file__).resolve().parent / "data" / "capacity" / "make_landscape.py"


def synthetic() -> Any:
    """tests/data/capacity/make_landscape.py: the synthetic capacity model (vtune's search state machine on it)."""
    spec = importlib.util.spec_from_file_location("make_capacity_landscape", MAKE_LANDSCAPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def capacity_objective_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """``capacity`` and ``capacity_per_gpu`` as study objectives, until the study's own are in this checkout.

    A stand-in of the data contract: ``capacity`` is maximized and its value is the requests/s
    of the trial's result (a capacity trial's result is its probe at capacity). Does nothing once
    vtune's own ``capacity`` objective parses.
    """
    from vtune import _objectives

    try:
        _objectives.parse_objectives("capacity")
        return
    except VtuneError:
        pass
    real = _objectives.parse_objectives

    @dataclasses.dataclass(frozen=True)
    class Capacity(_objectives.Objective):
        def value(self, result: Any) -> float:
            if self.name != "capacity":
                raise NotImplementedError("the stand-in has no per-GPU value: it needs the layout")
            return float(result.requests_per_second)

    def parse(text: str | None) -> list[_objectives.Objective]:
        if text in ("capacity", "capacity_per_gpu"):
            return [Capacity(text, "maximize", "req/s" if text == "capacity" else "req/s per GPU")]
        return real(text)

    monkeypatch.setattr(_objectives, "parse_objectives", parse)


@pytest.fixture
def capacity_objectives(monkeypatch: pytest.MonkeyPatch) -> None:
    """:func:`capacity_objective_shim` for one test."""
    capacity_objective_shim(monkeypatch)


#: (baseline, layout, max-num-seqs, speed, state) of the fake capacity study's trials, in trial order.
TRIALS = [
    ("memory-model-guess", "tp1-pp1-dp2", 64, 1.0, "COMPLETE"),   # 0: 29.54 req/s
    ("vllm-defaults", "tp1-pp1-dp1", 256, 1.0, "COMPLETE"),       # 1: 16.30 req/s on one GPU
    ("size-preset", "tp2-pp1-dp1", 256, 1.0, "FAIL"),             # 2: out of memory
    ("", "tp2-pp1-dp1", 64, 1.0, "COMPLETE"),                     # 3: 19.83 req/s on two GPUs
    ("", "tp1-pp1-dp2", 256, 1.0, "COMPLETE"),                    # 4: 31.52 req/s: the best capacity
    ("", "tp1-pp1-dp2", 64, 0.93, "COMPLETE"),                    # 5: the guess again: 27.92 req/s
    ("", "tp1-pp1-dp1", 16, 1.0, "COMPLETE"),                     # 6: 10.00 req/s
    ("", "tp2-pp1-dp1", 16, 1.0, "PRUNED"),                       # 7: stopped after 2 probes
]


def capacity_study(root: Path, *, objective: str = "capacity", target_rate_rps: float | None = None) -> tuple[
        str, Any]:
    """A study as the capacity objective records it (data contract), made from synthetic capacity results."""
    import dataclasses

    import optuna

    from tests.study.test_worker import make_settings
    from vtune._objectives import parse_objectives
    from vtune._serve_config import ServeConfig
    from vtune._space import apply_values

    model = synthetic()
    settings = make_settings(root, name="cap")
    settings.objectives = parse_objectives(objective)
    url = f"sqlite:///{root / 'cap.db'}"
    study = optuna.create_study(study_name="cap", storage=url, direction="maximize")
    study.set_user_attr("vtune", settings.to_attr())
    if target_rate_rps is not None:
        study.set_user_attr("target_rate_rps", target_rate_rps)
    base = ServeConfig(model=settings.model, max_model_len=512)
    for baseline, layout, seqs, speed, state in TRIALS:
        point = {"parallel_layout": layout, "max_num_seqs": seqs}
        cfg = apply_values(base, point)
        attrs: dict[str, Any] = {"config": cfg.to_dict(), "flags": cfg.to_flags_line(), "num_gpus": cfg.num_gpus}
        if baseline:
            attrs["baseline"] = baseline
        if state == "FAIL":
            attrs["failure"] = {"kind": "out_of_memory", "message": "CUDA out of memory"}
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs))
            continue
        cap = model.search_point(point, speed)
        if state == "PRUNED":
            cap = dataclasses.replace(cap, probes=cap.probes[:2], bounded_by="stopped")
            attrs["pruned_by"] = "early_stopping"
        attrs["capacity"] = cap.to_dict()
        value = cap.requests_per_second / (cfg.num_gpus if objective == "capacity_per_gpu" else 1)
        study.add_trial(optuna.trial.create_trial(
            state=getattr(optuna.trial.TrialState, state), values=[value] if state == "COMPLETE" else None,
            user_attrs=attrs))
    return url, settings


def table_rows(text: str, first_column: str) -> dict[str, dict[str, str]]:
    """The Markdown table whose first column is ``first_column``, as {first cell: {column: cell}}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    cols = [c.strip() for c in lines[start].split("|")[1:-1]]
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.split("|")[1:-1]]
        out[cells[0]] = dict(zip(cols, cells, strict=True))
    return out


def test_capacity_table_against_the_baselines(tmp_path: Path, capacity_objectives: None) -> None:
    url, settings = capacity_study(tmp_path)
    text = write_report("cap", storage_url=url, studies_dir=settings.studies_dir,
                        configs_dir=settings.configs_dir).read_text()
    rows = table_rows(text, "configuration")
    # one row per configuration with a finished search; the pruned trial 7 (2 probes) is no measurement
    assert set(rows) == {"trial 4 (best)", "memory-model-guess", "vllm-defaults", "trial 3", "trial 6"}
    best = rows["trial 4 (best)"]
    assert best["GPUs"] == "2" and best["req/s"] == "31.52" and best["req/s per GPU"] == "15.76"
    assert best["streams"] == "176.00" and best["out tok/s"] == "2017.43"
    # the guess was measured twice (trials 0 and 5: 29.54 and 27.92 req/s): its mean counts, on both sides
    guess = rows["memory-model-guess"]
    assert guess["trials"] == "0, 5" and guess["req/s"] == "28.73" and guess["req/s range"] == "27.92-29.54"
    assert best["x memory-model-guess"] == f"{31.5224 / ((29.5385 + 27.9218) / 2):.2f}" == "1.10"
    assert best["x vllm-defaults"] == f"{31.5224 / 16.2963:.2f}" == "1.93"
    assert guess["x memory-model-guess"] == "1.00" and rows["vllm-defaults"]["x vllm-defaults"] == "1.00"
    assert "Baselines without a capacity: size-preset (trial 2): failed (out_of_memory)." in text
    assert "### Tuned vs baselines" not in text  # the fixed-load comparison is not made of capacities
    assert "![capacity_curves.png](capacity_curves.png)" in text
    assert (settings.study_dir / "capacity_curves.png").stat().st_size > 10_000
    trials = table_rows(text, "trial")
    assert trials["7"]["probes"] == "2" and trials["4"]["capacity_rps"] == "31.52" and trials["4"]["num_gpus"] == "2"


def test_capacity_per_gpu_ratios_compare_per_gpu(tmp_path: Path, capacity_objectives: None) -> None:
    url, settings = capacity_study(tmp_path, objective="capacity_per_gpu")
    text = write_report("cap", storage_url=url, studies_dir=settings.studies_dir,
                        configs_dir=settings.configs_dir).read_text()
    rows = table_rows(text, "configuration")
    # one GPU serves 16.30 req/s; data parallel 15.76 per GPU: vLLM's defaults rank first per GPU
    assert list(rows)[0].startswith("vllm-defaults")
    assert rows["trial 4"]["x vllm-defaults"] == f"{31.5224 / 2 / 16.2963:.2f}" == "0.97"
    assert "ratios compare requests/s per GPU" in text


def test_target_rate_gives_the_fewest_gpus(tmp_path: Path, capacity_objectives: None) -> None:
    url, settings = capacity_study(tmp_path, target_rate_rps=100.0)
    text = write_report("cap", storage_url=url, studies_dir=settings.studies_dir,
                        configs_dir=settings.configs_dir).read_text()
    rows = {k.replace(" (best)", ""): v for k, v in table_rows(text, "configuration").items()}
    col = "GPUs for 100 req/s"
    # ceil(100 / capacity) servers x GPUs per server, by configuration means
    assert rows["trial 4"][col] == "8 (4 x 2)"          # 31.52 req/s on 2 GPUs
    assert rows["vllm-defaults"][col] == "7 (7 x 1)"    # 16.30 req/s on 1 GPU: the fewest GPUs
    assert rows["memory-model-guess"][col] == "8 (4 x 2)" and rows["trial 3"][col] == "12 (6 x 2)"
    assert rows["trial 6"][col] == "10 (10 x 1)"
    import optuna

    study = optuna.load_study(study_name="cap", storage=url)
    by_number = {t.number: t.user_attrs.get("flags") for t in study.trials}
    assert "### Serving 100 req/s within the SLOs" in text
    # vLLM's defaults need the fewest GPUs: said as the best or as the fewest, whichever the selection picks
    assert f"100 req/s needs 7 x `{by_number[1]}` = 7 GPUs (16.30 req/s per server, 1 GPU each)" in text
    assert f"- baseline memory-model-guess: 100 req/s needs 4 x `{by_number[0]}` = 8 GPUs" in text


def test_capacity_curves_have_units_zero_based_rates_and_every_measurement(
        tmp_path: Path, capacity_objectives: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import vtune._report as report

    figures: dict[str, Any] = {}
    real_save = report._save

    def keep(fig: Any, path: Path) -> str:
        figures[path.name] = fig
        for ax in fig.axes:  # what the figure shows, read before it is closed
            ax._seen = {"xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "xlim": ax.get_xlim(),
                        "ylim": ax.get_ylim(), "lines": list(ax.get_lines()), "collections": list(ax.collections),
                        "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []}
        return real_save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    url, settings = capacity_study(tmp_path)
    write_report("cap", storage_url=url, studies_dir=settings.studies_dir, configs_dir=settings.configs_dir)
    ttft, itl = (ax._seen for ax in figures["capacity_curves.png"].axes)
    assert ttft["xlabel"].startswith("requests/s") and ttft["ylabel"] == "TTFT p90 (ms)"
    assert itl["ylabel"] == "ITL p90 (ms)"
    assert ttft["xlim"][0] == 0 and ttft["ylim"][0] == 0 and itl["xlim"][0] == 0
    slo = [ln for ln in ttft["lines"] if list(ln.get_ydata()) == [500.0, 500.0]]
    assert len(slo) == 1 and "SLO: TTFT p90 <= 500 ms" in ttft["legend"]
    # 5 configurations, 6 measurements (the guess twice): one line per measurement, the repeat dashed
    curves = [ln for ln in ttft["lines"] if ln not in slo]
    assert len(curves) == 6 and sorted(ln.get_linestyle() for ln in curves).count("--") == 1
    assert "memory-model-guess, 2 GPUs, 2 measurements" in ttft["legend"] and "trial 4 (best), 2 GPUs" in ttft["legend"]
    assert "vllm-defaults, 1 GPU" in ttft["legend"]
    stars = [c for c in ttft["collections"] if len(c.get_offsets()) == 1 and c.get_sizes()[0] > 100]
    assert len(stars) == 6  # every measurement's capacity point
    best_star = max(stars, key=lambda c: c.get_offsets()[0][0])
    assert math.isclose(best_star.get_offsets()[0][0], 31.5224, rel_tol=1e-6)
    assert best_star.get_offsets()[0][1] <= 500.0  # capacity meets the TTFT objective
    history = figures["history.png"].axes[0]._seen
    assert history["ylabel"] == "capacity (req/s)" and history["ylim"][0] == 0
    assert history["xlabel"].startswith("trial number")
    from matplotlib.ticker import MaxNLocator

    assert isinstance(figures["history.png"].axes[0].xaxis.get_major_locator(), MaxNLocator)
