"""The search space: space-file overrides (pydantic-validated) and rendering through ServeConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vtune._errors import VtuneError
from vtune._serve_config import ServeConfig
from vtune._space import SearchSpace, SpaceFile, apply_values, default_space, load_space_file


def _gpu_space() -> SearchSpace:
    return default_space(device="gpu", num_gpus=2)


def _load(tmp_path: Path, data: Any, base: SearchSpace | None = None) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return load_space_file(path, base or _gpu_space())


def _error(tmp_path: Path, data: Any) -> str:
    with pytest.raises(VtuneError) as info:
        _load(tmp_path, data)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "space.yaml") in message
    return message


def test_fixed(tmp_path: Path) -> None:
    space = _load(tmp_path, {"schema_version": 1, "dimensions": {"gpu_memory_utilization": {"fixed": 0.92}}})
    dim = space.get("gpu_memory_utilization")
    assert dim is not None and dim.fixed == 0.92 and not dim.active
    # A bare value fixes too.
    space = _load(tmp_path, {"dimensions": {"max_num_seqs": 64}})
    dim = space.get("max_num_seqs")
    assert dim is not None and dim.fixed == 64


def test_enabled_switches_a_dimension_on(tmp_path: Path) -> None:
    assert not _gpu_space().get("enable_prefix_caching").active  # type: ignore[union-attr]
    space = _load(tmp_path, {"dimensions": {"enable_prefix_caching": {"enabled": True}}})
    assert space.get("enable_prefix_caching").active  # type: ignore[union-attr]
    space = _load(tmp_path, {"dimensions": {"max_num_seqs": {"enabled": False}}})
    assert not space.get("max_num_seqs").active  # type: ignore[union-attr]


def test_choices_and_low_high(tmp_path: Path) -> None:
    space = _load(tmp_path, {"dimensions": {
        "max_num_batched_tokens": {"choices": [2048, 8192, 16384]},
        "max_num_seqs": {"low": 16, "high": 512},
        "kv_cache_dtype": {"choices": ["auto", "fp8"]},  # a switched-off dimension with values is switched on
    }})
    tokens = space.get("max_num_batched_tokens")
    assert tokens is not None and tokens.kind == "categorical" and tokens.choices == [2048, 8192, 16384]
    seqs = space.get("max_num_seqs")
    assert seqs is not None and (seqs.low, seqs.high, seqs.log) == (16, 512, True)
    assert isinstance(seqs.low, int)  # ints stay ints (stored with the study)
    assert space.get("kv_cache_dtype").active  # type: ignore[union-attr]


def test_parallel_layout_choices(tmp_path: Path) -> None:
    space = _load(tmp_path, {"dimensions": {"parallel_layout": {"choices": ["tp1-pp1-dp2", "tp2-pp1-dp1"]}}})
    cfg = apply_values(ServeConfig(model="m"), {"parallel_layout": "tp2-pp1-dp1"})
    assert space.get("parallel_layout").choices == ["tp1-pp1-dp2", "tp2-pp1-dp1"]  # type: ignore[union-attr]
    assert (cfg.tensor_parallel_size, cfg.pipeline_parallel_size, cfg.data_parallel_size) == (2, 1, 1)


def test_other_vllm_flag_goes_to_extra_args_once(tmp_path: Path) -> None:
    space = _load(tmp_path, {"dimensions": {"--max-num-partial-prefills": {"choices": [1, 2, 4]}}})
    dim = space.get("--max-num-partial-prefills")
    assert dim is not None and dim.active and dim.kind == "categorical"
    base = ServeConfig(model="m", extra_args=["--max-num-partial-prefills", "1", "--disable-log-stats"])
    cfg = apply_values(base, {"--max-num-partial-prefills": 4})
    assert cfg.extra_args == ["--disable-log-stats", "--max-num-partial-prefills", "4"]
    assert cfg.to_cli_args().count("--max-num-partial-prefills") == 1
    assert base.extra_args == ["--max-num-partial-prefills", "1", "--disable-log-stats"]  # base untouched
    # --flag=value and --no-flag forms are replaced too; booleans render as --x / --no-x; None drops it.
    base = ServeConfig(model="m", extra_args=["--max-num-partial-prefills=2", "--no-enable-foo"])
    cfg = apply_values(base, {"--max-num-partial-prefills": 1, "--enable-foo": True})
    assert cfg.extra_args == ["--max-num-partial-prefills", "1", "--enable-foo"]
    cfg = apply_values(cfg, {"--enable-foo": False, "--max-num-partial-prefills": None})
    assert cfg.extra_args == ["--no-enable-foo"]


def test_a_flag_of_a_serve_config_field_sets_the_field(tmp_path: Path) -> None:
    space = _load(tmp_path, {"dimensions": {"--max-num-seqs": {"low": 8, "high": 64}}})
    assert space.get("--max-num-seqs") is None
    seqs = space.get("max_num_seqs")
    assert seqs is not None and (seqs.low, seqs.high) == (8, 64)
    cfg = apply_values(ServeConfig(model="m"), {"--max-num-seqs": 32, "--enforce-eager": 1})
    assert cfg.max_num_seqs == 32 and cfg.enforce_eager is True and cfg.extra_args == []
    assert cfg.to_cli_args() == ["--model", "m", "--max-num-seqs", "32", "--enforce-eager"]


def test_env_var(tmp_path: Path) -> None:
    space = _load(tmp_path, {"dimensions": {"VLLM_SOME_ENV": {"choices": ["0", "1"]}}})
    assert space.get("VLLM_SOME_ENV").active  # type: ignore[union-attr]
    cfg = apply_values(ServeConfig(model="m", env={"A": "1"}), {"VLLM_SOME_ENV": "1"})
    assert cfg.env == {"A": "1", "VLLM_SOME_ENV": "1"} and cfg.extra_args == []


def test_sampled_configs_use_only_serve_config(tmp_path: Path) -> None:
    """Every value of a sampled trial lands in a ServeConfig field, env or extra_args."""

    class FirstChoice:
        def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
            return choices[-1]

        def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
            return high

        def suggest_float(self, name: str, low: float, high: float, log: bool = False, step: Any = None) -> float:
            return high

    space = _load(tmp_path, {"dimensions": {
        "--max-num-partial-prefills": {"choices": [1, 2]}, "VLLM_X": {"choices": ["1"]},
        "enable_prefix_caching": {"enabled": True},
    }})
    cfg = space.sample(FirstChoice(), ServeConfig(model="m"))
    assert set(vars(cfg)) == {f for f in ServeConfig.__dataclass_fields__}
    assert cfg.max_num_seqs == 1024 and cfg.enable_prefix_caching is False
    assert cfg.extra_args == ["--max-num-partial-prefills", "2"] and cfg.env == {"VLLM_X": "1"}


def test_apply_values_rejects_a_name_that_is_no_flag() -> None:
    with pytest.raises(VtuneError, match="'max_num_partial_prefills' is not a vLLM engine argument"):
        apply_values(ServeConfig(model="m"), {"max_num_partial_prefills": 2})
    with pytest.raises(VtuneError, match="model"):
        apply_values(ServeConfig(model="m"), {"model": "other"})


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"dimensions": {"max_num_partial_prefills": {"choices": [1, 2]}}}, "unknown dimension 'max_num_partial"),
        ({"dimensions": {"max_num_seqs": {"lo": 1}}}, "field 'dimensions.max_num_seqs.lo' is not a known field; "
                                                      "use only choices, enabled, fixed, help, high, kind, log"),
        ({"dimensions": {"max_num_seqs": {"low": 600, "high": 16}}}, "needs low <= high"),
        ({"dimensions": {"max_num_seqs": {"low": True, "high": 16}}}, "'dimensions.max_num_seqs.low' must be a num"),
        ({"dimensions": {"max_num_seqs": {"low": 0, "high": 16}}}, "log-scale dimension needs low > 0"),
        ({"dimensions": {"max_num_seqs": {"log": "yes"}}}, "'dimensions.max_num_seqs.log' must be true or false"),
        ({"dimensions": {"max_num_seqs": {"kind": "bool"}}}, "'dimensions.max_num_seqs.kind' is 'bool'; use one"),
        ({"dimensions": {"max_num_seqs": {"choices": []}}}, "'dimensions.max_num_seqs.choices' is empty"),
        ({"dimensions": {"max_num_seqs": {"choices": [[1]]}}}, "'dimensions.max_num_seqs.choices' holds [1]"),
        ({"dimensions": {"gpu_memory_utilization": {"step": 0}}}, "'dimensions.gpu_memory_utilization.step' must"),
        ({"dimensions": {"-x": {"choices": [1]}}}, "'-x' is not a vLLM flag"),
        ({"dimensions": [1, 2]}, "field 'dimensions' must be a mapping"),
        ({"schema_version": 2}, "field 'schema_version' is 2, this vtune reads 1"),
        ({"dimenions": {}}, "field 'dimenions' is not a known field; use only dimensions, schema_version"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_files_fail_with_one_line(tmp_path: Path, data: Any, needle: str) -> None:
    assert needle in _error(tmp_path, data)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(VtuneError, match="--space .*nope.yaml: no such file"):
        load_space_file(tmp_path / "nope.yaml", _gpu_space())
    (tmp_path / "bad.yaml").write_text("dimensions: [unclosed\n")
    with pytest.raises(VtuneError, match="not valid YAML"):
        load_space_file(tmp_path / "bad.yaml", _gpu_space())
    (tmp_path / "empty.yaml").write_text("")
    assert load_space_file(tmp_path / "empty.yaml", _gpu_space()).to_dict() == _gpu_space().to_dict()


def test_readme_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## Search-space files", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    space = _load(tmp_path, block)
    assert space.get("--stream-interval") is not None and space.get("VLLM_SOME_ENV") is not None


def test_space_round_trips_through_its_stored_form(tmp_path: Path) -> None:
    space = _load(tmp_path, {"dimensions": {"--max-num-partial-prefills": {"choices": [1, 2]}}})
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_json_schema_describes_every_field() -> None:
    from vtune._space import space_json_schema

    schema = space_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False
    spec = schema["$defs"]["DimensionSpec"]
    assert spec["additionalProperties"] is False
    for model in (schema, spec):
        for name, prop in model["properties"].items():
            assert prop.get("description"), name
    assert set(SpaceFile.model_fields) == {"schema_version", "dimensions"}


def test_json_schema_accepts_what_vtune_accepts() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from vtune._space import space_json_schema

    validator = jsonschema.Draft202012Validator(space_json_schema())
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## Search-space files", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    validator.validate(yaml.safe_load(block))
    validator.validate({"dimensions": {"max_num_seqs": 64, "dtype": "float32", "enforce_eager": True}})
    assert not validator.is_valid({"dimensions": {"max_num_seqs": {"lo": 1}}})
    assert not validator.is_valid({"dimenions": {}})


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_prefix_caching_is_on_when_the_workload_shares_prefixes(device: str) -> None:
    from vtune._workload import load_workload

    def prefix_dim(workload: Any) -> Any:
        space = default_space(device=device, num_gpus=1, cpu_cores=2, workload=workload)
        return space.get("enable_prefix_caching")

    assert not prefix_dim(None).enabled  # no workload: off, as before
    for name in ("batch", "interactive", "long-context", "reasoning", "multimodal"):
        assert not prefix_dim(load_workload(name, device=device)).enabled, name
    for name in ("chatbot", "rag", "replay"):  # system prompts / documents / a trace's shared blocks
        dim = prefix_dim(load_workload(name, device=device))
        assert dim.enabled and dim.active and dim.choices == [True, False], name
        assert name in dim.help


def test_a_stepped_float_is_the_steps_value_not_its_binary_sum() -> None:
    """Optuna returns low + k x step (0.8200000000000001 on the H200 VL study); the flag must read 0.82."""
    import optuna

    from vtune._space import Dimension

    dim = Dimension("gpu_memory_utilization", "float", low=0.80, high=0.95, step=0.01)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [dim.suggest(study.ask()) for _ in range(200)]
    assert all(v == round(v, 2) for v in values) and 0.82 in values
