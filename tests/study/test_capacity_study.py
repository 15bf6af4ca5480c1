"""Capacity studies with a fake trial function: values, search bounds from study knowledge, early stop, target rate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.capacity_fakes import FakeCapacityTrial, fake_search, make_probe
from tests.study.test_worker import make_settings
from vtune._cli import main as cli_main
from vtune._errors import VtuneError
from vtune._memory import estimate_memory
from vtune._objectives import parse_objectives
from vtune._serve_config import ServeConfig
from vtune._trial import CapacityOptions
from vtune.study._capacity import search_bounds
from vtune.study._export import best_record
from vtune.study._pruner import NoiseAwarePruner
from vtune.study._selection import best_configurations
from vtune.study._settings import build_settings
from vtune.study._study import run_study


def true_streams(cfg: ServeConfig) -> int:
    """The fake server's capacity: its batch, up to 24 streams."""
    return min(cfg.max_num_seqs or 256, 24)


def capacity_settings(root: Path, objective: str = "capacity", **kw: Any) -> Any:
    settings = make_settings(root, name="cap", enqueue=[["--max-num-seqs", "2"], ["--max-num-seqs", "32"]], **kw)
    settings.objectives = parse_objectives(objective)
    return settings


def load(settings: Any) -> optuna.Study:
    return optuna.load_study(study_name=settings.name, storage=f"sqlite:///{settings.studies_dir / 'cap.db'}")


@pytest.fixture(scope="module")
def capacity_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, optuna.Study, FakeCapacityTrial]:
    root = tmp_path_factory.mktemp("capstudy")
    settings = capacity_settings(root)
    fake = FakeCapacityTrial(true_streams)
    run_study(settings, n_trials=14, trial_fn=fake, export=False, quiet=True, max_concurrent_trials=1)
    return settings, load(settings), fake


def test_every_launched_trial_keeps_its_probes_and_its_capacity_is_its_value(capacity_run: Any) -> None:
    _, study, fake = capacity_run
    launched = [t for t in study.trials if t.user_attrs.get("run_dir")]
    assert len(launched) == len(fake.calls) >= 10
    for t in launched:
        cap = t.user_attrs["capacity"]
        assert cap["probes"] and all("streams" in p and "slo_met" in p for p in cap["probes"])
        assert t.user_attrs["num_gpus"] == 1
        assert t.constraints == {}  # capacity meets the SLOs by construction: no constraint
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(cap["requests_per_second"])
            assert cap["capacity_streams"] == true_streams(ServeConfig.from_dict(t.user_attrs["config"]))
    by_baseline = {t.user_attrs.get("baseline"): t for t in launched}
    assert by_baseline["enqueued-1"].value > by_baseline["enqueued-0"].value  # max-num-seqs 32 beats 2


def test_each_search_starts_at_the_best_capacity_so_far_within_the_configuration(capacity_run: Any) -> None:
    settings, study, fake = capacity_run
    best_so_far: int | None = None
    for cfg, options in fake.calls:
        assert options is not None
        seqs = cfg.max_num_seqs
        est = estimate_memory(*_shape_and(settings, cfg))
        kv = est.kv_cache_tokens // (128 + 64)  # the chatbot's mean request
        expected = min(best_so_far or 8, seqs, kv)  # the workload's 8 streams before anything is known
        assert options.start_streams == expected, (cfg.to_flags_line(), best_so_far)
        assert options.max_streams == max(expected, min(2 * seqs, 2 * kv, 1024))
        assert options.tolerance == 0.25  # the CPU engine
        done = true_streams(cfg)
        # what the study knows afterwards: the best configuration's capacity (values are 0.5 req/s per stream)
        t = next(t for t in study.trials if t.user_attrs.get("flags") == cfg.to_flags_line())
        if t.state == TrialState.COMPLETE:
            best_so_far = max(best_so_far or 0, done)


def _shape_and(settings: Any, cfg: ServeConfig) -> tuple[Any, ServeConfig, Any]:
    from vtune._model_shape import load_model_shape

    return load_model_shape(settings.model), cfg, settings.target.gpu


def test_search_bounds_clamp_by_batch_and_kv_cache() -> None:
    cfg = ServeConfig(model="m", max_num_seqs=64, data_parallel_size=2)
    assert search_bounds(cfg, None, 8, None, 192) == (8, 256)  # 2 x 64 x DP 2
    assert search_bounds(cfg, 500.0, 8, None, 192) == (128, 256)  # the best so far, clamped by max-num-seqs x DP
    est = type("E", (), {"max_num_seqs": 64, "kv_cache_tokens": 192 * 20})()
    assert search_bounds(cfg, 100.0, 8, est, 192) == (40, 80)  # KV: 20 requests x DP 2
    assert search_bounds(ServeConfig(model="m", max_num_seqs=4096), None, None, None, 192) == (4, 1024)


def test_pruner_stops_at_the_first_probe_below_the_best_less_noise(capacity_run: Any) -> None:
    _, study, _ = capacity_run
    pruned = [t for t in study.trials if t.user_attrs.get("pruned_by") == "early_stopping"]
    assert pruned, "the fake landscape has sampled configurations far below the best"
    best_streams = max(t.user_attrs["capacity"]["capacity_streams"] for t in study.trials
                       if t.state == TrialState.COMPLETE)
    for t in pruned:
        assert t.state == TrialState.PRUNED and not t.user_attrs.get("baseline")
        cap = t.user_attrs["capacity"]
        last = cap["probes"][-1]
        assert cap["bounded_by"] == "stopped" and not last["slo_met"]
        assert last["streams"] < best_streams * 0.85
        # stopped at the first probe that tells: no earlier one failed below the bar
        assert all(p["slo_met"] or p["streams"] >= best_streams * 0.85 for p in cap["probes"][:-1])
        assert t.user_attrs["gpu_seconds_saved"] > 0
    for t in study.trials:
        if t.user_attrs.get("baseline"):
            assert t.user_attrs.get("pruned_by") != "early_stopping"


def _study_with_best(tmp_path: Path, best_streams: int = 32, objective: str = "capacity") -> optuna.Study:
    tmp_path.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'p.db'}", study_name="p")
    study.set_user_attr("vtune", {"objectives": [objective]})
    for streams, flags in ((best_streams, "--a"), (best_streams // 2, "--b")):
        cap = fake_search(streams, CapacityOptions(start_streams=streams, max_streams=1024))
        gpus = 2 if objective != "capacity" else 1
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=cap.requests_per_second / gpus,  # the objective's value
            user_attrs={"capacity": cap.to_dict(), "flags": flags, "num_gpus": gpus}))
    return study


def test_prune_capacity_rule(tmp_path: Path) -> None:
    study = _study_with_best(tmp_path)
    running = study.ask()
    pruner = NoiseAwarePruner()
    assert pruner.prune_capacity(study, running, make_probe(0, 16, False))  # 16 < 32 x 0.85
    assert not pruner.prune_capacity(study, running, make_probe(0, 28, False))  # within the noise allowance
    assert not pruner.prune_capacity(study, running, make_probe(0, 4, True))  # passing probes never stop
    running.set_user_attr("baseline", "vllm-defaults")
    assert not pruner.prune_capacity(study, running, make_probe(0, 4, False))  # baselines are never stopped
    # measured noise widens the allowance: the best measured twice, 32 and 16 streams' rates
    noisy = _study_with_best(tmp_path / "n")
    cap = fake_search(16, CapacityOptions(start_streams=16, max_streams=1024), rps_per_stream=1.0)
    noisy.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=cap.requests_per_second / 2,
                                              user_attrs={"capacity": cap.to_dict(), "flags": "--a"}))
    assert not pruner.prune_capacity(noisy, noisy.ask(), make_probe(0, 8, False))


def test_prune_capacity_per_gpu_compares_rates_per_gpu(tmp_path: Path) -> None:
    study = _study_with_best(tmp_path, 32, "capacity_per_gpu")  # best: 32 streams, 16 req/s on 2 GPUs = 8 per GPU
    running = study.ask()
    pruner = NoiseAwarePruner()
    assert not pruner.prune_capacity(study, running, make_probe(0, 16, False), num_gpus=1, per_gpu=True)
    assert pruner.prune_capacity(study, running, make_probe(0, 16, False), num_gpus=4, per_gpu=True)  # 2 per GPU


def test_prune_capacity_compares_rates_not_streams(tmp_path: Path) -> None:
    """A faster configuration reaches its capacity at fewer streams: it must not be stopped for that."""
    study = _study_with_best(tmp_path)  # best: 32 streams at 0.5 req/s each = 16 req/s
    running, pruner = study.ask(), NoiseAwarePruner()
    assert not pruner.prune_capacity(study, running, make_probe(0, 24, False, rps_per_stream=0.8))  # 19.2 req/s
    assert pruner.prune_capacity(study, running, make_probe(0, 24, False, rps_per_stream=0.5))  # 12 < 16 x 0.85
    errored = dataclasses.replace(make_probe(0, 8, False), fail_reason="errors")
    assert not pruner.prune_capacity(study, running, errored)  # failed on errors, not the SLOs: no bound


def test_target_rate_prefers_the_fewest_gpus(tmp_path: Path) -> None:
    from tests.test_report import capacity_study

    url, settings = capacity_study(tmp_path, target_rate_rps=100.0)
    study = optuna.load_study(study_name="cap", storage=url)
    flags = {t.number: t.user_attrs["flags"] for t in study.trials}
    # without a rate: the highest capacity (trial 4, 31.52 req/s on 2 GPUs); 100 req/s: vLLM's defaults, 7 x 1 GPU
    assert best_configurations(study, target_rate_rps=None)[0].key == flags[1]
    study.set_user_attr("target_rate_rps", None)
    assert best_configurations(study)[0].key == flags[4]
    record = best_record(study, settings, target_rate_rps=100.0)
    assert record is not None and record["flags"] == flags[1]
    cap = record["capacity"]
    assert (cap["target_rate_rps"], cap["replicas"], cap["gpus"]) == (100.0, 7, 7)
    assert cap["concurrency"] > 0 and cap["requests_per_second"] == pytest.approx(16.30, abs=0.01)
    assert cap["output_tokens_per_second"] > 0 and 0 < cap["slo_attainment"] <= 1
    assert cap["probes"] and cap["probes"][0]["streams"] and cap["measurements"] == 1
    assert cap["mean_requests_per_second"] == pytest.approx(cap["requests_per_second"])
    assert record["target_rate_line"] == f"100 req/s needs 7 x {flags[1]} = 7 GPUs"


def test_best_json_without_rate_has_the_mean_over_measurements(tmp_path: Path) -> None:
    from tests.test_report import capacity_study

    url, settings = capacity_study(tmp_path)
    study = optuna.load_study(study_name="cap", storage=url)
    record = best_record(study, settings)
    assert record is not None and record["trial"] == 4
    cap = record["capacity"]
    assert "replicas" not in cap and "target_rate_line" not in record
    assert cap["concurrency"] == 176 and cap["requests_per_second"] == pytest.approx(31.52, abs=0.01)
    assert cap["num_gpus"] == 2 and cap["requests_per_second_per_gpu"] == pytest.approx(15.76, abs=0.01)


def test_best_cli_target_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_report import capacity_study

    url, settings = capacity_study(tmp_path)
    loc = ["--study", "cap", "--storage", url, "--studies-dir", str(settings.studies_dir)]
    assert cli_main(["best", *loc, "--format", "json", "--target-rate", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["capacity"]["replicas"], out["capacity"]["gpus"]) == (7, 7)
    assert cli_main(["best", *loc, "--target-rate", "100"]) == 0
    got = capsys.readouterr()
    assert got.out.strip() == out["flags"]  # stdout: the flags line alone
    assert got.err.strip() == out["target_rate_line"]
    assert cli_main(["best", *loc, "--target-rate", "-3"]) == 2
    assert "--target-rate must be a number of requests/s above 0" in capsys.readouterr().err


def test_target_rate_needs_a_capacity_objective(tmp_path: Path) -> None:
    with pytest.raises(VtuneError, match="--target-rate needs a capacity objective"):
        build_settings(workload="chatbot", objectives="goodput", target_rate_rps=10.0,
                       target=make_settings(tmp_path).target)


def test_target_rate_is_kept_in_the_study_and_said_at_the_end(tmp_path: Path) -> None:
    settings = capacity_settings(tmp_path)
    settings.target_rate_rps = 20.0
    summary = run_study(settings, n_trials=5, trial_fn=FakeCapacityTrial(true_streams), export=False, quiet=True)
    study = load(settings)
    assert study.user_attrs["target_rate_rps"] == 20.0
    assert summary.target_rate_line is not None and summary.target_rate_line.startswith("20 req/s needs ")
    best = best_configurations(study)[0]
    servers = -(-20.0 // best.values[0])
    assert summary.target_rate_line.endswith(f"= {int(servers)} GPUs") or summary.target_rate_line.endswith(
        "= 1 GPU")


def test_capacity_per_gpu_study_values_divide_by_the_layout(tmp_path: Path) -> None:
    settings = capacity_settings(tmp_path, "capacity_per_gpu")
    run_study(settings, n_trials=4, trial_fn=FakeCapacityTrial(true_streams), export=False, quiet=True)
    for t in load(settings).trials:
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(t.user_attrs["capacity"]["requests_per_second"] / t.user_attrs["num_gpus"])


def test_a_trial_function_without_capacity_fails_the_trial(tmp_path: Path) -> None:
    from tests.study.test_worker import fake_trial

    settings = capacity_settings(tmp_path)
    summary = run_study(settings, n_trials=2, trial_fn=fake_trial, export=False, quiet=True)
    assert summary.failed == 2
