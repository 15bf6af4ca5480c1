"""The enqueued baselines on GPU targets (memory model only: no engine is started)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from tests.shapes import LLAMA_8B
from vtune._memory import Gpu
from vtune._model_shape import shape_from_config
from vtune._objectives import parse_objectives
from vtune._serve_config import ServeConfig
from vtune._space import Dimension, SearchSpace
from vtune._target import Target
from vtune._workload import load_workload
from vtune.study._baselines import baseline_configs
from vtune.study._settings import StudySettings

LLAMA_70B = {**LLAMA_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8}


def _settings(gpu: Gpu, streams: int | None) -> StudySettings:
    workload = load_workload("chatbot")
    # The single-turn chatbot's size (384 tokens a request) these expectations were worked out for.
    workload = dataclasses.replace(workload, load=dataclasses.replace(workload.load, streams=streams),
                                   max_model_len_hint=384)
    space = SearchSpace([
        Dimension("parallel_layout", "categorical", choices=["tp1-pp1-dp2", "tp2-pp1-dp1"]),
        Dimension("max_num_seqs", "categorical", choices=[64, 256, 1024]),
    ])
    return StudySettings(
        name="t", model="m", workload=workload, space=space, base=ServeConfig(model="m", max_model_len=512),
        objectives=parse_objectives("goodput"),
        target=Target(device="gpu", gpus=(0, 1), gpu=gpu, gpu_names=(gpu.name,) * 2, nvlink=True),
        studies_dir=Path("studies"), configs_dir=Path("configs"))


def _guess(settings: StudySettings, arch: dict) -> ServeConfig:
    return dict(baseline_configs(settings, shape_from_config(arch)))["memory-model-guess"]


def test_guess_prefers_replicas_once_the_kv_cache_holds_the_streams() -> None:
    g = _guess(_settings(Gpu("H200", 139.8), streams=256), LLAMA_8B)
    assert (g.tp, g.dp) == (1, 2)  # 8B fits one H200 with room for 256 chatbot streams many times over
    assert g.max_num_seqs == 1024


@pytest.mark.parametrize("streams", [256, None])
def test_guess_takes_tensor_parallel_when_one_gpu_cannot_hold_the_model(streams: int | None) -> None:
    g = _guess(_settings(Gpu("H100-80GB", 79.18), streams=streams), LLAMA_70B)
    assert (g.tp, g.dp) == (2, 1)


def test_guess_without_a_stream_count_holds_the_most_requests() -> None:
    g = _guess(_settings(Gpu("H200", 139.8), streams=None), LLAMA_8B)
    assert (g.tp, g.dp) == (2, 1)  # TP=2 splits the weights: the most KV room in all


# ------------------------------------------------ what a baseline trial records
def ran_with(name: str, cfg: ServeConfig):
    """The value a config ran with for a dimension, read straight from the config (not via vtune's helpers)."""
    if name == "parallel_layout":
        return f"tp{cfg.tensor_parallel_size or 1}-pp{cfg.pipeline_parallel_size or 1}-dp{cfg.data_parallel_size or 1}"
    if name.isupper():
        return cfg.env.get(name)
    return getattr(cfg, name)


def same_value(param, value) -> bool:
    if isinstance(param, float) and isinstance(value, float):  # a stepped float runs as its step's value:
        return math.isclose(param, value, rel_tol=0.0, abs_tol=1e-9)  # Optuna stores 0.8200000000000001
    return str(param) == value if isinstance(value, str) and not isinstance(param, str) else param == value


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_no_trial_carries_parameters_it_did_not_run_with(tmp_path: Path, device: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import re

    import optuna
    from optuna.trial import TrialState

    from tests.study.test_worker import fake_trial, make_settings
    from vtune._memory import resolve_gpu
    from vtune._model_shape import load_model_shape
    from vtune._space import default_space
    from vtune._target import apply_engine_defaults
    from vtune.study._storage import make_storage
    from vtune.study._study import run_study

    if device == "gpu":  # a fake node of two H200s (nothing is launched: the fake trial function measures)
        target = Target(device="gpu", gpus=(0, 1), gpu=resolve_gpu("H200"), gpu_names=("NVIDIA H200",) * 2)
    else:
        target = Target(device="cpu", cpu_cores=(0, 1))
    settings = make_settings(tmp_path, target=target)
    settings.base = apply_engine_defaults(settings.base, target)  # as build_settings does: the CPU KV space
    settings.space = default_space(device=device, num_gpus=target.num_gpus, shape=load_model_shape(settings.model),
                                   cpu_cores=len(target.cpu_cores))
    # Beyond the 3 baselines and TPE's 4 random startup trials: TPE models the history, which
    # would raise on a parameter outside the space's choices if an off-space trial were in it.
    summary = run_study(settings, n_trials=10, trial_fn=fake_trial, quiet=False, export=False)
    printed = capsys.readouterr()
    study = optuna.load_study(study_name="w", storage=make_storage(summary.storage, heartbeat=False))
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.FAIL) == 0
    baselines = {t.user_attrs["baseline"]: t for t in trials if t.user_attrs.get("baseline")}
    assert set(baselines) == {"memory-model-guess", "vllm-defaults", "size-preset"}
    for t in trials:
        cfg = ServeConfig.from_dict(t.user_attrs["config"])
        for name, value in t.params.items():
            assert same_value(value, ran_with(name, cfg)), (t.number, t.user_attrs.get("baseline"), name, value)
        if t.user_attrs.get("baseline") is None:  # sampled trials have every dimension
            assert set(t.params) == {d.name for d in settings.space.active}
    defaults = baselines["vllm-defaults"]
    cfg = ServeConfig.from_dict(defaults.user_attrs["config"])
    if device == "gpu":
        # vLLM's defaults on an H200, written out: one GPU, 1024 seqs, 8192 batched tokens, 0.92.
        assert (cfg.tp, cfg.dp) == (1, 1)
        assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.gpu_memory_utilization) == (1024, 8192, 0.92)
        assert defaults.params == {"max_num_seqs": 1024, "max_num_batched_tokens": 8192,
                                   "gpu_memory_utilization": 0.92}
        assert set(defaults.user_attrs["off_space"]) == {"parallel_layout"}  # tp1-pp1-dp1 is not offered on 2 GPUs
        assert "--data-parallel-size" not in defaults.user_attrs["flags"]
    else:
        assert (cfg.max_num_seqs, cfg.max_num_batched_tokens) == (128, 2048)  # vLLM's CPU engine defaults
        assert not defaults.user_attrs.get("off_space")  # a point of the CPU space: the sampler learns from it
        preset = baselines["size-preset"]
        assert preset.params["max_num_seqs"] == 512  # as it ran, outside the space's [2, 256] (not 256)
        assert set(preset.user_attrs["off_space"]) == {"max_num_seqs"}
    for b in baselines.values():
        assert ServeConfig.from_dict(b.user_attrs["config"]).to_flags_line() == b.user_attrs["flags"]
    # A stepped float reads as its step's value in the flags and the progress lines (not 0.8200000000000001).
    long_float = re.compile(r"\d\.\d{7,}")
    assert not [t.user_attrs["flags"] for t in trials if long_float.search(t.user_attrs["flags"])]
    assert not long_float.findall(printed.out + printed.err)


def test_the_sampler_learns_only_from_trials_inside_the_space() -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.trial import create_trial

    from vtune.study._baselines import InSpaceSampler

    space = {"n": IntDistribution(1, 10), "c": CategoricalDistribution(["a", "b"])}
    study = optuna.create_study(direction="maximize")
    for i in range(6):
        study.add_trial(create_trial(value=float(i), params={"n": 1 + i, "c": "ab"[i % 2]}, distributions=space))
    # An off-space baseline: n outside [1, 10] (recorded with the range widened), c not recordable.
    study.add_trial(create_trial(value=100.0, params={"n": 50}, distributions={"n": IntDistribution(1, 50)},
                                 user_attrs={"baseline": "vllm-defaults", "off_space": {"n": "...", "c": "..."}}))
    seen: list[list[int]] = []

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, param_name, param_distribution):
            seen.append([t.number for t in study.get_trials(deepcopy=False)])
            seen.append([t.number for t in study.trials])
            return super().sample_independent(study, trial, param_name, param_distribution)

    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    InSpaceSampler(Spy(seed=0)).sample_independent(study, frozen, "n", space["n"])
    assert seen and all(6 not in numbers for numbers in seen)
    # Multivariate TPE keeps n in its joint model only when the off-space trial is kept out of its view.
    assert "n" not in optuna.samplers.TPESampler(multivariate=True).infer_relative_search_space(study, frozen)
    tpe = InSpaceSampler(optuna.samplers.TPESampler(multivariate=True, n_startup_trials=2, seed=0))
    assert set(tpe.infer_relative_search_space(study, frozen)) == {"n", "c"}
    params = tpe.sample_relative(study, frozen, tpe.infer_relative_search_space(study, frozen))
    assert 1 <= params["n"] <= 10 and params["c"] in ("a", "b")
