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

:func:`build_tiny_vl_model` writes a vision-language model folder the same way, offline,
without weights (vLLM starts it with ``--load-format dummy``): a Qwen3-VL
``config.json`` of the 2B shape (or a tiny one), the same kind of tokenizer with
Qwen-VL's vision tokens (``<|vision_start|>``, ``<|image_pad|>``, ...), a chat template
that puts ``<|vision_start|><|image_pad|><|vision_end|>`` where a message has an image,
and the image (and, where torchvision is installed, video) processor configs.
:func:`check_vl_model` lists what a folder lacks for vtune's image requests.
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
    "VL_SHAPES",
    "build_tiny_model",
    "build_tiny_vl_model",
    "check_vl_model",
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


def _train_tokenizer(out_dir: Path, *, special_tokens: list[str] | None = None, chat_template: str | None = None,
                     bos_token: str | None = "<|endoftext|>", model_max_length: int | None = None) -> Any:
    """Trains the byte-level BPE tokenizer on the stdlib sources and saves it.

    Args:
        out_dir: Folder the tokenizer files are written into.
        special_tokens: Special tokens (default: the tiny model's).
        chat_template: Chat template (default: the tiny model's).
        bos_token: Beginning-of-sequence token, or None for none.
        model_max_length: Longest input the tokenizer allows (default: the tiny model's positions).

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
        special_tokens=special_tokens or _SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_max_length=model_max_length or _ARCH["max_position_embeddings"],
    )
    hf.chat_template = chat_template or _CHAT_TEMPLATE
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


# ---------------------------------------------------------------------------------
# A vision-language model folder (no weights: vLLM starts it with --load-format dummy)

_VL_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                      "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|pad|>"]
_VL_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
_VL_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
_VL_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] in ('image', 'image_url') %}{{ '" + _VL_IMAGE + "' }}"
    "{% elif c['type'] in ('video', 'video_url') %}{{ '" + _VL_VIDEO + "' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
#: Shapes :func:`build_tiny_vl_model` writes: the text and vision towers of Qwen3-VL-2B, or a tiny one.
VL_SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-vl-2b": {
        "text": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
                 "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 262144,
                 "rope_theta": 5000000, "mrope_section": [24, 20, 20]},
        "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                   "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]},
        "dtype": "bfloat16",
    },
    "tiny": {
        "text": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 8192, "max_position_embeddings": 8192,
                 "rope_theta": 10000, "mrope_section": [12, 10, 10]},
        "vision": {"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 2,
                   "num_position_embeddings": 2304, "deepstack_visual_indexes": [0]},
        "dtype": "float32",
    },
}
_VL_PROCESSOR_COMMON: dict[str, Any] = {
    "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255,
    "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "processor_class": "Qwen3VLProcessor",
}
_VL_MARKER_KIND = "vision-language, no weights (--load-format dummy)"


def _has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def _vl_config(shape: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    text, vision = shape["text"], shape["vision"]
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "tie_word_embeddings": True,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "text_config": {
            "model_type": "qwen3_vl_text", "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": False,
            "dtype": shape["dtype"], "tie_word_embeddings": True,
            **{k: v for k, v in text.items() if k != "mrope_section"},
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": text["mrope_section"], "rope_type": "default"},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        },
        "vision_config": {
            "model_type": "qwen3_vl", "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "out_hidden_size": text["hidden_size"], "in_channels": 3, "hidden_act": "gelu_pytorch_tanh",
            "initializer_range": 0.02, **vision,
        },
        "dtype": shape["dtype"],
        "torch_dtype": shape["dtype"],
    }


def build_tiny_vl_model(out_dir: Path, *, shape: str = "qwen3-vl-2b", video: bool | None = None) -> Path:
    """Writes an offline vision-language model folder of a Qwen3-VL shape, without weights.

    vLLM serves it with ``--load-format dummy`` (random weights): on the GPU, vLLM
    0.26 started the 2B shape this way and answered a chat request with an image.

    Args:
        out_dir: The folder (created; files vtune writes are replaced).
        shape: One of :data:`VL_SHAPES`: ``qwen3-vl-2b`` (the users' model) or ``tiny``.
        video: Whether to write ``video_preprocessor_config.json``; default: only where
            torchvision is installed. Transformers' Qwen3-VL video processor needs
            torchvision, which vtune's CPU environment lacks; without the file the
            folder still serves images (vtune's workloads send no video).

    Returns:
        The folder: ``config.json``, the tokenizer files, ``chat_template.json``,
        ``preprocessor_config.json`` (and maybe the video one) and ``vtune_model.json``.

    Raises:
        VtuneError: An unknown shape, or the folder cannot be written.
    """
    if shape not in VL_SHAPES:
        raise VtuneError(f"unknown VL model shape {shape!r}; use one of {', '.join(VL_SHAPES)}")
    spec = VL_SHAPES[shape]
    target = Path(out_dir).expanduser().resolve()
    with_video = _has_torchvision() if video is None else video
    try:
        target.mkdir(parents=True, exist_ok=True)
        start_s = time.monotonic()
        hf = _train_tokenizer(target, special_tokens=_VL_SPECIAL_TOKENS, chat_template=_VL_CHAT_TEMPLATE,
                              bos_token=None, model_max_length=spec["text"]["max_position_embeddings"])
        ids = {t: int(hf.convert_tokens_to_ids(t)) for t in _VL_SPECIAL_TOKENS}
        (target / "config.json").write_text(json.dumps(_vl_config(spec, ids), indent=1) + "\n")
        image = {"image_processor_type": "Qwen2VLImageProcessorFast", **_VL_PROCESSOR_COMMON,
                 "size": {"shortest_edge": 65536, "longest_edge": 16777216}}
        (target / "preprocessor_config.json").write_text(json.dumps(image, indent=1) + "\n")
        video_path = target / "video_preprocessor_config.json"
        if with_video:
            vid = {"video_processor_type": "Qwen3VLVideoProcessor", **_VL_PROCESSOR_COMMON,
                   "size": {"shortest_edge": 4096, "longest_edge": 25165824}, "fps": 2, "min_frames": 4,
                   "max_frames": 768}
            video_path.write_text(json.dumps(vid, indent=1) + "\n")
        elif video_path.exists():
            video_path.unlink()
        (target / "chat_template.json").write_text(json.dumps({"chat_template": _VL_CHAT_TEMPLATE}) + "\n")
        marker = {
            "schema_version": SCHEMA_VERSION,
            "name": f"vl-{shape}",
            "description": f"vtune's offline Qwen3-VL folder ({shape} shape), {_VL_MARKER_KIND}",
            "shape": shape,
            "video_processor": with_video,
            "vocab_size": len(hf),
            "token_ids": ids,
            "build_seconds": round(time.monotonic() - start_s, 3),
            "created_unix_s": round(time.time(), 3),
        }
        (target / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    except OSError as exc:
        raise VtuneError(f"cannot write the VL model to {target}: {exc.strerror}; pick a writable folder") from None
    return target


def check_vl_model(model_dir: Path) -> list[str]:
    """Lists what a model folder lacks for vtune's image requests (empty: nothing).

    Checked: ``config.json`` has a ``vision_config`` and an ``image_token_id``; the
    tokenizer knows that id as ``<|image_pad|>``, a single token; the chat template
    renders a message with an image into ``<|vision_start|><|image_pad|><|vision_end|>``;
    ``preprocessor_config.json`` names an image processor. (Whether the video
    processor loads is not checked: it needs torchvision.)
    """
    folder = Path(model_dir)
    problems: list[str] = []
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return [f"{folder}/config.json is missing or not JSON"]
    if not isinstance(config.get("vision_config"), dict):
        problems.append("config.json has no vision_config (a text-only model)")
    image_id = config.get("image_token_id")
    if not isinstance(image_id, int):
        problems.append("config.json has no image_token_id")
    try:
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        if not pre.get("image_processor_type"):
            problems.append("preprocessor_config.json names no image_processor_type")
    except (OSError, ValueError):
        problems.append("preprocessor_config.json is missing or not JSON")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported, not raised
        return [*problems, f"the tokenizer does not load: {type(exc).__name__}: {exc}"]
    if isinstance(image_id, int) and tok.convert_ids_to_tokens(image_id) != "<|image_pad|>":
        problems.append(f"token {image_id} is {tok.convert_ids_to_tokens(image_id)!r}, not <|image_pad|>")
    if tok.encode("<|image_pad|>", add_special_tokens=False) != ([image_id] if isinstance(image_id, int) else []):
        problems.append("<|image_pad|> is not one token of the tokenizer")
    messages: Any = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}]
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the chat template fails on an image message: {type(exc).__name__}: {exc}")
    else:
        if _VL_IMAGE not in str(text):
            problems.append(f"the chat template does not render an image as {_VL_IMAGE}")
    return problems
