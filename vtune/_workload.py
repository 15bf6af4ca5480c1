"""Workloads: what load a tuning run drives through the server, and what counts as good.

(One module of about 600 lines: the file model, its field descriptions and the dataclasses
the rest of vtune uses are one schema; most of the lines are the field-by-field
documentation of that schema.)

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

The file is validated by the pydantic model :class:`WorkloadFile` (unknown fields are
errors; ``vtune schema workload`` prints its JSON schema); an error is one line naming
the file and the field. The rest of vtune uses the frozen dataclasses built from it
(:class:`Workload`, :class:`LoadProfile`, :class:`Slo`, ...).

:func:`load_workload` also takes a ``.jsonl`` file directly: its prompts run under the
``chatbot`` workload's load, timing and objectives.
"""

from __future__ import annotations

import json
import math
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from vtune._errors import VtuneError
from vtune._file_model import FileModel, Integer, Number, error_line, field_error, json_schema

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
    "WorkloadFile",
    "builtin_workload_dirs",
    "list_workloads",
    "load_workload",
    "read_prompts_jsonl",
    "workload_json_schema",
]

#: Version of the workload file layout this module reads and writes.
SCHEMA_VERSION = 1
#: A load kind: a GuideLLM profile of the same name.
LoadKind = Literal["concurrent", "sweep", "constant", "poisson", "throughput", "synchronous"]
#: Load kinds a workload may name (GuideLLM profiles of the same names).
LOAD_KINDS: tuple[str, ...] = typing.get_args(LoadKind)
#: Built-in workload used for a bare ``.jsonl`` dataset and as the default.
DEFAULT_WORKLOAD = "chatbot"

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
# Validation: the file's pydantic model (its JSON schema is `vtune schema workload`)

_SEE = "see configs/workloads/chatbot.yaml"
_FIX = "fix the workload file"


class TokenDistributionModel(FileModel):
    """Token counts of a request, drawn from a normal distribution clipped to [min, max]."""

    mean: Integer = Field(description="Mean tokens; within [min, max].")
    stdev: Integer = Field(ge=0, description="Standard deviation in tokens (0: every request has `mean`).")
    min: Integer = Field(ge=1, description="Fewest tokens drawn (at least 1).")
    max: Integer = Field(description="Most tokens drawn (at least `min`).")

    @model_validator(mode="after")
    def _in_range(self) -> TokenDistributionModel:
        if self.max < self.min:
            raise field_error(f"({self.max}) is below min ({self.min})", "make max >= min", "max")
        if not self.min <= self.mean <= self.max:
            raise field_error(f"({self.mean}) is outside [min, max] = [{self.min}, {self.max}]", "fix it", "mean")
        return self


class LoadProfileModel(FileModel):
    """How requests are sent: GuideLLM's profile of the same name."""

    kind: LoadKind = Field(
        description="concurrent: `streams` closed-loop clients; throughput: as fast as possible (`streams` caps "
                    "concurrency); synchronous: one request at a time; constant/poisson: open loop at "
                    "`rate_per_s`; sweep: GuideLLM's sweep from synchronous to throughput, one point a step."
    )
    streams: Integer | None = Field(
        default=None, ge=1,
        description="Concurrent streams for concurrent (required); the concurrency cap for throughput, constant, "
                    "poisson and sweep; not for synchronous.",
    )
    rate_per_s: Number | None = Field(
        default=None, gt=0, description="Requests per second for constant and poisson (required there only)."
    )

    @model_validator(mode="after")
    def _kind_rules(self) -> LoadProfileModel:
        kind = self.kind
        if self.streams is not None and kind == "synchronous":
            raise field_error("does not apply to kind synchronous", "remove it", "streams")
        if self.rate_per_s is not None and kind not in ("constant", "poisson"):
            raise field_error(f"does not apply to kind {kind}", "remove it or use constant/poisson", "rate_per_s")
        if kind == "concurrent" and self.streams is None:
            raise field_error("is required for kind concurrent", "add e.g. 'streams: 8'", "streams")
        if kind in ("constant", "poisson") and self.rate_per_s is None:
            raise field_error(f"is required for kind {kind}", "add e.g. 'rate_per_s: 4'", "rate_per_s")
        return self


class SloTargetModel(FileModel):
    """One objective: the `percentile`-th percentile of the metric is at most `max_ms`."""

    percentile: Number = Field(gt=0, le=100, description="Percentile in (0, 100], e.g. 90.")
    max_ms: Number = Field(
        gt=0, description="Limit in milliseconds; also the per-request limit a request meets for goodput."
    )


class SloModel(FileModel):
    """Service level objectives; a trial violating one is infeasible (an Optuna constraint)."""

    ttft_ms: SloTargetModel = Field(description="Time to first token.")
    itl_ms: SloTargetModel = Field(
        description="Inter-token latency (per request: its mean gap between tokens after the first)."
    )
    tpot_ms: SloTargetModel | None = Field(
        default=None, description="Time per output token, first token included (optional)."
    )
    e2e_ms: SloTargetModel | None = Field(default=None, description="End-to-end request latency (optional).")


class WorkloadFile(FileModel):
    """A vtune workload: the load a trial drives through the server, and what counts as good."""

    schema_version: Literal[1] = Field(description="Layout version of this file; this vtune reads 1.")
    name: str = Field(description="Short name, e.g. chatbot.")
    description: str = Field(description="What the workload models, for people.")
    prompt_tokens: TokenDistributionModel = Field(
        description="Prompt length distribution (synthetic prompts made with the served model's tokenizer)."
    )
    output_tokens: TokenDistributionModel = Field(
        description="Tokens each request asks for (sent with ignore_eos)."
    )
    load: LoadProfileModel = Field(description="How requests are sent.")
    duration_s: Number = Field(gt=0, description="Measured seconds in all, split into `steps` equal steps.")
    warmup_s: Number | None = Field(
        default=None, ge=0, description="Unmeasured seconds of load before the first step (default 0)."
    )
    steps: Integer = Field(
        ge=1, description="Measured steps, reported one by one so an optimizer can stop a trial early."
    )
    max_model_len_hint: Integer = Field(
        ge=1, description="Longest request (prompt + output tokens); a server must accept this --max-model-len."
    )
    slo: SloModel = Field(description="Service level objectives.")
    dataset: str | None = Field(
        default=None,
        description="A .jsonl file of real prompts (relative to this file), one JSON object a line with `prompt` "
                    "and optional `output_tokens`; it replaces synthetic prompts.",
    )

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise field_error("must be a non-empty string", "name the workload")
        return value.strip()

    @model_validator(mode="after")
    def _whole(self) -> WorkloadFile:
        if self.load.kind == "sweep" and self.steps < 2:
            raise field_error("must be at least 2 for kind sweep (one sweep point a step)", "raise it", "steps")
        if self.duration_s / self.steps < 1.0:
            raise field_error(f"({self.duration_s}) must give each of the {self.steps} steps at least 1 s",
                              "raise it", "duration_s")
        longest = self.prompt_tokens.max + self.output_tokens.max
        if self.dataset is None and self.max_model_len_hint < longest:
            raise field_error(f"({self.max_model_len_hint}) is below prompt_tokens.max + output_tokens.max "
                              f"({longest})", f"set it to at least {longest}", "max_model_len_hint")
        return self


def workload_json_schema() -> dict[str, Any]:
    """The JSON schema of a workload YAML file (``vtune schema workload``)."""
    return json_schema(WorkloadFile, title="vtune workload file")


def _target(model: SloTargetModel | None) -> SloTarget | None:
    return None if model is None else SloTarget(percentile=model.percentile, max_ms=model.max_ms)


def _dist(model: TokenDistributionModel) -> TokenDistribution:
    return TokenDistribution(mean=model.mean, stdev=model.stdev, min=model.min, max=model.max)


def _parse(data: Any, source: str) -> Workload:
    try:
        wf = WorkloadFile.model_validate(data)
    except ValidationError as exc:
        raise error_line(exc, source, WorkloadFile, missing_fix=f"add it ({_SEE})", fix=_FIX) from None
    dataset: Path | None = None
    prompts: tuple[PromptRecord, ...] = ()
    if wf.dataset is not None:
        dataset = Path(wf.dataset).expanduser()
        if not dataset.is_absolute() and source not in ("<memory>",):
            dataset = Path(source).parent / dataset
        dataset = dataset.resolve()
        prompts = read_prompts_jsonl(dataset)
    ttft, itl = _target(wf.slo.ttft_ms), _target(wf.slo.itl_ms)
    assert ttft is not None and itl is not None  # required fields
    return Workload(
        name=wf.name,
        description=wf.description.strip(),
        prompt_tokens=_dist(wf.prompt_tokens),
        output_tokens=_dist(wf.output_tokens),
        load=LoadProfile(kind=wf.load.kind, streams=wf.load.streams, rate_per_s=wf.load.rate_per_s),
        duration_s=wf.duration_s,
        warmup_s=wf.warmup_s or 0.0,
        steps=wf.steps,
        max_model_len_hint=wf.max_model_len_hint,
        slo=Slo(ttft_ms=ttft, itl_ms=itl, tpot_ms=_target(wf.slo.tpot_ms), e2e_ms=_target(wf.slo.e2e_ms)),
        dataset=dataset,
        prompts=prompts,
        source=source,
        schema_version=wf.schema_version,
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
