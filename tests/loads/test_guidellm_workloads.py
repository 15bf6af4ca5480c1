"""How the v2 workload fields become GuideLLM's scenario: prefixes, turns, images, traces, chat requests.

The scenarios are validated by GuideLLM's own schema, and GuideLLM's data loader
generates the first requests offline with the tiny model's tokenizer (no server).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from vtune._workload import list_workloads, load_workload
from vtune.loads._capacity_probe import probe_scenario
from vtune.loads._guidellm_child import (
    _data_args,
    _profile_args,
    _scenario,
    model_has_vision,
    workload_for_model,
)
from vtune.loads._results import Percentiles, TrialResult


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    from vtune._tiny_model import build_tiny_model

    return build_tiny_model()


def _spec(model_dir: Path | str) -> dict[str, Any]:
    return {"target_url": "http://127.0.0.1:9", "served_model": "m", "tokenizer_dir": str(model_dir), "seed": 3}


def _first_requests(scenario: Any, n: int) -> list[Any]:
    from guidellm.benchmark.entrypoints import resolve_to_single_benchmark
    from guidellm.data import create_data_loader

    args = resolve_to_single_benchmark(scenario.get_benchmarks())

    async def make() -> Any:
        return await create_data_loader(
            loader_config=args.data_loader, data_config=args.data, tokenizer_config=args.tokenizer,
            column_mapper_config=args.data_column_mapper, preprocessors_config=args.data_preprocessors,
            finalizer_config=args.data_finalizer, random_seed=args.seed.value)

    out = []
    for item in asyncio.run(make()):
        out.append(item)
        if len(out) >= n:
            break
    return out


def _nodes(graph: Any) -> list[Any]:
    return [graph.nodes[k] for k in sorted(graph.nodes)]


# ------------------------------------------------------------------ data arguments
def test_chatbot_data_has_shared_prefixes_and_turns() -> None:
    wl = load_workload("chatbot", device="gpu")
    (text,) = _data_args(wl, 0)
    assert text["kind"] == "synthetic_text"
    assert text["prefix_buckets"] == [{"bucket_weight": 100, "prefix_count": 4, "prefix_tokens": 256}]
    assert text["turns"] == 3


def test_single_turn_text_has_neither() -> None:
    (text,) = _data_args(load_workload("batch", device="gpu"), 0)
    assert "prefix_buckets" not in text and "turns" not in text


def test_images_are_a_second_data_source() -> None:
    wl = load_workload("multimodal", device="gpu")
    text, images = _data_args(wl, 1)
    assert text["kind"] == "synthetic_text" and "turns" not in text
    assert images == {"kind": "synthetic_image", "width": 448, "height": 448, "images_per_request": 1, "seed": 1}


def test_trace_becomes_guidellms_mooncake_reader_and_replay_profile() -> None:
    wl = load_workload("replay", device="gpu")
    assert wl.trace is not None
    (trace,) = _data_args(wl, 0)
    assert trace["kind"] == "mooncake" and trace["hash_id_block_size"] == 128
    assert trace["source"] == {"kind": "json_file", "path": str(wl.trace.path)}
    assert trace["time_scale"] == 1.0
    # repeated so that a step never runs out of requests
    assert trace["copies"] * wl.trace.span_s >= wl.step_duration_s + wl.warmup_s
    assert _profile_args(wl, 0) == {"kind": "replay", "time_scale": 1.0, "schedule_turn": "timestamp"}


@pytest.mark.parametrize("name", list_workloads())
def test_every_builtin_scenario_is_valid_for_guidellm(name: str, tiny_model: Path) -> None:
    from guidellm.benchmark.entrypoints import resolve_to_single_benchmark

    wl = load_workload(name, device="cpu")
    args = resolve_to_single_benchmark(_scenario(_spec(tiny_model), wl, 0).get_benchmarks())
    assert args.backend.request_format == wl.request_format
    assert [d.kind for d in args.data] == [d["kind"] for d in _data_args(wl, 0)]


def test_chat_workloads_go_to_chat_completions_also_in_capacity_probes(tiny_model: Path) -> None:
    for name, fmt in (("chatbot", "/v1/chat/completions"), ("multimodal", "/v1/chat/completions"),
                      ("rag", "/v1/completions")):
        wl = load_workload(name, device="cpu")
        for scenario in (_scenario(_spec(tiny_model), wl, 0), probe_scenario(_spec(tiny_model), wl, 0, 4, 5.0, 0.0)):
            assert scenario.model_dump()["spec"]["backend"]["request_format"] == fmt, name


# ---------------------------------------------------------------- vision towers
def test_images_only_for_a_model_with_a_vision_tower(tmp_path: Path, tiny_model: Path) -> None:
    wl = load_workload("multimodal", device="gpu")
    assert not model_has_vision(tiny_model)
    text_only = workload_for_model(wl, tiny_model)
    assert text_only.images is None and len(_data_args(text_only, 0)) == 1
    vl = tmp_path / "vl"
    vl.mkdir()
    (vl / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", "vision_config": {"patch_size": 16}}))
    assert model_has_vision(vl)
    assert workload_for_model(wl, vl) is wl
    assert model_has_vision(tmp_path / "missing") is False
    chat = load_workload("chatbot", device="gpu")
    assert workload_for_model(chat, tiny_model) is chat  # nothing to drop


# ------------------------------------------------- GuideLLM generates the requests
def test_guidellm_makes_conversations_with_shared_system_prompts(tiny_model: Path) -> None:
    wl = load_workload("chatbot", device="cpu")
    graphs = _first_requests(_scenario(_spec(tiny_model), wl, 0), 12)
    prefixes = set()
    for graph in graphs:
        nodes = _nodes(graph)
        assert len(nodes) == 3  # one request per turn
        first = nodes[0].request.columns
        prefixes.add(first["prefix_column"][0])
        assert all("prefix_column" not in n.request.columns for n in nodes[1:])
    assert 1 < len(prefixes) <= 4  # a handful of system prompts, shared


def test_guidellm_attaches_images_for_a_vision_model(tmp_path: Path, tiny_model: Path) -> None:
    vl = tmp_path / "vl"
    shutil.copytree(tiny_model, vl)
    config = json.loads((vl / "config.json").read_text())
    config["vision_config"] = {"patch_size": 16}
    (vl / "config.json").write_text(json.dumps(config))
    wl = workload_for_model(load_workload("multimodal", device="cpu"), vl)
    (graph,) = _first_requests(_scenario(_spec(vl), wl, 0), 1)
    columns = _nodes(graph)[0].request.columns
    assert columns["image_column"][0]["image"].startswith("data:image/jpeg;base64,")
    assert columns["text_column"]


def test_guidellm_replays_the_trace_with_its_timestamps(tiny_model: Path) -> None:
    wl = load_workload("replay", device="cpu")
    graphs = _first_requests(_scenario(_spec(tiny_model), wl, 0), 5)
    rows = [json.loads(line) for line in Path(str(wl.trace.path if wl.trace else "")).read_text().splitlines()[:5]]
    texts = []
    for graph, row in zip(graphs, rows, strict=True):
        (node,) = _nodes(graph)
        assert node.request.columns["output_tokens_count_column"] == [row["output_length"]]
        assert node.request.columns["prompt_tokens_count_column"] == [row["input_length"]]
        assert node.settings.relative_timestamp == pytest.approx(row["timestamp"] - rows[0]["timestamp"])
        texts.append(node.request.columns["text_column"][0])
    # rows that start with the same two hash ids start with the same 256 tokens of text
    same = [i for i in range(1, 5) if rows[i]["hash_ids"][:2] == rows[0]["hash_ids"][:2]]
    other = [i for i in range(1, 5) if rows[i]["hash_ids"][0] != rows[0]["hash_ids"][0]]
    assert same and other
    assert len(os.path.commonprefix([texts[0], texts[same[0]]])) > 500
    assert len(os.path.commonprefix([texts[0], texts[other[0]]])) < 100


# ------------------------------------------------------------- trial results
def _result(**kw: Any) -> TrialResult:
    p = Percentiles.from_values([1.0, 2.0])
    base: dict[str, Any] = {
        "output_tokens_per_second": 1.0, "requests_per_second": 1.0, "goodput_requests_per_second": 1.0,
        "ttft_ms": p, "itl_ms": p, "tpot_ms": p, "e2e_latency_ms": p, "successful_requests": 2,
        "errored_requests": 0, "incomplete_requests": 0, "duration_s": 2.0, "slo_attainment": 1.0,
        "slo_met": {"ttft_ms": True}}
    base.update(kw)
    return TrialResult(**base)


def test_trial_result_carries_the_prefix_cache_hit_rate() -> None:
    res = _result()
    assert res.prefix_cache_hit_rate is None and res.to_dict()["prefix_cache_hit_rate"] is None
    hit = res.with_server_metrics({"prefix_cache_hit_rate": 0.75, "samples": 3})
    assert hit.prefix_cache_hit_rate == 0.75 and hit.to_dict()["prefix_cache_hit_rate"] == 0.75
    assert TrialResult.from_dict(hit.to_dict()) == hit
    assert res.with_server_metrics(None).prefix_cache_hit_rate is None
    old = res.to_dict()
    del old["prefix_cache_hit_rate"]  # a trial.json from before the field
    assert TrialResult.from_dict(old).prefix_cache_hit_rate is None
