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
