"""Drive a running OpenAI-compatible server with GuideLLM, shaped by a workload, in steps.

:func:`run_load` measures ``workload.steps`` equal steps, one GuideLLM benchmark
each, and calls ``on_step`` after every step with the step's own result and the
result of all steps so far; a False answer stops the load (an Optuna pruner hook).
Every raw GuideLLM JSON report is kept in ``out_dir`` (``guidellm-step-NN.json``),
next to ``load_result.json``, the spec the load ran from, and GuideLLM's log.

Why GuideLLM's library API in a child process, not its CLI, and not in this process:

* One ``guidellm run`` per step would pay Python start-up, GuideLLM's import (about
  6 s on 2 cores), tokenizer loading and backend set-up every step: about 14 s seen
  for an 8 s benchmark, more than the step itself.
* One ``guidellm run`` with several benchmarks cannot report between them nor be
  told to stop: its JSON is written only at the very end.
* Inside vtune's own process GuideLLM would bring its asyncio loop, its global
  settings (read from ``GUIDELLM__*`` at import), a process-wide singleton
  benchmarker and ``spawn``-ed worker processes (which re-import ``__main__``).

So ``python -m vtune.loads._guidellm SPEC`` runs here as a child in its own session (killed as
a process group if it hangs); it imports GuideLLM once, then per step builds the
data loader and profile and runs GuideLLM's ``Benchmarker`` for one benchmark,
saves the report exactly as ``guidellm run --output kind=json`` would, and waits for
``continue`` or ``stop`` on stdin. The only per-step cost added by vtune is writing
and parsing the report (measured, see :attr:`StepResult.vtune_overhead_s`: 10-30 ms
seen on 2 cores). Between two steps GuideLLM itself drains the last requests and
starts new worker processes (:attr:`StepResult.gap_s`: about 1.5-2 s seen on 2
cores, down from 3-4 s, because the child makes GuideLLM fork them from a preloaded
``forkserver`` instead of spawning fresh interpreters, and halves its fixed start
delay).

Prompts are synthetic text sized with the served model's own tokenizer, read from
its local folder (offline), or the workload's JSONL prompts. JSONL prompts are
cycled to fill a step; a repeated prompt gets a short unique tag in front so the
server's prefix cache cannot answer it from an earlier copy.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from vtune._errors import VtuneError
from vtune._workload import PromptRecord, Workload, read_prompts_jsonl
from vtune.loads._results import BenchmarkSamples, TrialResult, read_guidellm_report, summarize

__all__ = [
    "SCHEMA_VERSION",
    "LoadResult",
    "StepResult",
    "run_load",
]

#: Version of ``load_result.json`` and ``load_spec.json``.
SCHEMA_VERSION = 1
_PROTO_PREFIX = "VTUNE_LOAD "
_REPORT_NAME = "guidellm-step-{:02d}.json"
_RESULT_NAME = "load_result.json"
_SPEC_NAME = "load_spec.json"
_LOG_NAME = "guidellm.log"
_STARTUP_ALLOWANCE_S = 240.0  # child start, GuideLLM import, tokenizer, first workers
_STEP_ALLOWANCE_S = 120.0  # per step beyond its own seconds: drain, compile, save
_MAX_JSONL_ROWS_PER_STEP = 20000


@dataclass(frozen=True)
class StepResult:
    """One finished step.

    Attributes:
        index: Step number, from 0.
        report_path: The raw GuideLLM JSON report of this step.
        step: This step alone.
        cumulative: All steps so far, combined (what a pruner should look at).
        gap_s: Seconds between the previous step's measured end and this step's
            measured start (GuideLLM draining, restarting workers, vtune); None for
            the first step.
        vtune_overhead_s: Seconds vtune itself spent on this step: saving the report
            in the child plus reading and summarizing it here.
    """

    index: int
    report_path: Path
    step: TrialResult
    cumulative: TrialResult
    gap_s: float | None
    vtune_overhead_s: float

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready mapping."""
        return {
            "index": self.index,
            "report_path": str(self.report_path),
            "step": self.step.to_dict(),
            "cumulative": self.cumulative.to_dict(),
            "gap_s": self.gap_s,
            "vtune_overhead_s": self.vtune_overhead_s,
        }


@dataclass(frozen=True)
class LoadResult:
    """The outcome of :func:`run_load`.

    Attributes:
        result: All finished steps combined.
        steps: Every finished step, in order.
        stopped_early: True when ``on_step`` stopped the load before the last step.
        workload: The workload's name.
        out_dir: Folder holding the reports, the spec, the log and ``load_result.json``.
        startup_s: Seconds from the call to the first measured request (child start,
            GuideLLM import, warmup excluded).
        wall_s: Seconds the whole call took.
        schema_version: Layout version of ``load_result.json``.
    """

    result: TrialResult
    steps: list[StepResult]
    stopped_early: bool
    workload: str
    out_dir: Path
    startup_s: float
    wall_s: float
    schema_version: int = SCHEMA_VERSION

    @property
    def result_path(self) -> Path:
        """Where the result was saved."""
        return self.out_dir / _RESULT_NAME

    @property
    def report_paths(self) -> list[Path]:
        """The raw GuideLLM reports, one a step."""
        return [s.report_path for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready mapping (the content of ``load_result.json``)."""
        return {
            "schema_version": self.schema_version,
            "description": ("vtune load result; fields: vtune.loads._guidellm.LoadResult, "
                            "result: vtune.loads._results.TrialResult"),
            "workload": self.workload,
            "stopped_early": self.stopped_early,
            "startup_s": self.startup_s,
            "wall_s": self.wall_s,
            "result": self.result.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass
class _Child:
    """The GuideLLM child process and a thread feeding its protocol lines to a queue."""

    proc: subprocess.Popen[bytes]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start_reader(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for raw in stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith(_PROTO_PREFIX):
                    self.lines.put(line[len(_PROTO_PREFIX) :])
            self.lines.put(None)

        threading.Thread(target=pump, name="vtune-load-reader", daemon=True).start()

    def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        """Returns the next event, or None at EOF; raises TimeoutError on timeout."""
        try:
            line = self.lines.get(timeout=max(0.1, timeout_s))
        except queue.Empty:
            raise TimeoutError from None
        return None if line is None else json.loads(line)

    def send(self, word: str) -> None:
        stdin = self.proc.stdin
        try:
            assert stdin is not None
            stdin.write((word + "\n").encode())
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def stop(self, grace_s: float = 30.0) -> None:
        """Lets the child exit, then ends its process group if it does not."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(self.proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Ends the child's process group (it runs in its own session), TERM then KILL."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid == proc.pid:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; a straggler in the group still gets the signal.
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
    elif proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5.0)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if (os.cpu_count() or 1) <= 4:
        # One GuideLLM worker process: more would only fight the server for 2 cores.
        env.setdefault("GUIDELLM__MAX_WORKER_PROCESSES", "1")
    # The child must import this vtune even from a plain checkout.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _child_command(spec_path: Path) -> list[str]:
    """The command line of the GuideLLM child (a seam for tests)."""
    return [sys.executable, "-m", "vtune.loads._guidellm", str(spec_path)]


@dataclass
class PreparedLoad:
    """A GuideLLM child started ahead of the load (see :func:`prepare_load`).

    Attributes:
        child: The child process and its protocol reader.
        workload: The workload with the duration applied.
        out_dir: The load's folder.
        log_path: GuideLLM's log.
    """

    child: _Child
    workload: Workload
    out_dir: Path
    log_path: Path

    def cancel(self) -> None:
        """Ends the child without running the load (the engine did not come up)."""
        self.child.stop(grace_s=5.0)


def prepare_load(
    target_url: str, tokenizer_dir: Path, workload: Workload, out_dir: Path, *, duration_s: float | None = None
) -> PreparedLoad:
    """Starts the GuideLLM child now; it imports GuideLLM and waits for :func:`run_load`.

    Called while the engine is still starting, so GuideLLM's start-up (seconds of
    imports) is not added to the trial's time.

    Raises:
        VtuneError: No tokenizer files in ``tokenizer_dir``.
    """
    wl = workload.with_duration(duration_s) if duration_s is not None else workload
    tokenizer_dir = Path(tokenizer_dir).expanduser().resolve()
    if not (tokenizer_dir / "tokenizer_config.json").is_file() and not (tokenizer_dir / "tokenizer.json").is_file():
        raise VtuneError(f"no tokenizer files in {tokenizer_dir}; pass the served model's local folder")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("guidellm-step-*.json"):
        stale.unlink()
    url = target_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    spec = {
        "schema_version": SCHEMA_VERSION,
        "description": "input of `python -m vtune.loads._guidellm`: one GuideLLM load, in steps",
        "target_url": url,
        "served_model": "",  # sent with "go", once the server has said its name
        "tokenizer_dir": str(tokenizer_dir),
        "out_dir": str(out_dir),
        "workload": wl.to_dict(),
        # The prompts as the parent resolved them (output_tokens filled in).
        "prompts": [{"prompt": p.prompt, "output_tokens": p.output_tokens} for p in wl.prompts],
        "seed": 42,
        # The child imports GuideLLM, then waits for "go {served_model}" on stdin.
        "wait_for_go": True,
    }
    spec_path = out_dir / _SPEC_NAME
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")

    log_path = out_dir / _LOG_NAME
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            _child_command(spec_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=_child_env(),
            cwd=str(out_dir),
            start_new_session=True,
        )
    child = _Child(proc)
    child.start_reader()
    return PreparedLoad(child=child, workload=wl, out_dir=out_dir, log_path=log_path)


def run_load(
    target_url: str,
    served_model: str,
    tokenizer_dir: Path,
    workload: Workload,
    out_dir: Path,
    *,
    duration_s: float | None = None,
    on_step: Callable[[int, StepResult], bool] | None = None,
    prepared: PreparedLoad | None = None,
) -> LoadResult:
    """Runs the workload's load against a server, step by step.

    Args:
        target_url: Server base URL, e.g. ``http://127.0.0.1:8000`` (``/v1`` optional).
        served_model: Model name the server serves (``--served-model-name``).
        tokenizer_dir: Local folder of the served model's tokenizer (no downloads).
        workload: What to send and the objectives.
        out_dir: Folder for the reports and the result (created).
        duration_s: Measured seconds in all, overriding the workload's (same steps).
        on_step: Called as ``on_step(step_index, step_result)`` after each step;
            returning False stops the load early.
        prepared: A child started ahead by :func:`prepare_load` (its workload,
            duration and folder are used; GuideLLM's import then overlapped the
            engine's start-up).

    Returns:
        The combined result of the finished steps; also saved as
        ``out_dir/load_result.json``.

    Raises:
        VtuneError: If the tokenizer folder is missing, GuideLLM fails or hangs,
            or no step finished.
    """
    t0 = time.time()
    wl = workload.with_duration(duration_s) if duration_s is not None else workload
    if prepared is not None:
        wl, out_dir = prepared.workload, prepared.out_dir
    if prepared is None:
        prepared = prepare_load(target_url, tokenizer_dir, wl, out_dir)
    child, log_path = prepared.child, prepared.log_path
    child.send("go " + json.dumps({"served_model": served_model}))
    steps: list[StepResult] = []
    benches: list[BenchmarkSamples] = []
    stopped_early = False
    first_request_s: float | None = None
    clean = False  # True once the child said it is done (or was told to stop)
    try:
        deadline_s = _STARTUP_ALLOWANCE_S + wl.warmup_s + wl.step_duration_s * 2 + _STEP_ALLOWANCE_S
        while True:
            try:
                event = child.next_event(deadline_s)
            except TimeoutError:
                raise VtuneError(f"GuideLLM did not finish a step within {deadline_s:.0f} s; see {log_path}") from None
            if event is None:
                code = child.proc.wait(timeout=30)
                if len(steps) == wl.steps or stopped_early:
                    clean = True
                    break
                raise VtuneError(
                    f"GuideLLM load stopped after {len(steps)} of {wl.steps} steps (exit code {code}); see {log_path}"
                )
            kind = event.get("event")
            if kind == "ready":
                continue
            if kind == "error":
                raise VtuneError(f"GuideLLM load failed: {event.get('message')}; see {log_path}")
            if kind == "done":
                clean = True
                break
            if kind != "step":
                continue
            parse_start = time.perf_counter()
            index = int(event["index"])
            report_path = Path(event["path"])
            new = read_guidellm_report(report_path)
            gap_s = None
            if benches and new:
                gap_s = max(0.0, new[0].measure_start_s - benches[-1].measure_end_s)
            elif new and first_request_s is None:
                first_request_s = new[0].measure_start_s
            benches.extend(new)
            step_res = summarize(new, wl.slo)
            cumulative = summarize(benches, wl.slo)
            overhead_s = float(event.get("save_s", 0.0)) + (time.perf_counter() - parse_start)
            step = StepResult(
                index=index,
                report_path=report_path,
                step=step_res,
                cumulative=cumulative,
                gap_s=gap_s,
                vtune_overhead_s=overhead_s,
            )
            steps.append(step)
            keep_going = True if on_step is None else bool(on_step(index, step))
            if not keep_going and index + 1 < wl.steps:
                stopped_early = True
                clean = True
                child.send("stop")
                break
            child.send("continue")
            deadline_s = wl.step_duration_s * 2 + _STEP_ALLOWANCE_S
    finally:
        child.stop(grace_s=30.0 if clean else 0.0)
    if not steps:
        raise VtuneError(f"GuideLLM finished no step; see {log_path}")
    end = time.time()
    result = LoadResult(
        result=summarize(benches, wl.slo),
        steps=steps,
        stopped_early=stopped_early,
        workload=wl.name,
        out_dir=out_dir,
        startup_s=max(0.0, (first_request_s or t0) - t0 - wl.warmup_s),
        wall_s=end - t0,
    )
    tmp = out_dir / (_RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    os.replace(tmp, result.result_path)
    return result


# -----------------------------------------------------------------------------------
# The child: `python -m vtune.loads._guidellm SPEC`. Everything below runs only there; GuideLLM
# is imported inside the functions so that importing vtune.loads._guidellm stays cheap (GuideLLM's
# spawned workers re-import this module as __mp_main__).


def _profile_args(wl: Workload, step_index: int) -> dict[str, Any]:
    """GuideLLM profile arguments for one step (or for the whole sweep)."""
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
    else:  # sweep: one GuideLLM sweep, one point a step
        prof = {"kind": "sweep", "sweep_size": steps}
        if load.streams is not None:
            prof["max_concurrency"] = load.streams
    warm = wl.warmup_s if (step_index == 0 or kind == "sweep") else 0.0
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


def _data_args(wl: Workload, step_index: int) -> list[dict[str, Any]]:
    if wl.dataset is not None:
        return [{"kind": "in_memory_dict_list", "data": _jsonl_rows(wl, step_index)}]
    p, o = wl.prompt_tokens, wl.output_tokens
    return [
        {
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
    ]


def _scenario(spec: dict[str, Any], wl: Workload, step_index: int) -> Any:
    from guidellm.schemas.benchmark import BenchmarkScenario

    # max_duration applies to each GuideLLM benchmark: one step, or each sweep point.
    warm = wl.warmup_s if (step_index == 0 or wl.load.kind == "sweep") else 0.0
    seconds = wl.step_duration_s + warm
    return BenchmarkScenario.create(
        scenario=None,
        spec={
            "backend": {
                "kind": "openai_http",
                "target": spec["target_url"],
                "model": spec["served_model"],
                "request_format": "/v1/completions",
            },
            "tokenizer": {"kind": "hf_auto", "model": spec["tokenizer_dir"]},
            "data": _data_args(wl, step_index),
            "profile": _profile_args(wl, step_index),
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


async def _child_run(spec: dict[str, Any], proto: IO[str]) -> None:
    """Runs the steps, reporting each on ``proto`` and awaiting the answer on stdin."""
    from guidellm.benchmark.benchmarker import Benchmarker
    from guidellm.benchmark.entrypoints import (
        resolve_backend,
        resolve_constraints,
        resolve_profile,
        resolve_to_single_benchmark,
    )
    from guidellm.benchmark.progress import GenerativeLoggingBenchmarkerProgress
    from guidellm.benchmark.schemas import (
        GenerativeBenchmark,
        GenerativeBenchmarkAccumulator,
        GenerativeBenchmarksReport,
    )
    from guidellm.data import create_data_loader
    from guidellm.scheduler import NonDistributedEnvironment

    wl = Workload.from_dict(spec["workload"])
    if spec.get("prompts"):
        wl = replace(wl, prompts=tuple(PromptRecord(**p) for p in spec["prompts"]))
    out_dir = Path(spec["out_dir"])
    loop = asyncio.get_running_loop()

    def emit(**event: Any) -> None:
        proto.write(_PROTO_PREFIX + json.dumps(event) + "\n")
        proto.flush()

    backend = None
    step_index = 0
    rounds = 1 if wl.load.kind == "sweep" else wl.steps
    for round_index in range(rounds):
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
            progress=GenerativeLoggingBenchmarkerProgress(),
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
                path = report.save_file(out_dir / _REPORT_NAME.format(step_index))
                emit(event="step", index=step_index, path=str(path), save_s=time.perf_counter() - save_start)
                step_index += 1
                answer = await loop.run_in_executor(None, sys.stdin.readline)
                if answer.strip() != "continue" or step_index >= wl.steps:
                    stop = True
                    break
        finally:
            await runner.aclose()
        if stop:
            break
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

            proto.write(_PROTO_PREFIX + json.dumps({"event": "ready"}) + "\n")
            proto.flush()
            line = sys.stdin.readline()
            if not line.startswith("go"):
                return 0  # cancelled: the engine never came up
            spec.update(json.loads(line[2:].strip() or "{}"))
        asyncio.run(_child_run(spec, proto))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then re-raised
        proto.write(_PROTO_PREFIX + json.dumps({"event": "error", "message": f"{type(exc).__name__}: {exc}"}) + "\n")
        proto.flush()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
