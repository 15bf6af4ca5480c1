"""Tests of vtune._tiny_model: the built-in model is complete, reused and reproducible."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vtune._errors import VtuneError
from vtune._tiny_model import MARKER_FILE, SCHEMA_VERSION, build_tiny_model, default_model_dir, vtune_home


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VTUNE_HOME", str(tmp_path / "home"))
    assert vtune_home() == tmp_path / "home"
    assert default_model_dir() == tmp_path / "home" / "models" / "tiny-llama"
    monkeypatch.delenv("VTUNE_HOME")
    assert default_model_dir() == Path.home() / ".cache" / "vtune" / "models" / "tiny-llama"


def test_model_folder_is_complete(model_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER_FILE):
        assert (model_dir / name).is_file(), name
    marker = json.loads((model_dir / MARKER_FILE).read_text())
    assert marker["schema_version"] == SCHEMA_VERSION
    assert marker["name"] == "tiny-llama"
    assert marker["description"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 256
    assert config["num_hidden_layers"] == 4
    assert config["num_attention_heads"] == 4
    assert config["num_key_value_heads"] == 2
    assert config["intermediate_size"] == 512
    assert config["max_position_embeddings"] == 4096
    assert config["dtype"] == "float32"
    assert config["vocab_size"] == marker["vocab_size"]
    assert 4_000_000 < marker["num_parameters"] < 10_000_000


def test_tokenizer_loads_offline(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert 7000 <= len(tok) <= 8192
    assert tok.eos_token == "<|im_end|>"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["eos_token_id"] == tok.eos_token_id
    text = "def hello(world):\n    return world"
    assert tok.decode(tok.encode(text)) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_reused_when_complete(model_dir: Path) -> None:
    before = (model_dir / MARKER_FILE).read_text()
    assert build_tiny_model(model_dir) == model_dir
    assert (model_dir / MARKER_FILE).read_text() == before


def test_rebuild_is_deterministic_and_repairs(model_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    other.mkdir()
    (other / "model.safetensors").write_text("half-written")  # no marker: incomplete
    built = build_tiny_model(other)
    assert built == other.resolve()
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(built / name) == _sha(model_dir / name), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".again.build-")]
    stamp = json.loads((built / MARKER_FILE).read_text())["created_unix_s"]
    rebuilt = build_tiny_model(other, force=True)
    assert json.loads((rebuilt / MARKER_FILE).read_text())["created_unix_s"] >= stamp
    assert _sha(rebuilt / "model.safetensors") == _sha(model_dir / "model.safetensors")


def test_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(VtuneError, match="VTUNE_HOME"):
        build_tiny_model(blocker / "tiny-llama")


def test_foreign_folder_is_left_alone(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(VtuneError, match="not a vtune model folder"):
        build_tiny_model(mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(VtuneError, match="not a vtune model folder"):
        build_tiny_model(tmp_path / "mine" / "notes.txt")


# ------------------------------------------------------------ the VL model folder
@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vtune._tiny_model import build_tiny_vl_model

    return build_tiny_vl_model(tmp_path_factory.mktemp("vl") / "qwen3-vl-2b")


def test_vl_folder_has_the_qwen3_vl_2b_shape_and_passes_the_check(vl_dir: Path) -> None:
    from vtune._tiny_model import check_vl_model
    from vtune.loads._guidellm_child import model_has_vision

    assert check_vl_model(vl_dir) == []
    assert model_has_vision(vl_dir)
    config = json.loads((vl_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    text, vision = config["text_config"], config["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_key_value_heads"]) == (2048, 28, 8)
    assert (vision["depth"], vision["patch_size"], vision["out_hidden_size"]) == (24, 16, 2048)
    marker = json.loads((vl_dir / MARKER_FILE).read_text())
    assert marker["shape"] == "qwen3-vl-2b" and marker["token_ids"]["<|image_pad|>"] == config["image_token_id"]
    assert not list(vl_dir.glob("*.safetensors"))  # no weights: vLLM runs it with --load-format dummy


def test_vl_video_processor_only_with_torchvision(tmp_path: Path) -> None:
    import importlib.util

    from vtune._tiny_model import build_tiny_vl_model

    has_tv = importlib.util.find_spec("torchvision") is not None
    folder = build_tiny_vl_model(tmp_path / "vl", shape="tiny")
    assert (folder / "video_preprocessor_config.json").exists() == has_tv
    build_tiny_vl_model(folder, shape="tiny", video=True)
    vid = json.loads((folder / "video_preprocessor_config.json").read_text())
    assert vid["video_processor_type"] == "Qwen3VLVideoProcessor"
    build_tiny_vl_model(folder, shape="tiny", video=False)
    assert not (folder / "video_preprocessor_config.json").exists()
    assert json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"] == 256


def test_check_vl_model_names_what_a_text_model_lacks(model_dir: Path, tmp_path: Path) -> None:
    from vtune._tiny_model import build_tiny_vl_model, check_vl_model

    problems = check_vl_model(model_dir)
    assert any("no vision_config" in p for p in problems) and any("preprocessor_config" in p for p in problems)
    assert check_vl_model(tmp_path / "nothing") == [f"{tmp_path / 'nothing'}/config.json is missing or not JSON"]
    broken = build_tiny_vl_model(tmp_path / "broken", shape="tiny")
    (broken / "tokenizer_config.json").write_text(
        (broken / "tokenizer_config.json").read_text().replace("<|vision_start|><|image_pad|><|vision_end|>", "IMG"))
    (broken / "chat_template.jinja").write_text("{% for m in messages %}{{ m['role'] }}{% endfor %}")
    assert any("chat template" in p for p in check_vl_model(broken))
    with pytest.raises(VtuneError, match="unknown VL model shape"):
        build_tiny_vl_model(tmp_path / "x", shape="qwen9")


def test_guidellm_image_request_renders_the_vision_tokens(vl_dir: Path) -> None:
    """GuideLLM's chat body for the multimodal workload, through the folder's chat template."""
    import asyncio

    from guidellm.backends.openai.request_handlers import ChatCompletionsRequestHandler
    from guidellm.benchmark.entrypoints import resolve_to_single_benchmark
    from guidellm.data import create_data_loader
    from transformers import AutoTokenizer

    from vtune._workload import load_workload
    from vtune.loads._guidellm_child import _scenario, workload_for_model

    wl = workload_for_model(load_workload("multimodal", device="gpu"), vl_dir)
    assert wl.images is not None
    spec = {"target_url": "http://127.0.0.1:9", "served_model": "m", "tokenizer_dir": str(vl_dir), "seed": 0}
    args = resolve_to_single_benchmark(_scenario(spec, wl, 0).get_benchmarks())

    async def make() -> object:
        return await create_data_loader(
            loader_config=args.data_loader, data_config=args.data, tokenizer_config=args.tokenizer,
            column_mapper_config=args.data_column_mapper, preprocessors_config=args.data_preprocessors,
            finalizer_config=args.data_finalizer, random_seed=args.seed.value)

    graph = next(iter(asyncio.run(make())))  # type: ignore[call-overload]
    request = next(iter(graph.nodes.values())).request
    body = ChatCompletionsRequestHandler().format(request, model="m", stream=True).body
    (message,) = body["messages"]
    kinds = [part["type"] for part in message["content"]]
    assert kinds.count("image_url") == 1 and "text" in kinds
    assert body["max_completion_tokens"] > 0 and body["ignore_eos"] is True
    tok = AutoTokenizer.from_pretrained(str(vl_dir))
    rendered = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
    assert rendered.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
