"""Workloads: what load a tuning run drives through the server, and what counts as good.

A workload is a YAML file (``schema_version: 1``) with these fields:

``name`` / ``description``
    Identity and one paragraph for people.
``prompt_tokens`` / ``output_tokens``
    Token-count distributions ``{mean, stdev, min, max}`` for synthetic prompts and
    for the number of tokens each request asks for (sent with ``ignore_eos``).
``load``
    ``{kind, streams, rate_per_s}``: ``kind`` is one of ``concurrent`` (``streams``
    closed-loop clients, required), ``throughput`` (as fast as possible, ``streams``
    caps concurrency), ``synchronous`` (one request at a time), ``constant`` /
    ``poisson`` (open loop at ``rate_per_s`` requests per second, required) or
    ``sweep`` (GuideLLM's sweep from synchronous to throughput, one point per step).
``duration_s`` / ``warmup_s``
    Measured seconds in all, and seconds of warmup before them (not measured).
``steps``
    The measured time is split into this many equal steps, reported one by one, so
    an optimizer can stop a hopeless trial early.
``max_model_len_hint``
    The longest request (prompt + output tokens) the workload sends; a server must
    accept at least this ``--max-model-len``.
``slo``
    Service level objectives, each ``{percentile, max_ms}``: ``ttft_ms`` and
    ``itl_ms`` are required, ``tpot_ms`` and ``e2e_ms`` optional.
``dataset`` (optional)
    A ``.jsonl`` file of real prompts (relative to the YAML file), one JSON object a
    line with ``prompt`` and optional ``output_tokens``; it replaces synthetic prompts.

:func:`load_workload` also takes a ``.jsonl`` file directly: its prompts run under the
``chatbot`` workload's load, timing and objectives.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vtune._errors import VtuneError

__all__ = [
    "DEFAULT_WORKLOAD",
    "LOAD_KINDS",
    "SCHEMA_VERSION",
    "LoadProfile",
    "PromptRecord",
    "Slo",
    "SloTarget",
    "TokenDistribution",
    "Workload",
    "builtin_workload_dirs",
    "list_workloads",
    "load_workload",
    "read_prompts_jsonl",
]

#: Version of the workload file layout this module reads and writes.
SCHEMA_VERSION = 1
#: Load kinds a workload may name (GuideLLM profiles of the same names).
LOAD_KINDS = ("concurrent", "sweep", "constant", "poisson", "throughput", "synchronous")
#: Built-in workload used for a bare ``.jsonl`` dataset and as the default.
DEFAULT_WORKLOAD = "chatbot"

_TOP_FIELDS = {
    "schema_version",
    "name",
    "description",
    "prompt_tokens",
    "output_tokens",
    "load",
    "duration_s",
    "warmup_s",
    "steps",
    "max_model_len_hint",
    "slo",
    "dataset",
}
_REQUIRED_TOP = _TOP_FIELDS - {"dataset", "warmup_s"}
_DIST_FIELDS = ("mean", "stdev", "min", "max")
_LOAD_FIELDS = {"kind", "streams", "rate_per_s"}
_SLO_FIELDS = {"ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"}
_SLO_REQUIRED = ("ttft_ms", "itl_ms")
_TARGET_FIELDS = {"percentile", "max_ms"}


@dataclass(frozen=True)
class TokenDistribution:
    """A distribution of token counts, sampled per request.

    Attributes:
        mean: Mean tokens.
        stdev: Standard deviation in tokens (0 for a fixed count).
        min: Smallest count sampled.
        max: Largest count sampled.
    """

    mean: int
    stdev: int
    min: int
    max: int

    def to_dict(self) -> dict[str, int]:
        """Returns the distribution as the YAML mapping."""
        return {"mean": self.mean, "stdev": self.stdev, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class LoadProfile:
    """How requests are sent.

    Attributes:
        kind: One of :data:`LOAD_KINDS`.
        streams: Concurrent streams for ``concurrent``; the concurrency cap for
            ``throughput``, ``constant``, ``poisson`` and ``sweep``; None otherwise.
        rate_per_s: Requests per second for ``constant`` and ``poisson``.
    """

    kind: str
    streams: int | None = None
    rate_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Returns the profile as the YAML mapping, omitting unset fields."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.streams is not None:
            out["streams"] = self.streams
        if self.rate_per_s is not None:
            out["rate_per_s"] = self.rate_per_s
        return out


@dataclass(frozen=True)
class SloTarget:
    """One objective: the ``percentile``-th percentile must be at most ``max_ms``.

    Attributes:
        percentile: Percentile in (0, 100], e.g. 90.
        max_ms: Limit in milliseconds; also the per-request limit used for goodput.
    """

    percentile: float
    max_ms: float

    def to_dict(self) -> dict[str, float]:
        """Returns the target as the YAML mapping."""
        return {"percentile": self.percentile, "max_ms": self.max_ms}


@dataclass(frozen=True)
class Slo:
    """Service level objectives of a workload.

    Attributes:
        ttft_ms: Time to first token.
        itl_ms: Inter-token latency (per request: its mean gap between tokens after
            the first).
        tpot_ms: Optional time per output token, first token included.
        e2e_ms: Optional end-to-end request latency.
    """

    ttft_ms: SloTarget
    itl_ms: SloTarget
    tpot_ms: SloTarget | None = None
    e2e_ms: SloTarget | None = None

    def items(self) -> Iterator[tuple[str, SloTarget]]:
        """Yields ``(metric name, target)`` for every objective that is set."""
        for name in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            target = getattr(self, name)
            if target is not None:
                yield name, target

    def to_dict(self) -> dict[str, dict[str, float]]:
        """Returns the objectives as the YAML mapping, omitting unset ones."""
        return {name: target.to_dict() for name, target in self.items()}


@dataclass(frozen=True)
class PromptRecord:
    """One real prompt from a JSONL dataset.

    Attributes:
        prompt: The prompt text.
        output_tokens: Tokens to generate, or None for the workload's mean.
    """

    prompt: str
    output_tokens: int | None = None


@dataclass(frozen=True)
class Workload:
    """A validated workload.

    Attributes:
        name: Short name, e.g. ``chatbot``.
        description: What it models.
        prompt_tokens: Prompt length distribution (an estimate for datasets).
        output_tokens: Output length distribution.
        load: How requests are sent.
        duration_s: Measured seconds in all (split over ``steps``).
        warmup_s: Unmeasured warmup seconds before the first step.
        steps: Number of equal measured steps.
        max_model_len_hint: Longest request in tokens (prompt + output).
        slo: Service level objectives.
        dataset: JSONL file of real prompts, or None for synthetic prompts.
        prompts: The prompts read from ``dataset`` (empty for synthetic prompts).
        source: File the workload was read from (for messages), or ``<memory>``.
        schema_version: Layout version of the workload file.
    """

    name: str
    description: str
    prompt_tokens: TokenDistribution
    output_tokens: TokenDistribution
    load: LoadProfile
    duration_s: float
    warmup_s: float
    steps: int
    max_model_len_hint: int
    slo: Slo
    dataset: Path | None = None
    prompts: tuple[PromptRecord, ...] = field(default=(), repr=False, compare=False)
    source: str = "<memory>"
    schema_version: int = SCHEMA_VERSION

    @property
    def step_duration_s(self) -> float:
        """Measured seconds of one step."""
        return self.duration_s / self.steps

    def with_duration(self, duration_s: float) -> Workload:
        """Returns a copy measured for ``duration_s`` seconds in all, same steps.

        Raises:
            VtuneError: If the duration is too short for the steps.
        """
        if not duration_s > 0 or duration_s / self.steps < 1.0:
            raise VtuneError(
                f"duration {duration_s} s is too short for the {self.steps} steps of workload "
                f"'{self.name}': give at least {self.steps} s"
            )
        return replace(self, duration_s=float(duration_s))

    def to_dict(self) -> dict[str, Any]:
        """Returns the workload as the YAML mapping (prompts stay in ``dataset``)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "description": self.description,
            "prompt_tokens": self.prompt_tokens.to_dict(),
            "output_tokens": self.output_tokens.to_dict(),
            "load": self.load.to_dict(),
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "steps": self.steps,
            "max_model_len_hint": self.max_model_len_hint,
            "slo": self.slo.to_dict(),
        }
        if self.dataset is not None:
            out["dataset"] = str(self.dataset)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<memory>") -> Workload:
        """Validates a workload mapping (as read from YAML).

        Args:
            data: The mapping.
            source: Where it came from, for error messages; a relative ``dataset`` is
                resolved against this file's folder.

        Raises:
            VtuneError: Naming the file and the field, if anything is wrong.
        """
        return _parse(data, source)


# ---------------------------------------------------------------------------------
# Validation


def _fail(source: str, field_name: str, problem: str, fix: str) -> VtuneError:
    return VtuneError(f"{source}: field '{field_name}' {problem}; {fix}")


def _number(source: str, data: Mapping[str, Any], key: str, path: str, *, integer: bool) -> Any:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "an integer" if integer else "a number"
        raise _fail(source, path, f"must be {kind}, got {value!r}", "fix the workload file")
    if integer and not float(value).is_integer():
        raise _fail(source, path, f"must be an integer, got {value!r}", "fix the workload file")
    if not math.isfinite(value):
        raise _fail(source, path, f"must be finite, got {value!r}", "fix the workload file")
    return int(value) if integer else float(value)


def _mapping(source: str, value: Any, path: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(source, path, f"must be a mapping, got {value!r}", "fix the workload file")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(
            source,
            f"{path}.{unknown[0]}" if path else unknown[0],
            "is not a known field",
            f"use only {', '.join(sorted(allowed))}",
        )
    return value


def _require(source: str, data: Mapping[str, Any], keys: Any, path: str) -> None:
    for key in keys:
        if key not in data:
            full = f"{path}.{key}" if path else key
            raise _fail(source, full, "is missing", "add it (see configs/workloads/chatbot.yaml)")


def _dist(source: str, value: Any, path: str) -> TokenDistribution:
    data = _mapping(source, value, path, set(_DIST_FIELDS))
    _require(source, data, _DIST_FIELDS, path)
    mean, stdev, lo, hi = (_number(source, data, k, f"{path}.{k}", integer=True) for k in _DIST_FIELDS)
    if lo < 1:
        raise _fail(source, f"{path}.min", f"must be at least 1, got {lo}", "raise it")
    if stdev < 0:
        raise _fail(source, f"{path}.stdev", f"must not be negative, got {stdev}", "use 0 or more")
    if hi < lo:
        raise _fail(source, f"{path}.max", f"({hi}) is below min ({lo})", "make max >= min")
    if not lo <= mean <= hi:
        raise _fail(source, f"{path}.mean", f"({mean}) is outside [min, max] = [{lo}, {hi}]", "fix it")
    return TokenDistribution(mean=mean, stdev=stdev, min=lo, max=hi)


def _load_profile(source: str, value: Any) -> LoadProfile:
    data = _mapping(source, value, "load", _LOAD_FIELDS)
    _require(source, data, ("kind",), "load")
    kind = data["kind"]
    if kind not in LOAD_KINDS:
        raise _fail(source, "load.kind", f"is {kind!r}", f"use one of {', '.join(LOAD_KINDS)}")
    streams = None
    rate = None
    if data.get("streams") is not None:
        streams = _number(source, data, "streams", "load.streams", integer=True)
        if streams < 1:
            raise _fail(source, "load.streams", f"must be at least 1, got {streams}", "raise it")
        if kind == "synchronous":
            raise _fail(source, "load.streams", "does not apply to kind synchronous", "remove it")
    if data.get("rate_per_s") is not None:
        rate = _number(source, data, "rate_per_s", "load.rate_per_s", integer=False)
        if rate <= 0:
            raise _fail(source, "load.rate_per_s", f"must be positive, got {rate}", "raise it")
        if kind not in ("constant", "poisson"):
            raise _fail(
                source, "load.rate_per_s", f"does not apply to kind {kind}", "remove it or use constant/poisson"
            )
    if kind == "concurrent" and streams is None:
        raise _fail(source, "load.streams", "is required for kind concurrent", "add e.g. 'streams: 8'")
    if kind in ("constant", "poisson") and rate is None:
        raise _fail(source, "load.rate_per_s", f"is required for kind {kind}", "add e.g. 'rate_per_s: 4'")
    return LoadProfile(kind=kind, streams=streams, rate_per_s=rate)


def _target(source: str, value: Any, path: str) -> SloTarget:
    data = _mapping(source, value, path, _TARGET_FIELDS)
    _require(source, data, ("percentile", "max_ms"), path)
    pct = _number(source, data, "percentile", f"{path}.percentile", integer=False)
    if not 0 < pct <= 100:
        raise _fail(source, f"{path}.percentile", f"must be in (0, 100], got {pct}", "use e.g. 90")
    max_ms = _number(source, data, "max_ms", f"{path}.max_ms", integer=False)
    if max_ms <= 0:
        raise _fail(source, f"{path}.max_ms", f"must be positive, got {max_ms}", "fix the workload file")
    return SloTarget(percentile=pct, max_ms=max_ms)


def _slo(source: str, value: Any) -> Slo:
    data = _mapping(source, value, "slo", _SLO_FIELDS)
    _require(source, data, _SLO_REQUIRED, "slo")
    targets = {k: _target(source, v, f"slo.{k}") for k, v in data.items() if v is not None}
    return Slo(**targets)


def _parse(data: Any, source: str) -> Workload:
    data = _mapping(source, data, "", _TOP_FIELDS)
    _require(source, data, sorted(_REQUIRED_TOP), "")
    version = data["schema_version"]
    if version != SCHEMA_VERSION:
        raise _fail(source, "schema_version", f"is {version!r}, this vtune reads {SCHEMA_VERSION}", "convert the file")
    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, "name", "must be a non-empty string", "name the workload")
    description = data["description"]
    if not isinstance(description, str):
        raise _fail(source, "description", "must be a string", "describe the workload")
    prompt_tokens = _dist(source, data["prompt_tokens"], "prompt_tokens")
    output_tokens = _dist(source, data["output_tokens"], "output_tokens")
    load = _load_profile(source, data["load"])
    duration_s = _number(source, data, "duration_s", "duration_s", integer=False)
    warmup_s = 0.0
    if data.get("warmup_s") is not None:
        warmup_s = _number(source, data, "warmup_s", "warmup_s", integer=False)
    steps = _number(source, data, "steps", "steps", integer=True)
    hint = _number(source, data, "max_model_len_hint", "max_model_len_hint", integer=True)
    if steps < 1:
        raise _fail(source, "steps", f"must be at least 1, got {steps}", "use 1 or more")
    if load.kind == "sweep" and steps < 2:
        raise _fail(source, "steps", "must be at least 2 for kind sweep (one sweep point a step)", "raise it")
    if duration_s <= 0 or duration_s / steps < 1.0:
        raise _fail(
            source, "duration_s", f"({duration_s}) must give each of the {steps} steps at least 1 s", "raise it"
        )
    if warmup_s < 0:
        raise _fail(source, "warmup_s", f"must not be negative, got {warmup_s}", "use 0 or more")
    dataset: Path | None = None
    prompts: tuple[PromptRecord, ...] = ()
    if data.get("dataset") is not None:
        if not isinstance(data["dataset"], str):
            raise _fail(source, "dataset", "must be a path string", "give the .jsonl file's path")
        dataset = Path(data["dataset"]).expanduser()
        if not dataset.is_absolute() and source not in ("<memory>",):
            dataset = Path(source).parent / dataset
        dataset = dataset.resolve()
        prompts = read_prompts_jsonl(dataset)
    longest = prompt_tokens.max + output_tokens.max
    if dataset is None and hint < longest:
        raise _fail(
            source,
            "max_model_len_hint",
            f"({hint}) is below prompt_tokens.max + output_tokens.max ({longest})",
            f"set it to at least {longest}",
        )
    if hint < 1:
        raise _fail(source, "max_model_len_hint", f"must be positive, got {hint}", "fix the workload file")
    return Workload(
        name=name.strip(),
        description=description.strip(),
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        load=load,
        duration_s=duration_s,
        warmup_s=warmup_s,
        steps=steps,
        max_model_len_hint=hint,
        slo=_slo(source, data["slo"]),
        dataset=dataset,
        prompts=prompts,
        source=source,
        schema_version=version,
    )


# ---------------------------------------------------------------------------------
# JSONL datasets


def read_prompts_jsonl(path: Path) -> tuple[PromptRecord, ...]:
    """Reads a JSONL file of prompts: one object a line, ``prompt`` and optional ``output_tokens``.

    Blank lines are skipped.

    Raises:
        VtuneError: Naming the file and line, if the file is missing or a line is bad.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise VtuneError(f"cannot read prompts file {path}: {exc.strerror}; check the path") from None
    records: list[PromptRecord] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VtuneError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise VtuneError(f"{where}: expected a JSON object with a 'prompt' field; fix the line")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise VtuneError(f"{where}: field 'prompt' must be a non-empty string; fix the line")
        out = obj.get("output_tokens")
        if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
            raise VtuneError(f"{where}: field 'output_tokens' must be a positive integer, got {out!r}; fix it")
        records.append(PromptRecord(prompt=prompt, output_tokens=out))
    if not records:
        raise VtuneError(f'{path}: no prompts found; add lines like {{"prompt": "..."}}')
    return tuple(records)


def _workload_from_jsonl(path: Path) -> Workload:
    """Builds a workload from a bare JSONL file under the default workload's load and SLOs."""
    base = load_workload(DEFAULT_WORKLOAD)
    path = path.resolve()
    prompts = read_prompts_jsonl(path)
    # Token counts are unknown until the served model's tokenizer is at hand; estimate
    # from characters (about 4 a token for English) for the record, and bound the
    # longest request generously (2 characters a token) for the max-model-len hint.
    chars = [len(p.prompt) for p in prompts]
    est = [max(1, math.ceil(c / 4)) for c in chars]
    mean = round(sum(est) / len(est))
    stdev = round(math.sqrt(sum((e - mean) ** 2 for e in est) / len(est)))
    # A prompt without output_tokens asks for the default workload's mean.
    prompts = tuple(replace(p, output_tokens=p.output_tokens or base.output_tokens.mean) for p in prompts)
    outs = [p.output_tokens or base.output_tokens.mean for p in prompts]
    out_mean = round(sum(outs) / len(outs))
    out_stdev = round(math.sqrt(sum((o - out_mean) ** 2 for o in outs) / len(outs)))
    longest = max(math.ceil(c / 2) + o for c, o in zip(chars, outs, strict=True))
    hint = max(256, math.ceil(longest / 256) * 256)
    return replace(
        base,
        name=path.stem,
        description=f"{len(prompts)} prompts from {path.name} under the {base.name} workload's load and SLOs",
        prompt_tokens=TokenDistribution(mean=mean, stdev=stdev, min=min(est), max=max(est)),
        output_tokens=TokenDistribution(mean=out_mean, stdev=out_stdev, min=min(outs), max=max(outs)),
        max_model_len_hint=hint,
        dataset=path,
        prompts=prompts,
        source=str(path),
    )


# ---------------------------------------------------------------------------------
# Lookup


def builtin_workload_dirs() -> list[Path]:
    """Returns the folders searched for built-in workloads, in order.

    ``$VTUNE_WORKLOADS_DIR`` if set; the checkout's ``configs/workloads`` (the one
    source of truth, also found by an editable install); and ``vtune/data/workloads``
    inside the package, for a build that ships copies there.
    """
    dirs: list[Path] = []
    env = os.environ.get("VTUNE_WORKLOADS_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path(__file__).resolve().parent.parent / "configs" / "workloads")
    try:
        dirs.append(Path(str(resources.files("vtune") / "data" / "workloads")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - odd importers
        pass
    return [d for d in dirs if d.is_dir()]


def _builtin_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in builtin_workload_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def list_workloads() -> list[str]:
    """Returns the names of the built-in workloads, sorted."""
    return sorted(_builtin_files())


def _read_yaml(path: Path) -> Workload:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VtuneError(f"cannot read workload file {path}: {exc.strerror}; check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise VtuneError(f"{where}: not valid YAML; fix the syntax") from None
    return _parse(data, str(path))


def load_workload(name_or_path: str) -> Workload:
    """Loads a workload: a built-in name, a YAML file, or a ``.jsonl`` file of prompts.

    Args:
        name_or_path: ``chatbot`` (see :func:`list_workloads`), a path to a YAML file
            of the workload schema, or a path to a ``.jsonl`` file of prompts.

    Returns:
        The validated workload.

    Raises:
        VtuneError: If nothing matches, or the file is invalid (naming the field).
    """
    text = str(name_or_path).strip()
    path = Path(text).expanduser()
    if path.suffix == ".jsonl":
        return _workload_from_jsonl(path)
    if path.suffix in (".yaml", ".yml") or os.sep in text or path.is_file():
        if not path.is_file():
            raise VtuneError(f"workload file {path} does not exist; give a path or one of {list_workloads()}")
        return _read_yaml(path)
    builtins = _builtin_files()
    if text in builtins:
        return _read_yaml(builtins[text])
    if not builtins:
        raise VtuneError(
            f"unknown workload '{text}' and no built-in workloads found; "
            "set VTUNE_WORKLOADS_DIR to a folder of workload .yaml files (e.g. the repo's configs/workloads)"
        )
    raise VtuneError(
        f"unknown workload '{text}'; use one of {', '.join(sorted(builtins))}, a .yaml file or a .jsonl file"
    )
