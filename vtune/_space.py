"""The search space: which vLLM flags a study samples, and over what values.

The default space is built from the hardware and the model (:func:`default_space`):
the parallel layouts vLLM accepts on the GPUs found (TP divides the heads, TP x PP
x DP uses every GPU, PP only where the model needs it), ``max_num_seqs`` and
``max_num_batched_tokens`` on a log scale, ``gpu_memory_utilization`` (on the CPU
engine ``VLLM_CPU_KVCACHE_SPACE`` instead) and switchable dimensions (prefix
caching, chunked prefill, KV cache dtype, eager vs CUDA graphs and the largest
capture size, async scheduling) that a space file turns on. Prefix caching is
turned on by itself when the workload's requests share prefixes
(:attr:`Workload.shares_prefix <vtune._workload.Workload.shares_prefix>`: a shared
prefix, several turns, or a trace whose requests share blocks); otherwise the load
never reuses a prefix and the flag could only cost.

A space file (``--space configs/my-space.yaml``) fixes, narrows, widens, switches
or adds dimensions::

    schema_version: 1
    dimensions:
      max_num_seqs: {low: 16, high: 512}          # narrow or widen (log scale kept)
      gpu_memory_utilization: {fixed: 0.92}       # fix
      enable_prefix_caching: {enabled: true}      # switch on
      parallel_layout: {choices: [tp1-pp1-dp2, tp2-pp1-dp1]}
      --max-num-partial-prefills: {choices: [1, 2, 4]}   # any other vLLM flag

A dimension whose name starts with ``--`` is passed to vLLM as that flag (in
``extra_args``, once: a value the fixed flags already give is replaced; a flag that
names a :class:`ServeConfig` field sets that field); an upper-case name is an
environment variable. Configurations are made only through :class:`ServeConfig`:
its fields, its ``env`` and its ``extra_args`` (:func:`apply_values`).

The file is validated by the pydantic model :class:`SpaceFile` (unknown keys are
errors; ``vtune schema space`` prints its JSON schema); an error is one line naming
the file and the dimension.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictBool, ValidationError, field_validator, model_validator

from vtune._errors import VtuneError
from vtune._file_model import FileModel, Real, error_line, field_error, json_schema
from vtune._memory import check_layout
from vtune._model_shape import ModelShape
from vtune._serve_config import _BOOL_FIELDS, _FIELD_TYPES, ServeConfig
from vtune._workload import Workload

__all__ = ["SCHEMA_VERSION", "Dimension", "DimensionSpec", "SearchSpace", "SpaceFile", "default_space", "param_value",
           "layout_name", "parse_layout", "space_json_schema"]

SCHEMA_VERSION = 1


def layout_name(tp: int, pp: int, dp: int) -> str:
    """``tp2-pp1-dp2`` style name of a parallel layout."""
    return f"tp{tp}-pp{pp}-dp{dp}"


def parse_layout(name: str) -> tuple[int, int, int]:
    """Inverse of :func:`layout_name`.

    Raises:
        VtuneError: Not of the form ``tpN-ppN-dpN``.
    """
    try:
        tp, pp, dp = (int(part[2:]) for part in name.split("-"))
        return tp, pp, dp
    except ValueError:
        raise VtuneError(f"parallel layout {name!r}: write it as tp<N>-pp<N>-dp<N>, e.g. tp2-pp1-dp2") from None


@dataclass
class Dimension:
    """One sampled (or fixed) setting.

    Attributes:
        name: A :class:`ServeConfig` field, ``parallel_layout``, an environment
            variable (upper case) or a ``--vllm-flag``.
        kind: ``int``, ``float`` or ``categorical``.
        low: Lower bound (int/float).
        high: Upper bound (int/float).
        log: Sample on a log scale.
        step: Step of a float dimension (None: continuous).
        choices: Values of a categorical dimension.
        fixed: A value that is always used instead of sampling.
        enabled: Off: the dimension is neither sampled nor set (vLLM's default applies).
        help: What it changes.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    fixed: Any = None
    enabled: bool = True
    help: str = ""

    def validate(self, source: str) -> None:
        """Raises a one-line :class:`VtuneError` if the dimension is unusable."""
        where = f"{source}: dimension {self.name!r}"
        if self.kind not in ("int", "float", "categorical"):
            raise VtuneError(f"{where}: kind must be int, float or categorical, got {self.kind!r}")
        if self.fixed is not None or not self.enabled:
            return
        if self.kind == "categorical":
            if not self.choices:
                raise VtuneError(f"{where}: give at least one value in 'choices'")
            return
        if self.low is None or self.high is None or self.low > self.high:
            raise VtuneError(f"{where}: needs low <= high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise VtuneError(f"{where}: a log-scale dimension needs low > 0, got {self.low}")

    @property
    def active(self) -> bool:
        """Sampled by the study (enabled and not fixed)."""
        return self.enabled and self.fixed is None

    def suggest(self, trial: Any) -> Any:
        """Asks an Optuna trial for a value (or returns the fixed one)."""
        if self.fixed is not None:
            return self.fixed
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices or []))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low or 0), int(self.high or 0), log=self.log)
        value = trial.suggest_float(self.name, float(self.low or 0), float(self.high or 0), log=self.log,
                                    step=self.step)
        return param_value(value) if self.step else value

    def project(self, value: Any) -> Any:
        """The nearest value inside the dimension (to enqueue a baseline's params)."""
        if self.kind == "categorical":
            choices = list(self.choices or [])
            if value in choices:
                return value
            nums = [c for c in choices if isinstance(c, int | float) and not isinstance(c, bool)]
            if isinstance(value, int | float) and nums:
                return min(nums, key=lambda c: abs(math.log(max(c, 1e-9)) - math.log(max(value, 1e-9))))
            return choices[0]
        lo, hi = float(self.low or 0), float(self.high or 0)
        v = min(max(float(value), lo), hi)
        if self.kind == "int":
            return int(round(v))
        if self.step:
            v = lo + round((v - lo) / self.step) * self.step
            v = param_value(min(v, hi))
        return v


def param_value(value: Any) -> Any:
    """A parameter as it is run and shown: a float to 6 decimals, anything else as it is.

    Optuna's stepped floats are ``low + k x step`` in binary (0.8200000000000001); the flag and the
    progress line get the step's value (0.82).
    """
    return round(value, 6) if isinstance(value, float) else value


@dataclass
class SearchSpace:
    """The dimensions of a study, in sampling order."""

    dimensions: list[Dimension] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def get(self, name: str) -> Dimension | None:
        """The dimension called ``name``, if any."""
        return next((d for d in self.dimensions if d.name == name), None)

    @property
    def active(self) -> list[Dimension]:
        """The dimensions the study samples."""
        return [d for d in self.dimensions if d.active]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored with the study, so workers rebuild the same space)."""
        return {"schema_version": self.schema_version, "dimensions": [asdict(d) for d in self.dimensions]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """Inverse of :meth:`to_dict`."""
        return cls(dimensions=[Dimension(**d) for d in data.get("dimensions", [])],
                   schema_version=int(data.get("schema_version", SCHEMA_VERSION)))

    def sample(self, trial: Any, base: ServeConfig) -> ServeConfig:
        """Builds the trial's configuration: ``base`` (fixed flags) plus sampled values."""
        values = {d.name: d.suggest(trial) for d in self.dimensions if d.enabled}
        return apply_values(base, values)

    def project(self, values: dict[str, Any]) -> dict[str, Any]:
        """Optuna params for enqueuing a configuration's values into this space."""
        return {d.name: d.project(values[d.name]) for d in self.active if d.name in values}

    def with_overrides(self, data: Any, source: str) -> SearchSpace:
        """Applies a space file's ``dimensions`` mapping.

        Args:
            data: The file's content (validated by :class:`SpaceFile`).
            source: The file, for messages.

        Raises:
            VtuneError: A malformed file, an unknown key or dimension, or an
                impossible range (one line naming the file and the dimension).
        """
        try:
            spec_file = SpaceFile.model_validate(data)
        except ValidationError as exc:
            raise error_line(exc, source, SpaceFile, missing_fix="add it (see README: Search-space files)",
                             fix="fix the space file (see README: Search-space files)") from None
        out = SearchSpace([replace(d) for d in self.dimensions])
        known_fields = set(_FIELD_TYPES) - {"model"}
        for raw_name, spec in spec_file.dimensions.items():
            name = _dimension_name(raw_name, source)
            changes = spec.model_dump(exclude_unset=True)
            dim = out.get(name)
            if dim is None:
                if not (name.startswith("--") or name.isupper() or name in known_fields or name == "parallel_layout"):
                    raise VtuneError(
                        f"{source}: unknown dimension {raw_name!r}; use a vLLM engine argument name "
                        f"(e.g. max_num_seqs), a --vllm-flag, or an ENV_VAR"
                    )
                kind = changes.get("kind") or ("categorical" if "choices" in changes or "fixed" in changes else "int")
                dim = Dimension(name=name, kind=kind)
                out.dimensions.append(dim)
            for key, value in changes.items():
                setattr(dim, key, value)
            if "choices" in changes:
                dim.kind = changes.get("kind") or "categorical"
            if ("low" in changes or "high" in changes or "choices" in changes) and "enabled" not in changes:
                dim.enabled = True
            dim.validate(source)
        return out


_FLAG = re.compile(r"--[A-Za-z0-9][A-Za-z0-9_-]*")


def _dimension_name(name: str, where: str = "search space") -> str:
    """A space file's dimension name as the space stores it.

    ``--max-num-seqs`` (a flag of a :class:`ServeConfig` field) is the field
    ``max_num_seqs``, so the value is rendered once, by the field.

    Raises:
        VtuneError: A ``--`` name that is not a flag.
    """
    if name.startswith("-"):
        if not _FLAG.fullmatch(name):
            raise VtuneError(f"{where}: dimension {name!r} is not a vLLM flag; write it as --flag-name")
        field_name = name[2:].replace("-", "_")
        if field_name in _FIELD_TYPES and field_name != "model":
            return field_name
    return name


class DimensionSpec(FileModel):
    """How a space file changes one dimension (or adds one); a bare value fixes it."""

    low: Real | None = Field(default=None, description="Lower bound of an int or float dimension.")
    high: Real | None = Field(default=None, description="Upper bound of an int or float dimension.")
    log: StrictBool | None = Field(default=None, description="Sample on a log scale (needs low > 0).")
    step: Real | None = Field(default=None, description="Step of a float dimension (none: continuous).")
    choices: list[Any] | None = Field(
        default=None, description="Values to choose from (a categorical dimension): numbers, strings, booleans."
    )
    fixed: Any = Field(default=None, description="One value for every trial: the dimension is not sampled.")
    enabled: StrictBool | None = Field(
        default=None, description="Switch the dimension on (sampled) or off (vLLM's default applies)."
    )
    kind: Literal["int", "float", "categorical"] | None = Field(
        default=None, description="Type of a new dimension (default: categorical with choices or fixed, else int)."
    )
    help: str | None = Field(default=None, description="What the dimension changes, for reports.")

    @model_validator(mode="before")
    @classmethod
    def _bare_value(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else {"fixed": value}

    @field_validator("choices")
    @classmethod
    def _scalars(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None:
            if not value:
                raise field_error("is empty", "give at least one value")
            bad = [v for v in value if v is not None and not isinstance(v, bool | int | float | str)]
            if bad:
                raise field_error(f"holds {bad[0]!r}", "use numbers, strings or booleans")
        return value

    @field_validator("step")
    @classmethod
    def _positive_step(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise field_error(f"must be positive, got {value}", "raise it or drop it")
        return value


class SpaceFile(FileModel):
    """A vtune search-space file (``--space``): fixes, narrows, widens, switches or adds dimensions."""

    schema_version: Literal[1] = Field(default=1, description="Layout version of this file; this vtune reads 1.")
    dimensions: dict[str, DimensionSpec] = Field(
        default_factory=dict,
        description="Dimension name -> change. A name is a vLLM engine argument (max_num_seqs), parallel_layout "
                    "(tp<N>-pp<N>-dp<N> choices), any other vLLM flag (--max-num-partial-prefills) or an "
                    "environment variable (VLLM_CPU_KVCACHE_SPACE).",
    )

    @field_validator("dimensions", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


def space_json_schema() -> dict[str, Any]:
    """The JSON schema of a search-space YAML file (``vtune schema space``)."""
    schema = json_schema(SpaceFile, title="vtune search-space file")
    # A bare value fixes a dimension (DimensionSpec's before-validator): the schema says so too.
    schema["properties"]["dimensions"]["additionalProperties"] = {"anyOf": [
        {"$ref": "#/$defs/DimensionSpec"},
        {"type": ["number", "string", "boolean", "null"], "description": "A fixed value."},
    ]}
    return schema


def apply_values(base: ServeConfig, values: dict[str, Any]) -> ServeConfig:
    """Sets sampled values on a copy of ``base``, only through :class:`ServeConfig`.

    ``parallel_layout`` sets the three parallel sizes; an upper-case name goes to
    ``env``; a :class:`ServeConfig` field name (or its ``--flag``) sets the field;
    any other ``--flag`` goes to ``extra_args``, replacing the flag if ``base``
    already has it, so it is rendered once (``True``/``False`` as ``--x``/``--no-x``,
    ``None`` leaves it out).

    Raises:
        VtuneError: A name that is none of these.
    """
    cfg = base.replace(env=dict(base.env), extra_args=list(base.extra_args))
    for name, value in values.items():
        if name == "parallel_layout":
            tp, pp, dp = parse_layout(str(value))
            cfg.tensor_parallel_size, cfg.pipeline_parallel_size, cfg.data_parallel_size = tp, pp, dp
            continue
        if name.isupper():
            if value is None:
                cfg.env.pop(name, None)
            else:
                cfg.env[name] = str(value)
            continue
        field_name = _dimension_name(name) if name.startswith("-") else name
        if field_name.startswith("--"):
            cfg.extra_args = _set_flag(cfg.extra_args, field_name, value)
        elif field_name in _FIELD_TYPES and field_name != "model":
            if field_name in _BOOL_FIELDS and value is not None:
                value = bool(value)
            setattr(cfg, field_name, value)
        else:
            raise VtuneError(
                f"search-space dimension {name!r} is not a vLLM engine argument vtune models, a --vllm-flag or an "
                "ENV_VAR; rename it in the space file"
            )
    return cfg


def _set_flag(extra: list[str], flag: str, value: Any) -> list[str]:
    """``extra`` with ``flag`` (and ``--no-`` form, and its value) replaced by ``flag value``."""
    negative = "--no-" + flag[2:]
    out: list[str] = []
    i = 0
    while i < len(extra):
        tok = extra[i]
        name = tok.partition("=")[0]
        if name in (flag, negative):
            i += 1
            if "=" not in tok and name == flag and i < len(extra) and not extra[i].startswith("--"):
                i += 1  # its value
            continue
        out.append(tok)
        i += 1
    if value is None:
        return out
    if isinstance(value, bool):
        return [*out, flag if value else negative]
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else str(value)
    return [*out, flag, text]


def _layouts(shape: ModelShape | None, num_gpus: int, weights_fit_tp: Any) -> list[str]:
    """Layouts using every GPU; PP > 1 only when no PP = 1 layout holds the weights."""
    names = []
    for pp_allowed in ((1,), tuple(range(2, num_gpus + 1))):
        for tp in range(1, num_gpus + 1):
            for pp in pp_allowed:
                if num_gpus % (tp * pp):
                    continue
                if shape is not None and check_layout(shape, tp, pp) is not None:
                    continue
                if not weights_fit_tp(tp, pp):
                    continue
                names.append(layout_name(tp, pp, num_gpus // (tp * pp)))
        if names:
            break
    return names


def default_space(
    *,
    device: str,
    num_gpus: int,
    shape: ModelShape | None = None,
    weights_fit: Any = None,
    cpu_cores: int = 1,
    workload: Workload | None = None,
) -> SearchSpace:
    """The search space vtune uses unless a space file changes it.

    Args:
        device: ``gpu`` or ``cpu``.
        num_gpus: GPUs a trial may use (GPU device).
        shape: The model (to keep only layouts vLLM accepts).
        weights_fit: ``f(tp, pp) -> bool``: whether the weights fit at that layout.
        cpu_cores: Cores for the CPU engine (each TP/DP rank needs one).
        workload: The study's workload: when its requests share prefixes, the
            ``enable_prefix_caching`` dimension is on.
    """
    fit = weights_fit or (lambda tp, pp: True)
    dims: list[Dimension] = []
    if device == "gpu":
        layouts = _layouts(shape, max(1, num_gpus), fit)
        dims.append(Dimension("parallel_layout", "categorical", choices=layouts or ["tp1-pp1-dp1"],
                              help="tensor x pipeline x data parallel sizes over the GPUs"))
        dims += [
            Dimension("max_num_seqs", "int", low=16, high=1024, log=True, help="sequences per step per replica"),
            Dimension("max_num_batched_tokens", "int", low=1024, high=16384, log=True,
                      help="tokens per step per replica (prefill chunk)"),
            Dimension("gpu_memory_utilization", "float", low=0.80, high=0.95, step=0.01,
                      help="fraction of GPU memory vLLM may use"),
            Dimension("enable_prefix_caching", "categorical", choices=[True, False], enabled=False),
            Dimension("enable_chunked_prefill", "categorical", choices=[True, False], enabled=False),
            Dimension("kv_cache_dtype", "categorical", choices=["auto", "fp8"], enabled=False),
            Dimension("enforce_eager", "categorical", choices=[False, True], enabled=False,
                      help="eager mode vs CUDA graphs + torch.compile"),
            Dimension("max_cudagraph_capture_size", "categorical", choices=[64, 128, 256, 512], enabled=False),
            Dimension("async_scheduling", "categorical", choices=[True, False], enabled=False),
        ]
    else:
        layouts = ["tp1-pp1-dp1"]
        if cpu_cores >= 2:
            layouts += ["tp2-pp1-dp1", "tp1-pp1-dp2"]
        dims.append(Dimension("parallel_layout", "categorical", choices=layouts, enabled=False,
                              help="CPU engine ranks (one core each)"))
        dims += [
            Dimension("max_num_seqs", "int", low=2, high=256, log=True, help="sequences per step"),
            Dimension("max_num_batched_tokens", "int", low=256, high=8192, log=True, help="tokens per step"),
            Dimension("VLLM_CPU_KVCACHE_SPACE", "int", low=1, high=4, help="KV cache space in GiB (CPU engine)"),
            Dimension("dtype", "categorical", choices=["float32", "bfloat16"],
                      help="on CPUs without bf16 instructions float32 is faster"),
            Dimension("enable_prefix_caching", "categorical", choices=[True, False], enabled=False),
            Dimension("enable_chunked_prefill", "categorical", choices=[True, False], enabled=False),
            Dimension("enforce_eager", "categorical", choices=[True, False], fixed=True,
                      help="torch.compile on the CPU engine adds ~40 s to every start"),
        ]
    if workload is not None and workload.shares_prefix:
        for dim in dims:
            if dim.name == "enable_prefix_caching":
                dim.enabled = True
                dim.help = f"workload '{workload.name}' shares prefixes"
    return SearchSpace(dims)


def load_space_file(path: str | Path, base: SearchSpace) -> SearchSpace:
    """Reads a ``--space`` YAML file over ``base``.

    Raises:
        VtuneError: Missing or malformed file.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise VtuneError(f"--space {path}: no such file; write a YAML with 'dimensions:' (see README)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise VtuneError(f"--space {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return base.with_overrides({} if data is None else data, str(path))


__all__ += ["apply_values", "load_space_file"]
