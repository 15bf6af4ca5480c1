"""The one typed serving configuration and its renderers.

:class:`ServeConfig` holds what a ``vllm serve`` command line holds. Its field
names are exactly vLLM's engine-argument names (``tensor_parallel_size`` is
``--tensor-parallel-size``), so a field maps to a flag with no table in between.
A field left at ``None`` is not rendered: vLLM's own default applies.

One renderer, :func:`_items`, turns the config into ``(flag, value)`` pairs; both
:meth:`ServeConfig.to_cli_args` (a command line) and :meth:`ServeConfig.to_yaml`
(a file for ``vllm serve --config``) are built from it. Booleans are always
explicit: ``True`` renders as ``--x`` and ``False`` as ``--no-x``; in YAML a false
boolean is written as ``no-x: true`` because older vLLM YAML loaders drop
``x: false`` silently.

Settings that vLLM reads from the environment (``VLLM_CPU_KVCACHE_SPACE`` on the
CPU engine) live in :attr:`ServeConfig.env`; flags vtune does not model pass
through untouched in :attr:`ServeConfig.extra_args`.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field, fields
from typing import Any

from vtune._errors import VtuneError

__all__ = ["ServeConfig", "parse_serve_args"]


def _doc(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ServeConfig:
    """A vLLM serving configuration; field names are vLLM's engine arguments."""

    model: str = field(default="", metadata=_doc("Model directory or Hugging Face id to serve."))
    tensor_parallel_size: int | None = field(
        default=None, metadata=_doc("GPUs a replica's layers are split across (attention heads split).")
    )
    pipeline_parallel_size: int | None = field(
        default=None, metadata=_doc("Pipeline stages a replica's layers are split into.")
    )
    data_parallel_size: int | None = field(
        default=None, metadata=_doc("Independent engine replicas behind one API server.")
    )
    max_model_len: int | None = field(
        default=None, metadata=_doc("Longest request (prompt + output tokens) the engine accepts.")
    )
    gpu_memory_utilization: float | None = field(
        default=None, metadata=_doc("Fraction of each GPU's total memory vLLM may use (default 0.92).")
    )
    max_num_seqs: int | None = field(
        default=None, metadata=_doc("Most sequences scheduled in one step, per engine replica.")
    )
    max_num_batched_tokens: int | None = field(
        default=None, metadata=_doc("Most tokens scheduled in one step (the prefill chunk), per replica.")
    )
    dtype: str | None = field(default=None, metadata=_doc("Weight/activation dtype: auto, bfloat16, float16, float32."))
    kv_cache_dtype: str | None = field(default=None, metadata=_doc("KV cache dtype: auto, fp8, fp8_e4m3, fp8_e5m2."))
    quantization: str | None = field(default=None, metadata=_doc("Weight quantization method (fp8, awq, gptq, ...)."))
    block_size: int | None = field(default=None, metadata=_doc("Tokens per KV cache block."))
    enforce_eager: bool | None = field(default=None, metadata=_doc("Disable CUDA graphs and torch.compile."))
    enable_prefix_caching: bool | None = field(default=None, metadata=_doc("Reuse KV blocks of shared prefixes."))
    enable_chunked_prefill: bool | None = field(default=None, metadata=_doc("Split long prefills into chunks."))
    async_scheduling: bool | None = field(default=None, metadata=_doc("Overlap scheduling with model execution."))
    max_cudagraph_capture_size: int | None = field(
        default=None, metadata=_doc("Largest batch size captured as a CUDA graph.")
    )
    enable_expert_parallel: bool | None = field(
        default=None, metadata=_doc("Shard MoE experts across ranks instead of splitting each expert.")
    )
    disable_hybrid_kv_cache_manager: bool | None = field(
        default=None, metadata=_doc("Treat sliding-window layers as full attention for KV sizing.")
    )
    load_format: str | None = field(default=None, metadata=_doc("Weight loading format; 'dummy' for random weights."))
    served_model_name: str | None = field(default=None, metadata=_doc("Model name the API serves."))
    extra_args: list[str] = field(
        default_factory=list, metadata=_doc("Other vLLM flags, passed through untouched.")
    )
    env: dict[str, str] = field(
        default_factory=dict, metadata=_doc("Environment settings vLLM reads (e.g. VLLM_CPU_KVCACHE_SPACE).")
    )

    # ----------------------------------------------------------------- helpers
    @property
    def tp(self) -> int:
        """Tensor-parallel size with vLLM's default applied."""
        return 1 if self.tensor_parallel_size is None else self.tensor_parallel_size

    @property
    def pp(self) -> int:
        """Pipeline-parallel size with vLLM's default applied."""
        return 1 if self.pipeline_parallel_size is None else self.pipeline_parallel_size

    @property
    def dp(self) -> int:
        """Data-parallel size with vLLM's default applied."""
        return 1 if self.data_parallel_size is None else self.data_parallel_size

    @property
    def world_size(self) -> int:
        """GPUs one replica spans (TP x PP)."""
        return self.tp * self.pp

    @property
    def num_gpus(self) -> int:
        """GPUs the whole configuration needs (TP x PP x DP)."""
        return self.world_size * self.dp

    def replace(self, **changes: Any) -> ServeConfig:
        """Returns a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for JSON and Optuna user attributes)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise VtuneError(f"unknown ServeConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    # --------------------------------------------------------------- rendering
    def to_cli_args(self, *, include_model: bool = True) -> list[str]:
        """Renders ``vllm serve`` arguments (the model as ``--model``)."""
        args: list[str] = []
        for flag, value in _items(self, include_model=include_model):
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, dict):
                args += [flag, json.dumps(value, separators=(",", ":"))]
            else:
                args += [flag, str(value)]
        return args + list(self.extra_args)

    def to_flags_line(self) -> str:
        """One shell line: env settings, ``vllm serve MODEL`` and the flags."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        cmd = ["vllm", "serve", self.model, *self.to_cli_args(include_model=False)]
        return (env + " " if env else "") + shlex.join(cmd)

    def to_yaml_dict(self) -> dict[str, Any]:
        """The mapping written to a ``vllm serve --config`` YAML file."""
        out: dict[str, Any] = {}
        for flag, value in _items(self, include_model=True):
            key = flag[2:]
            if isinstance(value, bool):
                out[key if value else "no-" + key] = True
            else:
                out[key] = value
        # Pass-through flags: "--x v" -> x: v ; "--x" -> x: true.
        extra = list(self.extra_args)
        i = 0
        while i < len(extra):
            tok = extra[i]
            if not tok.startswith("--"):
                raise VtuneError(f"extra vLLM argument {tok!r} is not a --flag; pass flags as --name value")
            key, _, inline = tok[2:].partition("=")
            if inline:
                out[key] = _yaml_scalar(inline)
                i += 1
            elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                out[key] = _yaml_scalar(extra[i + 1])
                i += 2
            else:
                out[key] = True
                i += 1
        return out

    def to_yaml(self) -> str:
        """YAML text for ``vllm serve --config``."""
        import yaml

        return yaml.safe_dump(self.to_yaml_dict(), sort_keys=False)


def _yaml_scalar(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.startswith("{") or text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def _items(cfg: ServeConfig, *, include_model: bool) -> list[tuple[str, Any]]:
    """The single renderer: ``(--flag, value)`` for every set field."""
    items: list[tuple[str, Any]] = []
    for f in fields(cfg):
        if f.name in ("extra_args", "env") or (f.name == "model" and not include_model):
            continue
        value = getattr(cfg, f.name)
        if value is None or value == "":
            continue
        items.append(("--" + f.name.replace("_", "-"), value))
    return items


_BOOL_FIELDS = {f.name for f in fields(ServeConfig) if "bool" in str(f.type)}
_TYPED = {f.name: str(f.type) for f in fields(ServeConfig) if f.name not in ("extra_args", "env")}


def parse_serve_args(argv: list[str], *, base: ServeConfig | None = None) -> ServeConfig:
    """Parses ``vllm serve`` flags into a :class:`ServeConfig`.

    Flags vtune models fill typed fields; any other flag is kept verbatim in
    ``extra_args``. ``--flag=value`` and ``--flag value`` are both accepted. A
    positional model path is taken as ``model``. ``NAME=value`` tokens with an
    upper-case name (``VLLM_CPU_KVCACHE_SPACE=4``) are environment settings, as
    in the flags line vtune prints.

    Args:
        argv: Flags as the user typed them after ``--``.
        base: Config to start from (e.g. with ``model`` already set).

    Raises:
        VtuneError: A value of the wrong type, naming the flag.
    """
    cfg = dataclasses.replace(base) if base else ServeConfig()
    cfg.extra_args = list(cfg.extra_args)
    i = 0
    while i < len(argv):
        tok = argv[i]
        env_name, is_env, env_value = tok.partition("=")
        if is_env and not tok.startswith("-") and env_name.isupper() and env_name.replace("_", "").isalnum():
            cfg.env = {**cfg.env, env_name: env_value}
            i += 1
            continue
        if not tok.startswith("-"):
            if not cfg.model:
                cfg.model = tok
                i += 1
                continue
            raise VtuneError(f"unexpected argument {tok!r} among the vLLM flags; flags start with --")
        name, eq, inline = tok.lstrip("-").partition("=")
        key = name.replace("-", "_")
        negated = key.startswith("no_") and key[3:] in _BOOL_FIELDS
        if negated or key in _BOOL_FIELDS:
            field_name = key[3:] if negated else key
            if eq:
                raise VtuneError(f"--{name} takes no value; write --{name.removeprefix('no-')} or --no-...")
            setattr(cfg, field_name, not negated)
            i += 1
            continue
        if key in _TYPED:
            if eq:
                raw = inline
                i += 1
            elif i + 1 < len(argv):
                raw = argv[i + 1]
                i += 2
            else:
                raise VtuneError(f"--{name} needs a value")
            setattr(cfg, key, _coerce(name, raw, _TYPED[key]))
            continue
        # Unknown to vtune: keep verbatim, with its value if it has one.
        cfg.extra_args.append(tok)
        i += 1
        if not eq and i < len(argv) and not argv[i].startswith("--"):
            cfg.extra_args.append(argv[i])
            i += 1
    return cfg


def _coerce(name: str, raw: str, type_text: str) -> Any:
    try:
        if type_text.startswith("int"):
            return int(raw)
        if type_text.startswith("float"):
            return float(raw)
    except ValueError:
        kind = "an integer" if type_text.startswith("int") else "a number"
        raise VtuneError(f"--{name} must be {kind}, got {raw!r}") from None
    return raw
