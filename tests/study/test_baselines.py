"""The enqueued baselines on GPU targets (memory model only: no engine is started)."""

from __future__ import annotations

import dataclasses
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
    workload = dataclasses.replace(workload, load=dataclasses.replace(workload.load, streams=streams))
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
