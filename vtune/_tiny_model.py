"""The built-in tiny model: served when the user names no model on a machine without a GPU.

The model is built offline in a few seconds and never touches the Hugging Face hub:

* a byte-level BPE tokenizer (about 8k tokens) trained with ``tokenizers`` on the
  Python standard library's own sources, with a chat template and an end-of-sequence
  token, saved through ``PreTrainedTokenizerFast``;
* a randomly initialised Llama (hidden 256, 4 layers, 4 heads, 2 KV heads,
  intermediate 512, 4096 positions, float32) saved by ``transformers`` as
  safetensors, from a fixed seed.

Its outputs are noise, but its shape is a real Llama, so vLLM serves it with its real
scheduler, KV cache and kernels: serving flags change its throughput and latency the
way they change a real model's, which is what a tuning run needs.

The folder holds a ``vtune_model.json`` marker, written last, that records what was
built; a folder whose marker matches the current recipe is reused as is.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from vtune._errors import VtuneError

__all__ = [
    "MARKER_FILE",
    "MODEL_NAME",
    "SCHEMA_VERSION",
    "build_tiny_model",
    "default_model_dir",
    "vtune_home",
]

#: Version of the ``vtune_model.json`` marker layout.
SCHEMA_VERSION = 1
#: Name of the marker file written last into a complete model folder.
MARKER_FILE = "vtune_model.json"
#: Folder name (and served model name) of the built-in model.
MODEL_NAME = "tiny-llama"

# Changing anything in the recipe below changes the fingerprint, so folders built by
# an older recipe are rebuilt rather than reused.
_VOCAB_SIZE = 8192
_SEED = 1234
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_ARCH: dict[str, Any] = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 512,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
_RECIPE: dict[str, Any] = {
    "recipe_version": 1,
    "vocab_size": _VOCAB_SIZE,
    "seed": _SEED,
    "arch": _ARCH,
    "dtype": "float32",
    "tokenizer_corpus": "python-stdlib-toplevel-py",
}
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# Files a build may leave; a folder holding anything else is not replaced.
_OWN_FILES = {
    *_REQUIRED_FILES,
    MARKER_FILE,
    "generation_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
}


def vtune_home() -> Path:
    """Returns vtune's cache folder: ``$VTUNE_HOME``, else ``~/.cache/vtune``."""
    env = os.environ.get("VTUNE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vtune"


def default_model_dir() -> Path:
    """Returns where the built-in tiny model lives: ``<vtune home>/models/tiny-llama``."""
    return vtune_home() / "models" / MODEL_NAME


def _is_complete(model_dir: Path) -> bool:
    """Tells whether ``model_dir`` holds a model built by the current recipe."""
    marker = model_dir / MARKER_FILE
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if data.get("schema_version") != SCHEMA_VERSION or data.get("recipe") != _RECIPE:
        return False
    return all((model_dir / name).is_file() for name in _REQUIRED_FILES)


def _train_tokenizer(out_dir: Path) -> Any:
    """Trains the byte-level BPE tokenizer on the stdlib sources and saves it.

    Args:
        out_dir: Folder the tokenizer files are written into.

    Returns:
        The ``PreTrainedTokenizerFast`` that was saved.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    if not files:
        raise VtuneError(
            f"no Python sources found in {stdlib} to train the tiny model's tokenizer; "
            "pass a model with --model instead"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_max_length=_ARCH["max_position_embeddings"],
    )
    hf.chat_template = _CHAT_TEMPLATE
    hf.save_pretrained(str(out_dir))
    return hf


def _save_model(out_dir: Path, tokenizer: Any) -> int:
    """Initialises the random Llama from the fixed seed and saves it as safetensors.

    Args:
        out_dir: Folder the model files are written into.
        tokenizer: The tokenizer whose vocabulary and special tokens the model uses.

    Returns:
        The number of parameters.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "dtype": "float32",
        **_ARCH,
    }
    config = LlamaConfig(**kwargs)
    torch.manual_seed(_SEED)
    model: Any = LlamaForCausalLM(config)
    model = model.to(torch.float32).eval()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar on the console
    try:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return int(sum(p.numel() for p in model.parameters()))


def build_tiny_model(out_dir: Path | None = None, *, force: bool = False) -> Path:
    """Builds the built-in tiny model, or reuses a complete one already there.

    The model is built in a temporary sibling folder and renamed into place, so a
    folder at ``out_dir`` is either complete or absent, even when two processes build
    at once.

    Args:
        out_dir: Target folder; defaults to :func:`default_model_dir`.
        force: Rebuild even if a complete model is already there.

    Returns:
        The model folder (``config.json``, ``model.safetensors``, tokenizer files and
        the ``vtune_model.json`` marker).

    Raises:
        VtuneError: If the folder cannot be written.
    """
    target = Path(out_dir) if out_dir is not None else default_model_dir()
    target = target.expanduser().resolve()
    if not force and _is_complete(target):
        return target
    if target.exists():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in _OWN_FILES) if target.is_dir() else []
        if not target.is_dir() or foreign:
            raise VtuneError(
                f"{target} exists and is not a vtune model folder (it holds {foreign[:3] or 'a file'}); "
                "pass an empty or new folder"
            )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    except OSError as exc:
        raise VtuneError(
            f"cannot write the tiny model to {target}: {exc.strerror}; set VTUNE_HOME to a writable folder"
        ) from None
    try:
        start_s = time.monotonic()
        tokenizer = _train_tokenizer(staging)
        n_params = _save_model(staging, tokenizer)
        marker = {
            "schema_version": SCHEMA_VERSION,
            "name": MODEL_NAME,
            "description": "vtune's built-in tiny model: random-init Llama with an offline-trained tokenizer",
            "recipe": _RECIPE,
            "vocab_size": len(tokenizer),
            "num_parameters": n_params,
            "eos_token": tokenizer.eos_token,
            "build_seconds": round(time.monotonic() - start_s, 3),
            "created_unix_s": round(time.time(), 3),
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():
            if not force and _is_complete(target):
                return target  # another process finished first; keep its copy
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            if _is_complete(target):
                return target  # lost a race with another builder
            raise
    except OSError as exc:
        raise VtuneError(
            f"cannot write the tiny model to {target}: {exc.strerror}; set VTUNE_HOME to a writable folder"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
