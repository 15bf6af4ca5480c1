"""The one typed serving configuration, its renderers and the flags generated from it.

:class:`ServeConfig` holds what a ``vllm serve`` command line holds. Its field
names are exactly vLLM's engine-argument names (``tensor_parallel_size`` is
``--tensor-parallel-size``), so a field maps to a flag with no table in between.
A field left at ``None`` is not rendered: vLLM's own default applies.

Every flag is spelled once, here. Each field carries its help text (and vLLM's
short aliases, ``-tp -pp -dp``) in ``metadata``; :func:`add_serve_flags` builds
argparse flags from the fields (as vLLM builds its CLI from its config
dataclasses: booleans as ``--x/--no-x``, ints and floats typed), and
:func:`parse_serve_args` reads a ``vllm serve`` command line back by the same
fields.

One renderer, :func:`_items`, turns the config into ``(flag, value)`` pairs; both
:meth:`ServeConfig.to_cli_args` (a command line) and :meth:`ServeConfig.to_yaml`
(a file for ``vllm serve --config``) are built from it. Booleans are always
explicit: ``True`` renders as ``--x`` and ``False`` as ``--no-x``; in YAML a false
boolean is written as ``no-x: true`` because older vLLM YAML loaders drop
``x: false`` silently. :meth:`ServeConfig.from_yaml` reads such a file back with
vLLM's own flattening rule.

Settings that vLLM reads from the environment (``VLLM_CPU_KVCACHE_SPACE`` on the
CPU engine) live in :attr:`ServeConfig.env`; flags vtune does not model pass
through untouched in :attr:`ServeConfig.extra_args`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from vtune._errors import VtuneError

__all__ = ["ServeConfig", "add_serve_flags", "flag_name", "parse_serve_args", "serve_config_from_args",
           "yaml_to_args"]


def _doc(text: str, *aliases: str) -> dict[str, Any]:
    """Field metadata: the help line (``--help`` and docs) and short aliases of the flag."""
    return {"help": text, "aliases": aliases}


@dataclass
class ServeConfig:
    """A vLLM serving configuration; field names are vLLM's engine arguments."""

    model: str = field(default="", metadata=_doc("Model directory or Hugging Face id to serve."))
    tensor_parallel_size: int | None = field(
        default=None, metadata=_doc("GPUs a replica's layers are split across (attention heads split).", "-tp")
    )
    pipeline_parallel_size: int | None = field(
        default=None, metadata=_doc("Pipeline stages a replica's layers are split into.", "-pp")
    )
    data_parallel_size: int | None = field(
        default=None, metadata=_doc("Independent engine replicas behind one API server.", "-dp")
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

    @classmethod
    def from_yaml(cls, text: str) -> ServeConfig:
        """Reads a ``vllm serve --config`` YAML text (the inverse of :meth:`to_yaml`).

        Raises:
            VtuneError: Not YAML, not a mapping, or a value of the wrong type.
        """
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise VtuneError(f"not valid YAML ({str(exc).splitlines()[0]}); fix the config file") from None
        return parse_serve_args(yaml_to_args(data or {}))


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
        items.append((flag_name(f.name), value))
    return items


def flag_name(field_name: str) -> str:
    """``tensor_parallel_size`` -> ``--tensor-parallel-size``."""
    return "--" + field_name.replace("_", "-")


def _field_types() -> dict[str, type]:
    """The value type of each flag field (``int | None`` -> ``int``)."""
    hints = typing.get_type_hints(ServeConfig)
    out: dict[str, type] = {}
    for f in fields(ServeConfig):
        if f.name in ("extra_args", "env"):
            continue
        hint = hints[f.name]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        out[f.name] = hint
    return out


#: Field name -> value type (``bool``, ``int``, ``float`` or ``str``) of every flag field.
_FIELD_TYPES: dict[str, type] = _field_types()
_BOOL_FIELDS = {name for name, t in _FIELD_TYPES.items() if t is bool}
#: Short aliases (``-tp``) -> field name.
_ALIASES = {alias: f.name for f in fields(ServeConfig) for alias in f.metadata.get("aliases", ())}


def add_serve_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, exclude: tuple[str, ...] = ("model",)
) -> None:
    """Adds one flag per :class:`ServeConfig` field, named and typed as vLLM's.

    Booleans become ``--x/--no-x`` (:class:`argparse.BooleanOptionalAction`),
    ints and floats are typed, vLLM's short aliases (``-tp -pp -dp``) are kept.
    Every default is ``None`` (not given: vLLM's default applies), so
    :func:`serve_config_from_args` builds the config from what was typed.

    Args:
        parser: Parser or argument group to add to.
        exclude: Fields to leave out (``model`` by default: commands give it
            their own help).
    """
    for f in fields(ServeConfig):
        if f.name in ("extra_args", "env") or f.name in exclude:
            continue
        kind = _FIELD_TYPES[f.name]
        names = [flag_name(f.name), *f.metadata.get("aliases", ())]
        help_text = str(f.metadata.get("help", "")).replace("%", "%%")
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            metavar = {int: "N", float: "X"}.get(kind, "VALUE")
            parser.add_argument(*names, dest=f.name, type=kind, default=None, metavar=metavar, help=help_text)


def serve_config_from_args(args: argparse.Namespace, **changes: Any) -> ServeConfig:
    """The :class:`ServeConfig` of the flags :func:`add_serve_flags` added (others ``None``).

    Args:
        args: Parsed arguments.
        **changes: Fields to set on top (e.g. ``model``).
    """
    values = {name: getattr(args, name) for name in _FIELD_TYPES if hasattr(args, name)}
    return ServeConfig(**{**values, **changes})


def parse_serve_args(argv: list[str], *, base: ServeConfig | None = None) -> ServeConfig:
    """Parses ``vllm serve`` flags into a :class:`ServeConfig`.

    Flags vtune models (a field's flag, its ``--no-`` form for a boolean, or a
    short alias such as ``-tp``) fill typed fields; any other flag is kept
    verbatim in ``extra_args``. ``--flag=value`` and ``--flag value`` are both
    accepted. A positional model path is taken as ``model``. ``NAME=value``
    tokens with an upper-case name (``VLLM_CPU_KVCACHE_SPACE=4``) are environment
    settings, as in the flags line vtune prints.

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
        flag, eq, inline = tok.partition("=")
        name = flag.lstrip("-")
        key = _ALIASES.get(flag) or name.replace("-", "_")
        negated = key.startswith("no_") and key[3:] in _BOOL_FIELDS
        if negated or key in _BOOL_FIELDS:
            field_name = key[3:] if negated else key
            if eq:
                raise VtuneError(f"--{name} takes no value; write --{name.removeprefix('no-')} or --no-...")
            setattr(cfg, field_name, not negated)
            i += 1
            continue
        if key in _FIELD_TYPES:
            if eq:
                raw = inline
                i += 1
            elif i + 1 < len(argv):
                raw = argv[i + 1]
                i += 2
            else:
                raise VtuneError(f"{flag} needs a value")
            setattr(cfg, key, _coerce(flag, raw, _FIELD_TYPES[key]))
            continue
        # Unknown to vtune: keep verbatim, with its value if it has one.
        cfg.extra_args.append(tok)
        i += 1
        if not eq and i < len(argv) and not argv[i].startswith("--"):
            cfg.extra_args.append(argv[i])
            i += 1
    return cfg


def yaml_to_args(data: Mapping[str, Any]) -> list[str]:
    """The command line vLLM makes of a ``--config`` YAML mapping.

    vLLM's rule (``FlexibleArgumentParser.load_config_file``): ``key: true`` is
    ``--key``, ``key: false`` is dropped (vtune writes ``no-key: true`` instead), a
    list is ``--key item ...``, a mapping is ``--key JSON``, anything else is
    ``--key value``.

    Raises:
        VtuneError: Not a mapping.
    """
    if not isinstance(data, Mapping):
        raise VtuneError(f"a vllm serve --config file holds a mapping of flags, got {type(data).__name__}")
    args: list[str] = []
    for key, value in data.items():
        flag = "--" + str(key)
        if isinstance(value, bool):
            if value:
                args.append(flag)
        elif isinstance(value, list):
            if value:
                args += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    return args


def _coerce(flag: str, raw: str, kind: type) -> Any:
    if kind not in (int, float):
        return raw
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise VtuneError(f"{flag} must be {what}, got {raw!r}") from None
