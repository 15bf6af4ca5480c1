"""ServeConfig: the flag renderer round trips, and the flags generated from its fields."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path

import pytest
import yaml

from vtune._errors import VtuneError
from vtune._serve_config import (
    ServeConfig,
    add_serve_flags,
    parse_serve_args,
    serve_config_from_args,
    yaml_to_args,
)

FULL = ServeConfig(
    model="/models/llama",
    tensor_parallel_size=2,
    pipeline_parallel_size=1,
    data_parallel_size=2,
    max_model_len=4096,
    gpu_memory_utilization=0.9,
    max_num_seqs=256,
    max_num_batched_tokens=8192,
    dtype="bfloat16",
    kv_cache_dtype="fp8",
    quantization="fp8",
    block_size=16,
    enforce_eager=False,
    enable_prefix_caching=True,
    enable_chunked_prefill=False,
    async_scheduling=True,
    max_cudagraph_capture_size=256,
    enable_expert_parallel=False,
    disable_hybrid_kv_cache_manager=True,
    load_format="dummy",
    served_model_name="llama",
    extra_args=["--max-num-partial-prefills", "2", "--disable-log-stats"],
    env={"VLLM_CPU_KVCACHE_SPACE": "4"},
)
FLAG_FIELDS = [f.name for f in dataclasses.fields(ServeConfig) if f.name not in ("model", "extra_args", "env")]


def test_every_field_is_set_in_the_full_config() -> None:
    # The round trips below cover every flag only if FULL sets every field.
    assert all(getattr(FULL, name) is not None for name in FLAG_FIELDS)


def test_cli_args_round_trip() -> None:
    args = FULL.to_cli_args()
    again = parse_serve_args(args)
    assert again == FULL.replace(env={})
    assert again.to_cli_args() == args


def test_flags_line_round_trip_keeps_env() -> None:
    tokens = shlex.split(FULL.to_flags_line())
    assert tokens[:1] == ["VLLM_CPU_KVCACHE_SPACE=4"] and tokens[1:3] == ["vllm", "serve"]
    again = parse_serve_args([tokens[0], *tokens[3:]])
    assert again == FULL


def test_false_booleans_render_as_no_flags() -> None:
    args = FULL.to_cli_args()
    for name in ("enforce_eager", "enable_chunked_prefill", "enable_expert_parallel"):
        flag = "--" + name.replace("_", "-")
        assert "--no-" + flag[2:] in args and flag not in args
    assert "--enable-prefix-caching" in args and "--no-enable-prefix-caching" not in args
    yaml_dict = FULL.to_yaml_dict()
    assert yaml_dict["no-enforce-eager"] is True and "enforce-eager" not in yaml_dict
    assert yaml_dict["enable-prefix-caching"] is True


def test_unset_fields_are_not_rendered() -> None:
    assert ServeConfig(model="m").to_cli_args() == ["--model", "m"]
    assert ServeConfig(model="m").to_yaml_dict() == {"model": "m"}


def test_extra_args_are_rendered_once() -> None:
    args = FULL.to_cli_args()
    assert args.count("--max-num-partial-prefills") == 1
    assert FULL.to_yaml_dict()["max-num-partial-prefills"] == 2
    assert FULL.to_yaml_dict()["disable-log-stats"] is True


def test_yaml_round_trip_gives_the_same_flags() -> None:
    text = FULL.to_yaml()
    again = ServeConfig.from_yaml(text)
    assert again.to_cli_args() == FULL.to_cli_args()
    assert again == FULL.replace(env={})


def test_yaml_to_args_follows_vllms_rule() -> None:
    data = {"a": True, "b": False, "c": [1, 2], "d": {"x": 1}, "e": 3, "f": []}
    assert yaml_to_args(data) == ["--a", "--c", "1", "2", "--d", '{"x": 1}', "--e", "3"]
    with pytest.raises(VtuneError, match="mapping"):
        yaml_to_args(["--a"])  # type: ignore[arg-type]


def test_yaml_file_read_by_vllms_own_loader_gives_the_same_flags(tmp_path: Path) -> None:
    argparse_utils = pytest.importorskip("vllm.utils.argparse_utils", reason="vLLM is not installed")
    path = tmp_path / "config.yaml"
    path.write_text(FULL.to_yaml())
    parser = argparse_utils.FlexibleArgumentParser()
    flags = parser.load_config_file(str(path))
    assert flags == yaml_to_args(yaml.safe_load(path.read_text()))
    assert parse_serve_args(flags).to_cli_args() == FULL.to_cli_args()


def test_short_aliases_parse_to_the_fields() -> None:
    cfg = parse_serve_args(["m", "-tp", "2", "-pp=1", "-dp", "4"])
    assert (cfg.tensor_parallel_size, cfg.pipeline_parallel_size, cfg.data_parallel_size) == (2, 1, 4)
    assert cfg.extra_args == []


def test_parse_errors_name_the_flag() -> None:
    with pytest.raises(VtuneError, match="--max-num-seqs must be an integer, got 'lots'"):
        parse_serve_args(["--max-num-seqs", "lots"])
    with pytest.raises(VtuneError, match="-tp must be an integer"):
        parse_serve_args(["-tp", "x"])
    with pytest.raises(VtuneError, match="--enforce-eager takes no value"):
        parse_serve_args(["--enforce-eager=true"])
    with pytest.raises(VtuneError, match="--max-model-len needs a value"):
        parse_serve_args(["--max-model-len"])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_serve_flags(p)
    return p


def test_generated_flags_cover_every_field_with_its_help() -> None:
    p = _parser()
    by_dest = {a.dest: a for a in p._actions}
    for f in dataclasses.fields(ServeConfig):
        if f.name in ("model", "extra_args", "env"):
            assert f.name not in by_dest
            continue
        action = by_dest[f.name]
        assert "--" + f.name.replace("_", "-") in action.option_strings
        assert action.help == f.metadata["help"].replace("%", "%%")
        assert action.default is None
    assert by_dest["tensor_parallel_size"].option_strings == ["--tensor-parallel-size", "-tp"]
    assert by_dest["pipeline_parallel_size"].option_strings == ["--pipeline-parallel-size", "-pp"]
    assert by_dest["data_parallel_size"].option_strings == ["--data-parallel-size", "-dp"]
    assert isinstance(by_dest["enforce_eager"], argparse.BooleanOptionalAction)
    assert "--no-enforce-eager" in by_dest["enforce_eager"].option_strings
    assert by_dest["max_num_seqs"].type is int and by_dest["gpu_memory_utilization"].type is float


def test_generated_flags_parse_like_vllm_serve() -> None:
    args = _parser().parse_args(FULL.to_cli_args(include_model=False)[:-3])  # without the pass-through flags
    cfg = serve_config_from_args(args, model=FULL.model)
    assert cfg == FULL.replace(extra_args=[], env={})
    args = _parser().parse_args(["-tp", "4", "--no-enforce-eager", "--gpu-memory-utilization", "0.85"])
    cfg = serve_config_from_args(args, model="m")
    assert (cfg.tensor_parallel_size, cfg.enforce_eager, cfg.gpu_memory_utilization) == (4, False, 0.85)
    assert cfg.max_num_seqs is None and cfg.enable_prefix_caching is None


def test_generated_flags_reject_bad_types() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--max-num-seqs", "many"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["--enforce-eager=yes"])
