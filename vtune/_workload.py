"""Workloads: what load a tuning run drives through the server, and what counts as good.

(One module of about 1000 lines: the file model, its field descriptions, the dataclasses
the rest of vtune uses, the trace-file check and the CPU sizing rule are one schema;
most of the lines are the field-by-field documentation of that schema.)

A workload is a YAML file (``schema_version: 2``; a version-1 file, which has none of
the fields marked *v2*, reads as before) with these fields:

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
``shared_prefix`` (optional, v2)
    ``{tokens, count}``: every synthetic conversation starts with one of ``count``
    distinct prefixes of ``tokens`` tokens (a system prompt per tenant, a document
    that many questions are asked about), picked at random; GuideLLM's
    ``prefix_buckets``. On chat requests the prefix is the system message.
``turns`` (optional, v2, default 1)
    Turns of each synthetic conversation: turn *k* resends the whole history (every
    earlier prompt and answer) before its new prompt, so the prompt grows turn by turn;
    GuideLLM's multi-turn synthetic data. More than one turn is sent to
    ``/v1/chat/completions``.
``images`` (optional, v2)
    ``{count, width, height}``: synthetic images (GuideLLM's ``synthetic_image``)
    attached to the first turn of every request, for vision-language models; sent to
    ``/v1/chat/completions``. A model without a vision tower is sent the text alone.
``trace`` (optional, v2)
    ``{file, format, time_scale, block_tokens}``: a request trace replayed with its own
    timing (load kind ``replay``); ``format`` ``mooncake`` (default: one JSON object a
    line with ``timestamp``, ``input_length``, ``output_length`` and ``hash_ids``, the
    ids of ``block_tokens``-token blocks, equal ids meaning equal tokens, i.e. a shared
    prefix) or ``trace_synthetic`` (the same without ``hash_ids``). ``time_scale``
    turns timestamps into seconds and speeds or slows the replay: 1 for timestamps in
    seconds, 0.001 for Mooncake's own traces (milliseconds), 0.5 for twice as fast.
    The prompt and output lengths come from the trace.

Sizing on the CPU engine (:meth:`Workload.for_device`, applied by :func:`load_workload`
when no NVIDIA GPU is found): a file holds the sizes meant for a GPU, and on the CPU
engine vtune scales them down by one rule, so that every workload runs there (on the
tiny model's 4096 positions) without a second file:

* output tokens: the distribution is scaled (mean, stdev, min and max by one factor)
  so that its max is at most 1024 and ``turns x (max + 16)`` at most 2048;
* prompt tokens and the shared prefix: scaled by one factor so that the longest
  conversation, ``prefix + turns x (prompt max + output max + 16)``, fits in 4096;
* ``max_model_len_hint``: at most 4096 and at least that longest conversation;
* ``streams`` at most 8 for ``concurrent`` (a concurrency cap of another kind at most
  32), ``rate_per_s`` at most 4, ``duration_s`` at most 60 (steps kept, each at least
  1 s), ``warmup_s`` at most 5; images at most 224 pixels a side (aspect kept);
* turns, prefix count, image count, the trace and the objectives are kept.

A workload already within these bounds (the CPU-sized built-ins) is unchanged.

The file is validated by the pydantic model :class:`WorkloadFile` (unknown fields are
errors; ``vtune schema workload`` prints its JSON schema); an error is one line naming
the file and the field. The rest of vtune uses the frozen dataclasses built from it
(:class:`Workload`, :class:`LoadProfile`, :class:`Slo`, ...).

:func:`load_workload` also takes a ``.jsonl`` file directly: its prompts run under the
``chatbot`` workload's load, timing and objectives.
"""

from __future__ import annotations

import functools
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
    "TRACE_FORMATS",
    "ImageSpec",
    "LoadProfile",
    "PromptRecord",
    "SharedPrefix",
    "Slo",
    "SloTarget",
    "TokenDistribution",
    "TraceSpec",
    "Workload",
    "WorkloadFile",
    "builtin_workload_dirs",
    "list_workloads",
    "load_workload",
    "read_prompts_jsonl",
    "read_trace",
    "workload_json_schema",
]

#: Version of the workload file layout this module writes (it reads 1 and 2).
SCHEMA_VERSION = 2
#: A load kind: a GuideLLM profile of the same name (``replay``: a trace's own timing).
LoadKind = Literal["concurrent", "sweep", "constant", "poisson", "throughput", "synchronous", "replay"]
#: Load kinds a workload may name (GuideLLM profiles of the same names).
LOAD_KINDS: tuple[str, ...] = typing.get_args(LoadKind)
#: Built-in workload used for a bare ``.jsonl`` dataset and as the default.
DEFAULT_WORKLOAD = "chatbot"
#: Trace formats a workload's ``trace.format`` may name (GuideLLM's trace readers).
TRACE_FORMATS: tuple[str, ...] = ("mooncake", "trace_synthetic")
#: Tokens a chat template may add per turn, counted in the longest conversation.
CHAT_TEMPLATE_TOKENS_PER_TURN = 16

# The CPU engine's sizing rule (see the module docstring).
CPU_MAX_REQUEST_TOKENS = 4096
CPU_MAX_OUTPUT_TOKENS = 1024
CPU_MAX_OUTPUT_CONVERSATION_TOKENS = 2048
CPU_MAX_STREAMS = 8
CPU_MAX_CONCURRENCY_CAP = 32
CPU_MAX_RATE_PER_S = 4.0
CPU_MAX_DURATION_S = 60.0
CPU_MAX_WARMUP_S = 5.0
CPU_MAX_IMAGE_PIXELS_SIDE = 224

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
class SharedPrefix:
    """Prefixes shared by requests: each conversation starts with one of ``count``.

    Attributes:
        tokens: Tokens of each prefix.
        count: Distinct prefixes (e.g. one system prompt per tenant).
    """

    tokens: int
    count: int = 1

    def to_dict(self) -> dict[str, int]:
        """Returns the prefix as the YAML mapping."""
        return {"tokens": self.tokens, "count": self.count}


@dataclass(frozen=True)
class ImageSpec:
    """Synthetic images sent with each request (vision-language models).

    Attributes:
        count: Images per request.
        width: Width in pixels.
        height: Height in pixels.
    """

    count: int
    width: int
    height: int

    def to_dict(self) -> dict[str, int]:
        """Returns the images as the YAML mapping."""
        return {"count": self.count, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class TraceSpec:
    """A request trace replayed with its own timing.

    Attributes:
        path: The trace file (absolute).
        format: One of :data:`TRACE_FORMATS`.
        time_scale: Factor from the trace's timestamps to seconds of replay.
        block_tokens: Tokens per hash id (``mooncake``).
        requests: Rows of the trace.
        span_s: Seconds from the first to the last request, after ``time_scale``.
        longest_tokens: The longest request, input + output tokens.
        shares_prefix: Whether two requests start with the same block (hash id).
    """

    path: Path
    format: str = "mooncake"
    time_scale: float = 1.0
    block_tokens: int = 512
    requests: int = field(default=0, compare=False)
    span_s: float = field(default=0.0, compare=False)
    longest_tokens: int = field(default=0, compare=False)
    shares_prefix: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Returns the trace as the YAML mapping."""
        return {"file": str(self.path), "format": self.format, "time_scale": self.time_scale,
                "block_tokens": self.block_tokens}


def _scaled_dist(d: TokenDistribution, factor: float) -> TokenDistribution:
    """``d`` with every count multiplied by ``factor`` (at most 1), kept valid."""
    if factor >= 1.0:
        return d
    lo = max(1, math.floor(d.min * factor))
    hi = max(lo, math.floor(d.max * factor))
    mean = min(hi, max(lo, round(d.mean * factor)))
    return TokenDistribution(mean=mean, stdev=round(d.stdev * factor), min=lo, max=hi)


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
        shared_prefix: Prefixes shared by synthetic conversations, or None.
        turns: Turns of each synthetic conversation (history resent every turn).
        images: Synthetic images per request, or None.
        trace: A trace replayed with its own timing, or None.
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
    shared_prefix: SharedPrefix | None = None
    turns: int = 1
    images: ImageSpec | None = None
    trace: TraceSpec | None = None

    @property
    def step_duration_s(self) -> float:
        """Measured seconds of one step."""
        return self.duration_s / self.steps

    @property
    def shares_prefix(self) -> bool:
        """Whether requests share prefixes (a shared prefix, turns, or a trace's shared blocks).

        A conversation of several turns resends its history, which the prefix cache
        can serve, so it counts.
        """
        return self.shared_prefix is not None or self.turns > 1 or (
            self.trace is not None and self.trace.shares_prefix)

    @property
    def chat(self) -> bool:
        """Whether requests go to ``/v1/chat/completions`` (several turns or images)."""
        return self.turns > 1 or self.images is not None

    @property
    def request_format(self) -> str:
        """GuideLLM's ``request_format``: ``/v1/chat/completions`` or ``/v1/completions``."""
        return "/v1/chat/completions" if self.chat else "/v1/completions"

    @property
    def longest_request_tokens(self) -> int:
        """Tokens of the longest request: the last turn of the longest conversation, history included.

        ``prefix + turns x (prompt max + output max)``, plus
        :data:`CHAT_TEMPLATE_TOKENS_PER_TURN` a turn for chat requests; a trace's
        longest row. Image tokens are not counted (they depend on the model).
        """
        if self.trace is not None:
            return self.trace.longest_tokens
        prefix = self.shared_prefix.tokens if self.shared_prefix is not None else 0
        per_turn = self.prompt_tokens.max + self.output_tokens.max
        per_turn += CHAT_TEMPLATE_TOKENS_PER_TURN if self.chat else 0
        return prefix + self.turns * per_turn

    def for_device(self, device: str) -> Workload:
        """Returns the workload sized for ``device`` (``gpu``: unchanged; ``cpu``: the CPU rule).

        The rule (module docstring) scales output tokens, then prompt tokens and the
        shared prefix, caps streams, rate, duration, warmup and image size; a
        workload within its bounds comes back unchanged.
        """
        if device != "cpu":
            return self
        out = self.output_tokens
        prompt = self.prompt_tokens
        prefix = self.shared_prefix
        tmpl = CHAT_TEMPLATE_TOKENS_PER_TURN if self.chat else 0
        if self.trace is None:
            f_out = min(1.0, CPU_MAX_OUTPUT_TOKENS / out.max,
                        (CPU_MAX_OUTPUT_CONVERSATION_TOKENS / self.turns - tmpl) / out.max)
            out = _scaled_dist(out, f_out)
            budget = CPU_MAX_REQUEST_TOKENS - self.turns * (out.max + tmpl)
            fixed_in = (prefix.tokens if prefix else 0) + self.turns * prompt.max
            f_in = min(1.0, budget / fixed_in)
            prompt = _scaled_dist(prompt, f_in)
            if prefix is not None and f_in < 1.0:
                prefix = replace(prefix, tokens=max(1, math.floor(prefix.tokens * f_in)))
        scaled = replace(self, output_tokens=out, prompt_tokens=prompt, shared_prefix=prefix)
        hint = max(scaled.longest_request_tokens if self.trace is None else 0,
                   min(self.max_model_len_hint, CPU_MAX_REQUEST_TOKENS))
        load = self.load
        cap = CPU_MAX_STREAMS if load.kind == "concurrent" else CPU_MAX_CONCURRENCY_CAP
        if load.streams is not None and load.streams > cap:
            load = replace(load, streams=cap)
        if load.rate_per_s is not None and load.rate_per_s > CPU_MAX_RATE_PER_S:
            load = replace(load, rate_per_s=CPU_MAX_RATE_PER_S)
        images = self.images
        if images is not None and max(images.width, images.height) > CPU_MAX_IMAGE_PIXELS_SIDE:
            f_img = CPU_MAX_IMAGE_PIXELS_SIDE / max(images.width, images.height)
            images = replace(images, width=max(16, round(images.width * f_img)),
                             height=max(16, round(images.height * f_img)))
        duration_s = max(float(self.steps), min(self.duration_s, CPU_MAX_DURATION_S))
        result = replace(scaled, max_model_len_hint=hint, load=load, images=images, duration_s=duration_s,
                         warmup_s=min(self.warmup_s, CPU_MAX_WARMUP_S))
        return self if result == self else result

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
        if self.shared_prefix is not None:
            out["shared_prefix"] = self.shared_prefix.to_dict()
        if self.turns != 1:
            out["turns"] = self.turns
        if self.images is not None:
            out["images"] = self.images.to_dict()
        if self.trace is not None:
            out["trace"] = self.trace.to_dict()
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
                    "`rate_per_s`; sweep: GuideLLM's sweep from synchronous to throughput, one point a step; "
                    "replay: the `trace`'s own timing (v2, needs `trace`)."
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
        if self.streams is not None and kind in ("synchronous", "replay"):
            raise field_error(f"does not apply to kind {kind}", "remove it", "streams")
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


class SharedPrefixModel(FileModel):
    """Prefixes shared by requests (GuideLLM's prefix buckets): one of `count` starts each conversation."""

    tokens: Integer = Field(ge=1, description="Tokens of each prefix (e.g. a system prompt or a document).")
    count: Integer = Field(
        default=1, ge=1, le=10000,
        description="Distinct prefixes, each request picking one at random (e.g. one system prompt per tenant).",
    )


class ImagesModel(FileModel):
    """Synthetic images attached to every request (vision-language models; chat requests)."""

    count: Integer = Field(default=1, ge=1, le=16, description="Images per request.")
    width: Integer = Field(ge=16, le=8192, description="Image width in pixels.")
    height: Integer = Field(ge=16, le=8192, description="Image height in pixels.")


class TraceModel(FileModel):
    """A request trace replayed with its own timing (load kind replay)."""

    file: str = Field(description="The trace file (JSON lines; relative to this file).")
    format: Literal["mooncake", "trace_synthetic"] = Field(
        default="mooncake",
        description="mooncake: each line has timestamp, input_length, output_length and hash_ids (ids of "
                    "block_tokens-token blocks; equal ids are equal tokens); trace_synthetic: no hash_ids.",
    )
    time_scale: Number = Field(
        default=1.0, gt=0,
        description="Factor from the trace's timestamps to seconds: 1 for seconds, 0.001 for Mooncake's own "
                    "traces (milliseconds); 0.5 replays a seconds trace twice as fast.",
    )
    block_tokens: Integer = Field(default=512, ge=1, description="Tokens per hash id (mooncake; 512 in Mooncake's).")


class WorkloadFile(FileModel):
    """A vtune workload: the load a trial drives through the server, and what counts as good."""

    schema_version: Literal[1, 2] = Field(
        description="Layout version of this file; this vtune reads 1 and 2 (2 adds shared_prefix, turns, "
                    "images, trace and load kind replay)."
    )
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
    shared_prefix: SharedPrefixModel | None = Field(
        default=None, description="Prefixes shared by the synthetic conversations (v2)."
    )
    turns: Integer | None = Field(
        default=None, ge=1, le=32,
        description="Turns of each synthetic conversation, the history resent every turn (v2, default 1; more "
                    "than 1 goes to /v1/chat/completions).",
    )
    images: ImagesModel | None = Field(
        default=None, description="Synthetic images per request for vision-language models (v2)."
    )
    trace: TraceModel | None = Field(
        default=None, description="A trace replayed with its own timing (v2; needs load kind replay)."
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
        v2 = [name for name in ("shared_prefix", "turns", "images", "trace") if getattr(self, name) is not None]
        if self.load.kind == "replay":
            v2.append("load")
        if self.schema_version < 2 and v2:
            raise field_error("is new in schema_version 2", "set 'schema_version: 2' at the top", v2[0])
        if (self.trace is None) != (self.load.kind != "replay"):
            if self.trace is None:
                raise field_error("replay needs a trace", "add 'trace: {file: my-trace.jsonl}'", "load.kind")
            raise field_error("is replayed with its own timing", "set 'load: {kind: replay}'", "trace")
        if self.trace is not None:
            for other in ("dataset", "shared_prefix", "turns", "images"):
                if getattr(self, other) is not None:
                    raise field_error("does not apply to a trace (the trace gives the requests)", "remove it",
                                      other)
        if self.dataset is not None:
            for other in ("shared_prefix", "turns"):
                if getattr(self, other) is not None:
                    raise field_error("applies to synthetic prompts only, not to a dataset", "remove it", other)
        if self.dataset is None and self.trace is None:
            turns = self.turns or 1
            chat = turns > 1 or self.images is not None
            prefix = self.shared_prefix.tokens if self.shared_prefix is not None else 0
            per_turn = self.prompt_tokens.max + self.output_tokens.max
            per_turn += CHAT_TEMPLATE_TOKENS_PER_TURN if chat else 0
            longest = prefix + turns * per_turn
            if self.max_model_len_hint < longest:
                what = "prompt_tokens.max + output_tokens.max"
                if prefix or chat:
                    what = (("shared_prefix.tokens + " if prefix else "") + f"{turns} turns x ({what}"
                            + (f" + {CHAT_TEMPLATE_TOKENS_PER_TURN} chat template tokens)" if chat else ")"))
                raise field_error(f"({self.max_model_len_hint}) is below {what} ({longest})",
                                  f"set it to at least {longest}", "max_model_len_hint")
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
    trace: TraceSpec | None = None
    if wf.trace is not None:
        path = Path(wf.trace.file).expanduser()
        if not path.is_absolute() and source not in ("<memory>",):
            path = Path(source).parent / path
        trace = read_trace(path.resolve(), fmt=wf.trace.format, time_scale=float(wf.trace.time_scale),
                           block_tokens=wf.trace.block_tokens)
        if trace.longest_tokens > wf.max_model_len_hint:
            raise VtuneError(f"{source}: field 'max_model_len_hint' ({wf.max_model_len_hint}) is below the trace's "
                             f"longest request ({trace.longest_tokens} tokens); set it to at least "
                             f"{trace.longest_tokens}")
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
        shared_prefix=(None if wf.shared_prefix is None
                       else SharedPrefix(tokens=wf.shared_prefix.tokens, count=wf.shared_prefix.count)),
        turns=wf.turns or 1,
        images=(None if wf.images is None
                else ImageSpec(count=wf.images.count, width=wf.images.width, height=wf.images.height)),
        trace=trace,
    )


# ---------------------------------------------------------------------------------
# Traces


def _json_objects(path: str | Path, label: str, fix_path: str, not_object: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for each non-blank line of a JSONL file, read up front.

    Raises:
        VtuneError: One line naming the file (and line): unreadable, not JSON, not an object.
    """
    kind = label.strip() or "prompts"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise VtuneError(f"cannot read {kind} file {path}: {exc.strerror}; {fix_path}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label}{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VtuneError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise VtuneError(f"{where}: {not_object}")
        yield where, obj


def read_trace(path: Path, *, fmt: str = "mooncake", time_scale: float = 1.0, block_tokens: int = 512) -> TraceSpec:
    """Checks a trace file the way GuideLLM will read it, and sums it up.

    One JSON object a line (blank lines skipped) with ``timestamp`` (a number >= 0),
    ``input_length`` and ``output_length`` (integers >= 1) and, for ``mooncake``,
    ``hash_ids``: ``ceil(input_length / block_tokens)`` integers >= 0.

    Raises:
        VtuneError: Naming the file and line, if the file is missing or a line is bad.
    """
    stamps: list[float] = []
    longest = 0
    first_blocks: set[int] = set()
    shares = False
    objects = _json_objects(path, "trace ", "check trace.file",
                            "expected a JSON object with timestamp, input_length, output_length; fix it")
    for where, obj in objects:
        stamp = obj.get("timestamp")
        if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not stamp >= 0:
            raise VtuneError(f"{where}: field 'timestamp' must be a number >= 0, got {stamp!r}; fix the line")
        lengths = []
        for key in ("input_length", "output_length"):
            value = obj.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise VtuneError(f"{where}: field '{key}' must be a positive integer, got {value!r}; fix the line")
            lengths.append(value)
        if fmt == "mooncake":
            ids = obj.get("hash_ids")
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                    for i in ids):
                raise VtuneError(f"{where}: field 'hash_ids' must be a list of integers >= 0; fix the line "
                                 "(or use trace.format: trace_synthetic)")
            want = math.ceil(lengths[0] / block_tokens)
            if len(ids) != want:
                raise VtuneError(f"{where}: input_length {lengths[0]} is {want} blocks of {block_tokens} tokens "
                                 f"but hash_ids has {len(ids)}; fix the line or trace.block_tokens")
            if ids:
                shares = shares or ids[0] in first_blocks
                first_blocks.add(ids[0])
        stamps.append(float(stamp))
        longest = max(longest, lengths[0] + lengths[1])
    if not stamps:
        raise VtuneError(f"trace {path}: no requests found; add lines like "
                         '{"timestamp": 0, "input_length": 512, "output_length": 64, "hash_ids": [0]}')
    return TraceSpec(path=Path(path), format=fmt, time_scale=time_scale, block_tokens=block_tokens,
                     requests=len(stamps), span_s=(max(stamps) - min(stamps)) * time_scale, longest_tokens=longest,
                     shares_prefix=shares)


# ---------------------------------------------------------------------------------
# JSONL datasets


def read_prompts_jsonl(path: Path) -> tuple[PromptRecord, ...]:
    """Reads a JSONL file of prompts: one object a line, ``prompt`` and optional ``output_tokens``.

    Blank lines are skipped.

    Raises:
        VtuneError: Naming the file and line, if the file is missing or a line is bad.
    """
    records: list[PromptRecord] = []
    for where, obj in _json_objects(path, "", "check the path", "expected a JSON object with a 'prompt' field; fix "
                                    "the line"):
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
    base = _load_workload(DEFAULT_WORKLOAD)
    # A dataset sends one prompt a request: the default workload's turns and prefix do not apply.
    base = replace(base, turns=1, shared_prefix=None)
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


@functools.cache
def _found_device() -> str:
    """``gpu`` when an NVIDIA GPU is found here (as :func:`vtune._target.resolve_target` decides), else ``cpu``."""
    from vtune._hardware import discover_gpus

    return "gpu" if discover_gpus() else "cpu"


def load_workload(name_or_path: str, *, device: str | None = None) -> Workload:
    """Loads a workload: a built-in name, a YAML file, or a ``.jsonl`` file of prompts.

    Args:
        name_or_path: ``chatbot`` (see :func:`list_workloads`), a path to a YAML file
            of the workload schema, or a path to a ``.jsonl`` file of prompts.
        device: ``gpu`` (the file's sizes) or ``cpu`` (scaled by the CPU rule, see
            :meth:`Workload.for_device`); None: ``cpu`` when no NVIDIA GPU is found.

    Returns:
        The validated workload, sized for the device.

    Raises:
        VtuneError: If nothing matches, or the file is invalid (naming the field).
    """
    return _load_workload(name_or_path).for_device(device or _found_device())


def _load_workload(name_or_path: str) -> Workload:
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
