"""Tests of the workload schema's version-2 fields: shared prefixes, turns, images, traces, the CPU rule."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from vtune._errors import VtuneError
from vtune._workload import (
    CPU_MAX_OUTPUT_TOKENS,
    CPU_MAX_REQUEST_TOKENS,
    ImageSpec,
    SharedPrefix,
    Workload,
    load_workload,
    read_trace,
)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "workloads"


def _chatbot() -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / "chatbot.yaml").read_text())


def _write(tmp_path: Path, data: Any, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _trace_rows(n: int = 6, *, shared: bool = True) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        head = 0 if shared else 100 + i
        rows.append({"timestamp": 0.5 * i, "input_length": 700, "output_length": 20, "hash_ids": [head, 1000 + i]})
    return rows


def _trace_file(tmp_path: Path, rows: list[Any], name: str = "trace.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _replay(tmp_path: Path, trace: dict[str, Any] | None = None) -> dict[str, Any]:
    data = yaml.safe_load((CONFIGS / "replay.yaml").read_text())
    data["trace"] = trace or {"file": "trace.jsonl"}
    data["max_model_len_hint"] = 1024
    return data


# ------------------------------------------------------------------ the new fields
def test_chatbot_shares_a_system_prompt_over_turns() -> None:
    wl = load_workload("chatbot", device="gpu")
    assert wl.shared_prefix == SharedPrefix(tokens=256, count=4)
    assert wl.turns == 3
    assert wl.chat and wl.request_format == "/v1/chat/completions"
    assert wl.shares_prefix
    # prefix + turns x (prompt max + output max + chat template tokens)
    assert wl.longest_request_tokens == 256 + 3 * (256 + 128 + 16) <= wl.max_model_len_hint


def test_new_builtins_use_the_new_fields() -> None:
    rag = load_workload("rag", device="gpu")
    assert rag.shared_prefix is not None and rag.shared_prefix.count > 1 and rag.shares_prefix
    assert rag.request_format == "/v1/completions"  # one turn of text
    mm = load_workload("multimodal", device="gpu")
    assert mm.images == ImageSpec(count=1, width=448, height=448)
    assert mm.request_format == "/v1/chat/completions" and not mm.shares_prefix
    replay = load_workload("replay", device="gpu")
    assert replay.load.kind == "replay" and replay.trace is not None
    assert replay.trace.requests == 120 and replay.trace.shares_prefix
    assert replay.trace.longest_tokens <= replay.max_model_len_hint
    reasoning = load_workload("reasoning", device="gpu")
    assert reasoning.output_tokens.mean >= 4000  # GPU-sized
    assert reasoning.step_duration_s >= 60  # a step (and a capacity probe) outlasts a request
    for name in ("batch", "interactive", "long-context"):
        assert not load_workload(name, device="gpu").shares_prefix


def test_new_fields_round_trip_through_to_dict(tmp_path: Path) -> None:
    data = _chatbot()
    data["images"] = {"count": 2, "width": 64, "height": 32}
    wl = load_workload(str(_write(tmp_path, data)), device="gpu")
    again = replace(Workload.from_dict(wl.to_dict()), source=wl.source)
    assert again == wl
    assert again.images == ImageSpec(count=2, width=64, height=32)
    _trace_file(tmp_path, _trace_rows())
    replay = load_workload(str(_write(tmp_path, _replay(tmp_path), "r.yaml")), device="gpu")
    assert Workload.from_dict(replay.to_dict()).trace == replay.trace


def test_one_turn_without_images_stays_on_completions(tmp_path: Path) -> None:
    data = _chatbot()
    del data["turns"]
    wl = load_workload(str(_write(tmp_path, data)), device="gpu")
    assert wl.turns == 1 and wl.request_format == "/v1/completions"
    assert wl.shares_prefix  # the system prompt alone is a shared prefix
    del data["shared_prefix"]
    assert not load_workload(str(_write(tmp_path, data)), device="gpu").shares_prefix


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"schema_version": 1}, "shared_prefix", "schema_version: 2"),
        ({"turns": 0}, "turns", "at least 1"),
        ({"turns": 4}, "max_model_len_hint", "4 turns"),
        ({"shared_prefix": {"tokens": 0}}, "shared_prefix.tokens", "at least 1"),
        ({"shared_prefix": {"tokens": 8, "size": 2}}, "shared_prefix.size", "not a known field"),
        ({"images": {"count": 1, "width": 8, "height": 64}}, "images.width", "at least 16"),
        ({"images": {"count": 0, "width": 64, "height": 64}}, "images.count", "at least 1"),
        ({"images": {"count": 1, "width": 64}}, "images.height", "missing"),
        ({"images": 3}, "images", ""),
        ({"load": {"kind": "replay"}}, "load.kind", "needs a trace"),
        ({"dataset": "x.jsonl"}, "shared_prefix", "synthetic prompts only"),
    ],
)
def test_bad_new_fields_name_the_field(tmp_path: Path, change: dict[str, Any], field: str, words: str) -> None:
    data = copy.deepcopy(_chatbot())
    data.update(change)
    path = _write(tmp_path, data)
    with pytest.raises(VtuneError) as info:
        load_workload(str(path), device="gpu")
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and f"field '{field}'" in msg and words in msg


def test_trace_needs_kind_replay_and_nothing_synthetic(tmp_path: Path) -> None:
    _trace_file(tmp_path, _trace_rows())
    data = _replay(tmp_path)
    data["load"] = {"kind": "concurrent", "streams": 2}
    with pytest.raises(VtuneError, match="field 'trace' is replayed with its own timing"):
        load_workload(str(_write(tmp_path, data)), device="gpu")
    data = _replay(tmp_path)
    data["turns"] = 2
    with pytest.raises(VtuneError, match="field 'turns' does not apply to a trace"):
        load_workload(str(_write(tmp_path, data)), device="gpu")


# ------------------------------------------------------------------------ traces
@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("{oops", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"timestamp": -1, "input_length": 10, "output_length": 5, "hash_ids": [0]}', "'timestamp'"),
        ('{"timestamp": "now", "input_length": 10, "output_length": 5, "hash_ids": [0]}', "'timestamp'"),
        ('{"timestamp": 1, "input_length": 0, "output_length": 5, "hash_ids": []}', "'input_length'"),
        ('{"timestamp": 1, "input_length": 10, "hash_ids": [0]}', "'output_length'"),
        ('{"timestamp": 1, "input_length": 10, "output_length": 5}', "'hash_ids'"),
        ('{"timestamp": 1, "input_length": 10, "output_length": 5, "hash_ids": [-3]}', "'hash_ids'"),
        ('{"timestamp": 1, "input_length": 600, "output_length": 5, "hash_ids": [0]}', "2 blocks of 512"),
    ],
)
def test_bad_trace_line_is_one_line_naming_file_and_line(tmp_path: Path, line: str, words: str) -> None:
    path = _trace_file(tmp_path, [_trace_rows(1)[0], line])
    with pytest.raises(VtuneError) as info:
        read_trace(path)
    msg = str(info.value)
    assert "\n" not in msg and f"{path}:2" in msg and words in msg


def test_trace_file_problems_through_the_workload(tmp_path: Path) -> None:
    path = _write(tmp_path, _replay(tmp_path))
    with pytest.raises(VtuneError, match="cannot read trace file .*trace.jsonl.*check trace.file"):
        load_workload(str(path), device="gpu")
    _trace_file(tmp_path, [""])
    with pytest.raises(VtuneError, match="no requests found"):
        load_workload(str(path), device="gpu")
    _trace_file(tmp_path, [{"timestamp": 0, "input_length": 1500, "output_length": 100, "hash_ids": [0, 1, 2]}])
    with pytest.raises(VtuneError, match=r"'max_model_len_hint' \(1024\) is below the trace's longest request "
                                         r"\(1600 tokens\)"):
        load_workload(str(path), device="gpu")


def test_trace_summary_and_formats(tmp_path: Path) -> None:
    path = _trace_file(tmp_path, _trace_rows(5))
    spec = read_trace(path, time_scale=0.5)
    assert spec.requests == 5 and spec.span_s == pytest.approx(1.0) and spec.longest_tokens == 720
    assert spec.shares_prefix
    assert not read_trace(_trace_file(tmp_path, _trace_rows(5, shared=False), "u.jsonl")).shares_prefix
    # trace_synthetic needs no hash ids
    plain = _trace_file(tmp_path, [{"timestamp": 0, "input_length": 10, "output_length": 5}], "p.jsonl")
    assert read_trace(plain, fmt="trace_synthetic").requests == 1
    with pytest.raises(VtuneError, match="'hash_ids'"):
        read_trace(plain)


def test_bad_trace_through_the_cli_is_one_line_and_exit_2(tmp_path: Path) -> None:
    _trace_file(tmp_path, ['{"timestamp": 0, "input_length": 10}'])
    path = _write(tmp_path, _replay(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "vtune", "bench", "--workload", str(path), "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "'output_length'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_bad_image_spec_through_the_cli_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data = _chatbot()
    data["images"] = {"count": 1, "width": 4, "height": 64}
    path = _write(tmp_path, data)
    proc = subprocess.run([sys.executable, "-m", "vtune", "bench", "--workload", str(path), "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "field 'images.width'" in proc.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the CPU rule
def test_cpu_rule_scales_gpu_sized_reasoning() -> None:
    gpu = load_workload("reasoning", device="gpu")
    cpu = load_workload("reasoning", device="cpu")
    assert cpu.output_tokens.max == CPU_MAX_OUTPUT_TOKENS
    factor = CPU_MAX_OUTPUT_TOKENS / gpu.output_tokens.max
    assert cpu.output_tokens.mean == round(gpu.output_tokens.mean * factor)
    assert cpu.prompt_tokens == gpu.prompt_tokens  # fits already
    assert cpu.max_model_len_hint <= CPU_MAX_REQUEST_TOKENS
    assert cpu.load.streams == 8 and cpu.duration_s == 60 and cpu.warmup_s == 5 and cpu.steps == gpu.steps
    assert cpu.slo == gpu.slo and cpu.name == gpu.name
    # what the load child reads back is valid
    assert replace(Workload.from_dict(cpu.to_dict()), source=cpu.source) == cpu


def test_cpu_rule_leaves_cpu_sized_builtins_alone() -> None:
    for name in ("batch", "chatbot", "interactive", "long-context", "rag", "replay"):
        wl = load_workload(name, device="gpu")
        assert wl.for_device("cpu") is wl, name


def test_cpu_rule_scales_prefix_turns_and_images_together(tmp_path: Path) -> None:
    data = _chatbot()
    data.update(shared_prefix={"tokens": 8000, "count": 3}, turns=4, max_model_len_hint=40000,
                output_tokens={"mean": 2000, "stdev": 500, "min": 500, "max": 4000},
                images={"count": 2, "width": 1280, "height": 720})
    data["load"]["streams"] = 64
    gpu = load_workload(str(_write(tmp_path, data)), device="gpu")
    cpu = gpu.for_device("cpu")
    assert cpu.turns == 4 and cpu.shared_prefix is not None and cpu.shared_prefix.count == 3
    assert 4 * (cpu.output_tokens.max + 16) <= 2048
    assert cpu.longest_request_tokens <= cpu.max_model_len_hint <= CPU_MAX_REQUEST_TOKENS
    assert cpu.shared_prefix.tokens < 8000 and cpu.prompt_tokens.max < gpu.prompt_tokens.max
    assert cpu.images == ImageSpec(count=2, width=224, height=126)
    assert cpu.load.streams == 8
    assert replace(Workload.from_dict(cpu.to_dict()), source=cpu.source) == cpu
    assert gpu.for_device("gpu") is gpu


def test_jsonl_workload_is_one_turn(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "hello there"}) + "\n")
    wl = load_workload(str(path), device="gpu")
    assert wl.turns == 1 and wl.shared_prefix is None and wl.request_format == "/v1/completions"
