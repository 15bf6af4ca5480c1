"""The best configuration by its mean: the export header, `vtune best --format json`, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import create_trial

from tests.study.test_worker import make_settings
from vtune._cli import main
from vtune._serve_config import ServeConfig
from vtune.study._export import best_record, export_best, mean_result_dict, summarize
from vtune.study._settings import StudySettings
from vtune.study._study import open_study


def add_measurement(study: optuna.Study, settings: StudySettings, value: float, seqs: int,
                    ttft_p99_ms: float) -> None:
    cfg = ServeConfig(model=settings.model, max_model_len=512, max_num_seqs=seqs)
    result = {"goodput_requests_per_second": value, "output_tokens_per_second": 10 * value,
              "ttft_ms": {"p50": 1.0, "p99": ttft_p99_ms}, "errors": "none", "steps": 3}
    study.add_trial(create_trial(value=value, params={}, distributions={}, user_attrs={
        "config": cfg.to_dict(), "flags": cfg.to_flags_line(), "result": result,
        "timings": {"total_s": 60.0}, "run_dir": "x"}))


def measured_twice(tmp_path: Path) -> tuple[optuna.Study, StudySettings, str]:
    settings = make_settings(tmp_path, name="exp")
    url = f"sqlite:///{tmp_path / 'exp.db'}"
    study = open_study(settings, url)
    add_measurement(study, settings, 9.0, 32, 100.0)   # trial 0: config A, a lucky draw
    add_measurement(study, settings, 8.0, 64, 300.0)   # trial 1: config B
    add_measurement(study, settings, 5.0, 32, 300.0)   # trial 2: config A again -> mean 7.0
    add_measurement(study, settings, 9.0, 64, 500.0)   # trial 3: config B again -> mean 8.5, the best
    return study, settings, url


def test_export_header_gives_the_mean_and_its_measurements(tmp_path: Path) -> None:
    study, settings, _ = measured_twice(tmp_path)
    paths = export_best(study, settings)
    header = Path(paths[0]).read_text().splitlines()[0]
    assert header == "# vtune study exp, trial 3: goodput 8.50 req/s (mean of 2 measurements: trials 1, 3)"
    assert Path(paths[1]).read_text().strip().endswith("--max-num-seqs 64")


def test_export_keeps_a_dotted_study_name_whole(tmp_path: Path) -> None:
    study, settings, _ = measured_twice(tmp_path)
    settings.name = "qwen3-1.7b-chatbot"  # Path.with_suffix would write qwen3-1.yaml
    paths = export_best(study, settings)
    assert [Path(p).name for p in paths] == ["qwen3-1.7b-chatbot.yaml", "qwen3-1.7b-chatbot.flags",
                                             "qwen3-1.7b-chatbot.env"]


def test_best_json_gives_the_mean_its_measurements_and_the_mean_result(tmp_path: Path, capsys) -> None:
    _, settings, url = measured_twice(tmp_path)
    assert main(["best", "--study", "exp", "--storage", url, "--studies-dir", str(settings.studies_dir),
                 "--format", "json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["trial"] == 3 and best["trials"] == [1, 3] and best["measurements"] == 2
    assert best["values"] == [8.5] and best["trial_values"] == {"1": [8.0], "3": [9.0]}
    assert best["result"]["goodput_requests_per_second"] == 8.5
    assert best["result"]["ttft_ms"] == {"p50": 1.0, "p99": 400.0} and best["result"]["errors"] == "none"
    assert best["flags"].endswith("--max-num-seqs 64") and best["objectives"] == ["goodput"]


def test_summary_gives_the_mean_and_its_measurements(tmp_path: Path) -> None:
    study, settings, url = measured_twice(tmp_path)
    summary = summarize(study, settings, url, [], [])
    assert summary.best_trial == 3 and summary.best_values == [8.5]
    assert summary.best_measurements == 2 and summary.best_trials == [1, 3]
    assert summary.best_text == "goodput 8.50 req/s (mean of 2 measurements: trials 1, 3)"
    assert best_record(study, settings)["values"] == summary.best_values


def test_mean_result_averages_every_number_and_keeps_the_rest() -> None:
    trials = [create_trial(value=1.0, user_attrs={"result": r}) for r in (
        {"a": 1.0, "p": {"p99": 10.0}, "s": "x", "n": None}, {"a": 3.0, "p": {"p99": 30.0}, "s": "y", "n": 2.0})]
    assert mean_result_dict(trials) == {"a": 2.0, "p": {"p99": 20.0}, "s": "y", "n": 2.0}
    assert mean_result_dict([create_trial(value=1.0)]) is None
