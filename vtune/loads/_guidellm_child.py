"""The GuideLLM child: ``python -m vtune.loads._guidellm_child SPEC`` runs one load in steps.

Started by :mod:`vtune.loads._guidellm` (which says why GuideLLM runs in a child
process). The child starts its group's watchdog (it dies within about a second of
vtune), imports GuideLLM ahead, says ``ready`` and waits for ``go {served_model}``
on stdin. Then, per step, it builds GuideLLM's data loader and profile, runs
GuideLLM's ``Benchmarker`` for one benchmark, saves the report exactly as
``guidellm run --output kind=json`` would, says ``step`` and waits for
``continue`` or ``stop``. Protocol lines go to stdout, prefixed ``VTUNE_LOAD ``
(everything else GuideLLM prints goes to stderr, the load's log):

* ``{"event": "ready"}``, ``{"event": "step", "index", "path", "save_s"}``,
  ``{"event": "done", "steps"}``, ``{"event": "error", "message"}``;
* ``{"event": "progress", "step", "phase", "created", "completed", "errored",
  "cancelled", "in_flight"}`` every ``progress_interval_s`` (1 s) after ``go`` and at
  every phase change (``preparing``, ``running``, ``compiling``, ``waiting``), so
  that the parent can tell a load that stopped making progress from a slow one.

The spec may start at ``first_step`` (a step run again after a stall); that step
warms up as step 0 does. GuideLLM is imported inside the functions so that the
module stays cheap to import (GuideLLM's worker processes re-import it as
``__mp_main__``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from vtune._workload import PromptRecord, Workload, read_prompts_jsonl

__all__: list[str] = []

PROTO_PREFIX = "VTUNE_LOAD "
REPORT_NAME = "guidellm-step-{:02d}.json"
_MAX_JSONL_ROWS_PER_STEP = 20000


def _profile_args(wl: Workload, step_index: int, first_step: int = 0) -> dict[str, Any]:
    """GuideLLM profile arguments for one step (or for the whole sweep).

    The first step a child runs (``first_step``: 0, or the step run again after a
    stall) warms up, and so does every point of a sweep.
    """
    load = wl.load
    steps = wl.steps
    kind = load.kind
    prof: dict[str, Any]
    if kind == "concurrent":
        prof = {"kind": "concurrent", "streams": [load.streams]}
    elif kind in ("constant", "poisson"):
        prof = {"kind": kind, "rate": [load.rate_per_s]}
        if load.streams is not None:
            prof["max_concurrency"] = load.streams
    elif kind == "throughput":
        prof = {"kind": "throughput"}
        if load.streams is not None:
            prof["max_concurrency"] = load.streams
    elif kind == "synchronous":
        prof = {"kind": "synchronous"}
    elif kind == "replay":  # the trace's own timing (its time_scale is applied by the data)
        prof = {"kind": "replay", "time_scale": 1.0, "schedule_turn": "timestamp"}
    else:  # sweep: one GuideLLM sweep, one point a step
        prof = {"kind": "sweep", "sweep_size": steps}
        if load.streams is not None:
            prof["max_concurrency"] = load.streams
    warm = wl.warmup_s if (step_index == first_step or kind == "sweep") else 0.0
    if warm > 0:
        prof["warmup"] = {"value": warm, "mode": "duration"}
    return prof


def _jsonl_rows(wl: Workload, step_index: int) -> list[dict[str, Any]]:
    """Rows of real prompts for one step, cycled, repeats tagged against prefix caching."""
    assert wl.dataset is not None
    records = wl.prompts or read_prompts_jsonl(wl.dataset)
    n = len(records)
    streams = wl.load.streams or 8
    rate = (wl.load.rate_per_s or 0.0) * 1.5
    per_s = rate if rate > 0 else 10.0 * streams
    want = max(n, math.ceil(per_s * (wl.step_duration_s + wl.warmup_s)))
    want = min(want, max(n, _MAX_JSONL_ROWS_PER_STEP))
    rows = []
    for j in range(want):
        g = step_index * want + j
        rec = records[g % n]
        prompt = rec.prompt if g < n else f"[{g // n}.{g % n}] {rec.prompt}"
        rows.append({"prompt": prompt, "output_tokens_count": rec.output_tokens or wl.output_tokens.mean})
    return rows


def model_has_vision(model_dir: str | Path) -> bool:
    """Whether the model folder's ``config.json`` describes a vision tower (``vision_config``).

    A folder without a readable ``config.json`` counts as text only.
    """
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("vision_config"), dict)


def workload_for_model(wl: Workload, model_dir: str | Path) -> Workload:
    """The workload as sent to this model: images only where the model has a vision tower."""
    if wl.images is not None and not model_has_vision(model_dir):
        print(f"vtune: {model_dir} has no vision tower (no vision_config in config.json): "
              f"workload '{wl.name}' is sent without its images", file=sys.stderr)
        return replace(wl, images=None)
    return wl


def _trace_args(wl: Workload) -> dict[str, Any]:
    """GuideLLM's trace reader for the workload's trace, repeated to fill a step."""
    trace = wl.trace
    assert trace is not None
    seconds = wl.step_duration_s + wl.warmup_s
    copies = max(1, min(100, math.ceil(seconds / max(trace.span_s, 1e-3)) + 1))
    args: dict[str, Any] = {
        "kind": trace.format,
        "source": {"kind": "json_file", "path": str(trace.path)},
        "time_scale": trace.time_scale,
        "copies": copies,
    }
    if trace.format == "mooncake":
        args["hash_id_block_size"] = trace.block_tokens
    return args


def _data_args(wl: Workload, step_index: int) -> list[dict[str, Any]]:
    """GuideLLM's data arguments for one step: synthetic text (prefixes, turns), images, a trace or JSONL rows."""
    if wl.trace is not None:
        return [_trace_args(wl)]
    data: list[dict[str, Any]]
    if wl.dataset is not None:
        data = [{"kind": "in_memory_dict_list", "data": _jsonl_rows(wl, step_index)}]
    else:
        p, o = wl.prompt_tokens, wl.output_tokens
        text: dict[str, Any] = {
            "kind": "synthetic_text",
            "prompt_tokens": p.mean,
            "prompt_tokens_stdev": p.stdev,
            "prompt_tokens_min": p.min,
            "prompt_tokens_max": p.max,
            "output_tokens": o.mean,
            "output_tokens_stdev": o.stdev,
            "output_tokens_min": o.min,
            "output_tokens_max": o.max,
        }
        if wl.shared_prefix is not None:
            text["prefix_buckets"] = [{"bucket_weight": 100, "prefix_count": wl.shared_prefix.count,
                                       "prefix_tokens": wl.shared_prefix.tokens}]
        if wl.turns > 1:
            text["turns"] = wl.turns
        data = [text]
    if wl.images is not None:
        data.append({
            "kind": "synthetic_image",
            "width": wl.images.width,
            "height": wl.images.height,
            "images_per_request": wl.images.count,
            "seed": step_index,
        })
    return data


def _scenario(spec: dict[str, Any], wl: Workload, step_index: int) -> Any:
    from guidellm.schemas.benchmark import BenchmarkScenario

    first_step = int(spec.get("first_step", 0))
    # max_duration applies to each GuideLLM benchmark: one step, or each sweep point.
    warm = wl.warmup_s if (step_index == first_step or wl.load.kind == "sweep") else 0.0
    seconds = wl.step_duration_s + warm
    return BenchmarkScenario.create(
        scenario=None,
        spec={
            "backend": {
                "kind": "openai_http",
                "target": spec["target_url"],
                "model": spec["served_model"],
                "request_format": wl.request_format,
            },
            "tokenizer": {"kind": "hf_auto", "model": spec["tokenizer_dir"]},
            "data": _data_args(wl, step_index),
            "profile": _profile_args(wl, step_index, first_step),
            "constraints": [
                {"kind": "max_duration", "seconds": seconds},
                {"kind": "max_error_rate", "rate": 0.5},
            ],
            "seed": {"kind": "static", "value": int(spec["seed"]) + step_index},
            "outputs": [],
            # sample_size 0: keep every request's timings, drop prompts and outputs.
            "metrics": {"kind": "generative", "sample_size": 0},
        },
        metadata={"labels": {"vtune_workload": wl.name, "vtune_step": str(step_index)}},
    )


@dataclass
class _Tracker:
    """What the child last knew of the running step (sent as ``progress`` events)."""

    step: int = 0
    phase: str = "preparing"
    created: int = 0
    completed: int = 0
    errored: int = 0
    cancelled: int = 0
    in_flight: int = 0

    def event(self) -> dict[str, Any]:
        return {
            "event": "progress",
            "step": self.step,
            "phase": self.phase,
            "created": self.created,
            "completed": self.completed,
            "errored": self.errored,
            "cancelled": self.cancelled,
            "in_flight": self.in_flight,
        }

    def enter(self, phase: str, step: int | None = None) -> None:
        if step is not None:
            self.step = step
        if phase == "running":
            self.created = self.completed = self.errored = self.cancelled = self.in_flight = 0
        self.phase = phase

    def update(self, state: Any) -> None:
        """Reads GuideLLM's ``SchedulerState`` counters."""
        self.created = int(getattr(state, "created_requests", 0) or 0)
        self.completed = int(getattr(state, "successful_requests", 0) or 0)
        self.errored = int(getattr(state, "errored_requests", 0) or 0)
        self.cancelled = int(getattr(state, "cancelled_requests", 0) or 0)
        self.in_flight = int(getattr(state, "processing_requests", 0) or 0) + int(
            getattr(state, "pending_requests", 0) or 0
        )


def _progress_class() -> Any:
    """GuideLLM's logging progress, also feeding a :class:`_Tracker` (GuideLLM imported here)."""
    from guidellm.benchmark.progress import GenerativeLoggingBenchmarkerProgress

    class Progress(GenerativeLoggingBenchmarkerProgress):  # type: ignore[misc]
        def __init__(self, tracker: _Tracker, emit: Any) -> None:
            super().__init__()
            self.tracker = tracker
            self.emit = emit

        async def on_benchmark_start(self, strategy: Any) -> None:
            await super().on_benchmark_start(strategy)
            self.tracker.enter("running")
            self.emit(**self.tracker.event())

        async def on_benchmark_update(self, accumulator: Any, scheduler_state: Any) -> None:
            await super().on_benchmark_update(accumulator, scheduler_state)
            self.tracker.update(scheduler_state)

        async def on_benchmark_compile(self) -> None:
            await super().on_benchmark_compile()
            self.tracker.enter("compiling")
            self.emit(**self.tracker.event())

    return Progress


async def _heartbeat(tracker: _Tracker, emit: Any, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        emit(**tracker.event())


def spec_workload(spec: dict[str, Any]) -> Workload:
    """The workload a child's spec carries: its prompts restored, its images dropped for a text-only model."""
    wl = Workload.from_dict(spec["workload"])
    if spec.get("prompts"):
        wl = replace(wl, prompts=tuple(PromptRecord(**p) for p in spec["prompts"]))
    return workload_for_model(wl, spec["tokenizer_dir"])


async def _child_run(spec: dict[str, Any], proto: IO[str]) -> None:
    """Runs the steps, reporting each on ``proto`` and awaiting the answer on stdin."""
    from guidellm.benchmark.benchmarker import Benchmarker
    from guidellm.benchmark.entrypoints import (
        resolve_backend,
        resolve_constraints,
        resolve_profile,
        resolve_to_single_benchmark,
    )
    from guidellm.benchmark.schemas import (
        GenerativeBenchmark,
        GenerativeBenchmarkAccumulator,
        GenerativeBenchmarksReport,
    )
    from guidellm.data import create_data_loader
    from guidellm.scheduler import NonDistributedEnvironment

    wl = spec_workload(spec)
    out_dir = Path(spec["out_dir"])
    first_step = int(spec.get("first_step", 0))
    loop = asyncio.get_running_loop()

    def emit(**event: Any) -> None:
        proto.write(PROTO_PREFIX + json.dumps(event) + "\n")
        proto.flush()

    tracker = _Tracker(step=first_step)
    progress_cls = _progress_class()
    beat = asyncio.create_task(_heartbeat(tracker, emit, float(spec.get("progress_interval_s", 1.0))))
    backend = None
    step_index = first_step
    rounds = 1 if wl.load.kind == "sweep" else wl.steps
    try:
        for round_index in range(first_step if wl.load.kind != "sweep" else 0, rounds):
            tracker.enter("preparing", step_index)
            emit(**tracker.event())
            prepare_start = time.perf_counter()
            scenario = _scenario(spec, wl, round_index)
            args: Any = resolve_to_single_benchmark(scenario.get_benchmarks())
            if backend is None:
                backend, _ = await resolve_backend(backend_args=args.backend)
            loader = await create_data_loader(
                loader_config=args.data_loader,
                data_config=args.data,
                tokenizer_config=args.tokenizer,
                column_mapper_config=args.data_column_mapper,
                preprocessors_config=args.data_preprocessors,
                finalizer_config=args.data_finalizer,
                random_seed=args.seed.value,
            )
            profile = await resolve_profile(
                profile=args.profile, constraints=resolve_constraints(args), random_seed=args.seed.value
            )
            print(f"vtune: step {step_index} prepared in {time.perf_counter() - prepare_start:.3f} s", file=sys.stderr)
            benchmarker: Any = Benchmarker()
            runner = benchmarker.run(
                accumulator_class=GenerativeBenchmarkAccumulator,
                benchmark_class=GenerativeBenchmark,
                requests=loader,
                backend=backend,
                profile=profile,
                environment=NonDistributedEnvironment(),
                progress=progress_cls(tracker, emit),
                sample_size=args.metrics.sample_size,
                warmup=args.profile.warmup,
                cooldown=args.profile.cooldown,
                prefer_response_metrics=args.metrics.prefer_response_metrics,
                confidence=args.metrics.confidence,
                warnings=args.metrics.warnings,
            )
            stop = False
            try:
                async for bench in runner:
                    save_start = time.perf_counter()
                    report = GenerativeBenchmarksReport(config=scenario)
                    report.benchmarks.append(bench)
                    path = report.save_file(out_dir / REPORT_NAME.format(step_index))
                    tracker.enter("waiting")
                    emit(event="step", index=step_index, path=str(path), save_s=time.perf_counter() - save_start)
                    step_index += 1
                    answer = await loop.run_in_executor(None, sys.stdin.readline)
                    if answer.strip() != "continue" or step_index >= wl.steps:
                        stop = True
                        break
                    tracker.enter("preparing", step_index)
                    emit(**tracker.event())
            finally:
                await runner.aclose()
            if stop:
                break
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
    emit(event="done", steps=step_index)


def _use_forkserver() -> None:
    """Makes GuideLLM fork its per-benchmark processes from a preloaded server.

    GuideLLM starts a manager and worker processes anew for every benchmark (every
    step). With its default ``spawn`` each one re-imports GuideLLM's scheduler and
    HTTP backend: seconds per step on 2 cores. A ``forkserver`` that imported them
    once forks them ready. It is started now so that its imports overlap the
    child's own import of GuideLLM.
    """
    if "GUIDELLM__MP_CONTEXT_TYPE" in os.environ:
        return  # the user chose
    import multiprocessing
    import multiprocessing.forkserver

    os.environ["GUIDELLM__MP_CONTEXT_TYPE"] = "forkserver"
    # GuideLLM waits this long after its workers are up before the first request
    # (1 s by default) to queue requests ahead; half a second suffices here.
    os.environ.setdefault("GUIDELLM__SCHEDULER_START_DELAY_NON_DISTRIBUTED", "0.5")
    multiprocessing.set_forkserver_preload(
        ["__main__", "guidellm.scheduler.worker", "guidellm.backends.openai.http", "guidellm.schemas"]
    )
    multiprocessing.forkserver.ensure_running()


def _child_main(spec_path: str) -> int:
    """Entry of the child process; returns its exit code."""
    # Protocol lines go to the real stdout; everything else (GuideLLM, its workers)
    # is sent to stderr, which the parent points at guidellm.log.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _use_forkserver()
    try:
        spec = json.loads(Path(spec_path).read_text())
        if spec.get("wait_for_go"):
            import guidellm.benchmark.benchmarker  # noqa: F401 - the slow imports, done ahead
            import guidellm.benchmark.entrypoints  # noqa: F401

            proto.write(PROTO_PREFIX + json.dumps({"event": "ready"}) + "\n")
            proto.flush()
            line = sys.stdin.readline()
            if not line.startswith("go"):
                return 0  # cancelled: the engine never came up
            spec.update(json.loads(line[2:].strip() or "{}"))
        asyncio.run(_child_run(spec, proto))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then re-raised
        proto.write(PROTO_PREFIX + json.dumps({"event": "error", "message": f"{type(exc).__name__}: {exc}"}) + "\n")
        proto.flush()
        raise
    return 0


if __name__ == "__main__":
    from vtune.engines._watchdog import start_watchdog

    start_watchdog()  # before GuideLLM, its forkserver and its workers start
    sys.exit(_child_main(sys.argv[1]))
