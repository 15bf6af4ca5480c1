"""Tests of vtune._workload: built-in workloads, user YAML, JSONL prompts, validation."""

from __future__ import annotations

import copy
import filecmp
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from vtune._errors import VtuneError
from vtune._workload import (
    LOAD_KINDS,
    SCHEMA_VERSION,
    Workload,
    builtin_workload_dirs,
    list_workloads,
    load_workload,
    read_prompts_jsonl,
)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "workloads"
BUILTINS = ["batch", "chatbot", "interactive", "long-context", "multimodal", "rag", "reasoning", "replay"]


def _chatbot_dict() -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / "chatbot.yaml").read_text())


def _write(tmp_path: Path, data: Any, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_builtins_are_listed_and_valid() -> None:
    assert list_workloads() == BUILTINS
    assert CONFIGS in builtin_workload_dirs()
    for name in BUILTINS:
        wl = load_workload(name)
        assert wl.name == name
        assert wl.schema_version == SCHEMA_VERSION
        assert wl.load.kind in LOAD_KINDS
        assert wl.description
        assert wl.steps >= 1 and wl.step_duration_s >= 1.0
        assert wl.max_model_len_hint >= wl.longest_request_tokens
        assert wl.slo.ttft_ms.max_ms > 0 and wl.slo.itl_ms.max_ms > 0
        # Every file says what its fields mean.
        text = (CONFIGS / f"{name}.yaml").read_text()
        assert text.startswith("# vtune workload")


def test_chatbot_defaults_fit_the_cpu_tiny_model() -> None:
    wl = load_workload("chatbot")
    assert wl.load.kind == "concurrent" and wl.load.streams == 8
    assert wl.prompt_tokens.mean == 128 and wl.output_tokens.mean == 64
    assert wl.max_model_len_hint <= 2048
    assert wl.slo.ttft_ms.percentile == 90 and wl.slo.ttft_ms.max_ms == 500
    for name in BUILTINS:  # the tiny model has 4096 positions (sized by the CPU rule)
        wl = load_workload(name, device="cpu")
        assert wl.longest_request_tokens <= wl.max_model_len_hint <= 4096


def test_installed_copies_match_the_source_of_truth() -> None:
    copies = REPO / "vtune" / "data" / "workloads"
    if not copies.is_dir():
        pytest.skip("no packaged copies: configs/workloads is the only copy")
    names = sorted(p.name for p in CONFIGS.glob("*.yaml")) + sorted(p.name for p in CONFIGS.glob("*.jsonl"))
    assert sorted(p.name for p in copies.glob("*.yaml")) + sorted(p.name for p in copies.glob("*.jsonl")) == names
    match, mismatch, errors = filecmp.cmpfiles(CONFIGS, copies, names, shallow=False)
    assert mismatch == [] and errors == []


def test_env_dir_takes_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _chatbot_dict()
    data["load"]["streams"] = 3
    _write(tmp_path, data, "chatbot.yaml")
    monkeypatch.setenv("VTUNE_WORKLOADS_DIR", str(tmp_path))
    assert load_workload("chatbot").load.streams == 3


def test_no_builtins_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vtune._workload as wmod

    monkeypatch.setattr(wmod, "builtin_workload_dirs", lambda: [])
    assert list_workloads() == []
    with pytest.raises(VtuneError, match="VTUNE_WORKLOADS_DIR"):
        load_workload("chatbot")


def test_user_yaml_and_round_trip(tmp_path: Path) -> None:
    data = _chatbot_dict()
    data["name"] = "mine"
    data["load"] = {"kind": "poisson", "rate_per_s": 2.5, "streams": 16}
    data["slo"]["tpot_ms"] = {"percentile": 50, "max_ms": 40}
    path = _write(tmp_path, data)
    wl = load_workload(str(path))
    assert wl.name == "mine"
    assert wl.load.rate_per_s == 2.5 and wl.load.streams == 16
    assert wl.slo.tpot_ms is not None and wl.slo.tpot_ms.max_ms == 40
    assert [n for n, _ in wl.slo.items()] == ["ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"]
    again = Workload.from_dict(wl.to_dict(), source=str(path))
    assert again == wl
    assert again.to_dict() == wl.to_dict()


def test_with_duration() -> None:
    wl = load_workload("chatbot")
    short = wl.with_duration(20)
    assert short.duration_s == 20 and short.steps == wl.steps
    assert short.step_duration_s == pytest.approx(20 / wl.steps)
    with pytest.raises(VtuneError, match="too short"):
        wl.with_duration(0.5)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        data = data[key]
    if value is _DELETE:
        del data[keys[-1]]
    else:
        data[keys[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("dotted", "value", "field"),
    [
        ("schema_version", 3, "schema_version"),
        ("name", "", "name"),
        ("name", _DELETE, "name"),
        ("prompt_tokens.mean", "lots", "prompt_tokens.mean"),
        ("prompt_tokens.mean", 1000, "prompt_tokens.mean"),
        ("prompt_tokens.min", 0, "prompt_tokens.min"),
        ("output_tokens.stdev", -1, "output_tokens.stdev"),
        ("output_tokens.max", 8, "output_tokens.max"),
        ("output_tokens.mean", 64.5, "output_tokens.mean"),
        ("output_tokens.mean", True, "output_tokens.mean"),
        ("output_tokens", [1, 2], "output_tokens"),
        ("load.kind", "burst", "load.kind"),
        ("load.streams", _DELETE, "load.streams"),
        ("load.streams", 0, "load.streams"),
        ("load.rate_per_s", 3.0, "load.rate_per_s"),
        ("load.stream", 8, "load.stream"),
        ("duration_s", 0, "duration_s"),
        ("duration_s", 2, "duration_s"),
        ("warmup_s", -1, "warmup_s"),
        ("steps", 0, "steps"),
        ("max_model_len_hint", 100, "max_model_len_hint"),
        ("slo.ttft_ms", _DELETE, "slo.ttft_ms"),
        ("slo.itl_ms.percentile", 0, "slo.itl_ms.percentile"),
        ("slo.itl_ms.percentile", 101, "slo.itl_ms.percentile"),
        ("slo.ttft_ms.max_ms", -5, "slo.ttft_ms.max_ms"),
        ("slo.ttft_ms.p90", 5, "slo.ttft_ms.p90"),
        ("slo.latency_ms", {"percentile": 50, "max_ms": 1}, "slo.latency_ms"),
        ("extra", 1, "extra"),
    ],
)
def test_bad_field_names_the_field_and_file(tmp_path: Path, dotted: str, value: Any, field: str) -> None:
    data = copy.deepcopy(_chatbot_dict())
    _set(data, dotted, value)
    path = _write(tmp_path, data)
    with pytest.raises(VtuneError) as info:
        load_workload(str(path))
    message = str(info.value)
    assert f"'{field}'" in message
    assert str(path) in message
    assert "\n" not in message


def test_kind_specific_rules(tmp_path: Path) -> None:
    data = _chatbot_dict()
    data["load"] = {"kind": "constant"}
    with pytest.raises(VtuneError, match="'load.rate_per_s' is required"):
        load_workload(str(_write(tmp_path, data)))
    data["load"] = {"kind": "synchronous", "streams": 2}
    with pytest.raises(VtuneError, match="'load.streams' does not apply"):
        load_workload(str(_write(tmp_path, data)))
    data["load"] = {"kind": "sweep"}
    data["steps"] = 1
    with pytest.raises(VtuneError, match="'steps'.*sweep"):
        load_workload(str(_write(tmp_path, data)))
    data["steps"] = 3
    assert load_workload(str(_write(tmp_path, data))).load.kind == "sweep"
    data["load"] = {"kind": "throughput"}
    assert load_workload(str(_write(tmp_path, data))).load.streams is None


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(VtuneError, match="does not exist"):
        load_workload(str(tmp_path / "nope.yaml"))
    with pytest.raises(VtuneError, match="unknown workload 'nope'.*chatbot"):
        load_workload("nope")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(VtuneError, match="not valid YAML"):
        load_workload(str(broken))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(VtuneError, match="must be a mapping"):
        load_workload(str(scalar))


def _jsonl(tmp_path: Path, lines: list[str], name: str = "prompts.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_workload(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        [
            json.dumps({"prompt": "Write a haiku about the sea.", "output_tokens": 20}),
            "",
            json.dumps({"prompt": "x" * 4000}),
        ],
    )
    wl = load_workload(str(path))
    chatbot = load_workload("chatbot")
    assert wl.name == "prompts"
    assert wl.dataset == path.resolve()
    assert [p.output_tokens for p in wl.prompts] == [20, chatbot.output_tokens.mean]
    assert wl.load == chatbot.load and wl.slo == chatbot.slo and wl.steps == chatbot.steps
    assert wl.output_tokens.min == 20 and wl.output_tokens.max == chatbot.output_tokens.mean
    # 4000 characters could be up to 2000 tokens, plus 64 output tokens.
    assert wl.max_model_len_hint >= 2064 and wl.max_model_len_hint % 256 == 0
    again = Workload.from_dict(wl.to_dict())
    assert again.dataset == wl.dataset and len(again.prompts) == 2


def test_yaml_with_relative_dataset(tmp_path: Path) -> None:
    _jsonl(tmp_path, [json.dumps({"prompt": "hello", "output_tokens": 5})], "real.jsonl")
    data = _chatbot_dict()
    data["dataset"] = "real.jsonl"
    del data["shared_prefix"], data["turns"]  # synthetic conversations only
    wl = load_workload(str(_write(tmp_path, data)))
    assert wl.dataset == (tmp_path / "real.jsonl").resolve()
    assert wl.prompts[0].prompt == "hello"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": "no prompt"}', "'prompt'"),
        ('{"prompt": ""}', "'prompt'"),
        ('{"prompt": "hi", "output_tokens": 0}', "'output_tokens'"),
        ('{"prompt": "hi", "output_tokens": "5"}', "'output_tokens'"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    path = _jsonl(tmp_path, [json.dumps({"prompt": "fine"}), line])
    with pytest.raises(VtuneError, match=match) as info:
        read_prompts_jsonl(path)
    assert f"{path}:2" in str(info.value)
    with pytest.raises(VtuneError):
        load_workload(str(path))


def test_empty_or_missing_jsonl(tmp_path: Path) -> None:
    empty = _jsonl(tmp_path, [""], "empty.jsonl")
    with pytest.raises(VtuneError, match="no prompts"):
        load_workload(str(empty))
    with pytest.raises(VtuneError, match="cannot read"):
        load_workload(str(tmp_path / "missing.jsonl"))


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    models = [schema, *schema.get("$defs", {}).values()]
    return [(name, prop) for model in models for name, prop in model.get("properties", {}).items()]


def test_json_schema_describes_every_field_and_forbids_others() -> None:
    from vtune._workload import workload_json_schema

    schema = workload_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["properties"]["schema_version"]["enum"] == [1, SCHEMA_VERSION]
    assert set(schema["required"]) >= {"schema_version", "name", "load", "slo", "steps"}
    for name, prop in _properties(schema):
        assert prop.get("description"), name
    for model in [schema, *schema["$defs"].values()]:
        assert model["additionalProperties"] is False
    assert schema["$defs"]["LoadProfileModel"]["properties"]["kind"]["enum"] == list(LOAD_KINDS)


def test_builtin_workloads_validate_against_the_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from vtune._workload import workload_json_schema

    validator = jsonschema.Draft202012Validator(workload_json_schema())
    for name in BUILTINS:
        validator.validate(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()))
    bad = _chatbot_dict()
    bad["load"]["stream"] = 8
    assert not validator.is_valid(bad)


def test_null_optional_fields_are_defaults(tmp_path: Path) -> None:
    data = _chatbot_dict()
    data["warmup_s"] = None
    data["slo"]["tpot_ms"] = None
    wl = load_workload(str(_write(tmp_path, data)))
    assert wl.warmup_s == 0.0 and wl.slo.tpot_ms is None


@pytest.mark.parametrize(
    ("dotted", "value", "needle"),
    [
        ("load.streams", "8", "'load.streams' must be an integer, got '8'"),
        ("duration_s", True, "'duration_s' must be a number, got True"),
        ("duration_s", float("inf"), "'duration_s' must be finite"),
        ("description", 5, "'description' must be a string, got 5"),
        ("slo", None, "'slo' must be a mapping, got None"),
    ],
)
def test_type_errors_are_one_line(tmp_path: Path, dotted: str, value: Any, needle: str) -> None:
    data = copy.deepcopy(_chatbot_dict())
    _set(data, dotted, value)
    with pytest.raises(VtuneError) as info:
        load_workload(str(_write(tmp_path, data)))
    assert needle in str(info.value) and "\n" not in str(info.value)
