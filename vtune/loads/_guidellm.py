"""Drive a running OpenAI-compatible server with GuideLLM, shaped by a workload, in steps.

:class:`GuideLLMLoad` is the :class:`~vtune.loads._base.LoadGenerator` for GuideLLM;
:func:`prepare_load` and :func:`run_load` are the same as functions. The load
measures ``workload.steps`` equal steps, one GuideLLM benchmark each, and calls
``on_step`` after every step with the step's own result and the result of all
steps so far; a False answer stops the load (an Optuna pruner hook). Every raw
GuideLLM JSON report is kept in ``out_dir`` (``guidellm-step-NN.json``), next to
``load_result.json``, the spec the load ran from, and GuideLLM's log.

Why GuideLLM's library API in a child process, not its CLI, and not in this process:

* One ``guidellm run`` per step would pay Python start-up, GuideLLM's import (about
  6 s on 2 cores), tokenizer loading and backend set-up every step: about 14 s seen
  for an 8 s benchmark, more than the step itself.
* One ``guidellm run`` with several benchmarks cannot report between them nor be
  told to stop: its JSON is written only at the very end.
* Inside vtune's own process GuideLLM would bring its asyncio loop, its global
  settings (read from ``GUIDELLM__*`` at import), a process-wide singleton
  benchmarker and ``spawn``-ed worker processes (which re-import ``__main__``).

So ``python -m vtune.loads._guidellm_child SPEC`` (:mod:`vtune.loads._guidellm_child`
describes it and its line protocol) runs as a process group of its own
(:func:`vtune.engines._process.spawn_group`: its watchdog kills it within about a
second if vtune dies). The only per-step cost added by vtune is writing and parsing
the report (:attr:`StepResult.vtune_overhead_s`: 10-30 ms seen on 2 cores). Between
two steps GuideLLM itself drains the last requests and starts new worker processes
(:attr:`StepResult.gap_s`: about 1.5-2 s seen on 2 cores, down from 3-4 s, because
the child makes GuideLLM fork them from a preloaded ``forkserver``).

A stalled load is detected and the step run once more: the child reports progress
every second (requests sent, completed, in flight). The step counts as stalled
when, while GuideLLM runs it, no request has finished for
:func:`~vtune.loads._base.stall_bound_s` (``max(30 s, 3 x the workload's longest
expected request)``, a parameter), when the child goes silent that long, or when
the step outlasts ``2 x its seconds + 120 s`` (plus 240 s for the first step of a
child, which may still be importing GuideLLM). A stalled child is killed and a
fresh one runs the step again on the same engine (after ``check_target``, which
raises when the engine is the cause); a second stall raises :class:`LoadFailure`
``load_stalled``. A sweep is one GuideLLM run: it is retried only when it stalled
in its first step.

Prompts are synthetic text sized with the served model's own tokenizer, read from
its local folder (offline), or the workload's JSONL prompts. JSONL prompts are
cycled to fill a step; a repeated prompt gets a short unique tag in front so the
server's prefix cache cannot answer it from an earlier copy. Shared prefixes,
conversations of several turns, images and trace replays are GuideLLM's own data
generators (:func:`vtune.loads._guidellm_child._data_args`); conversations and images
go to ``/v1/chat/completions``, and images only to a model with a vision tower.

This is the parent's side only (the child is :mod:`vtune.loads._guidellm_child`);
it stays one module of about 570 lines because the protocol reader, the stall
watch, the retry and the step bookkeeping all act on the same child and state.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtune._errors import VtuneError
from vtune._workload import Workload
from vtune.engines._process import ProcessGroup, spawn_group
from vtune.loads._base import (
    LOAD_SCHEMA_VERSION,
    LoadFailure,
    LoadGenerator,
    LoadResult,
    StepHook,
    StepResult,
    stall_bound_s,
)
from vtune.loads._guidellm_child import PROTO_PREFIX
from vtune.loads._guidellm_report import read_guidellm_report
from vtune.loads._results import BenchmarkSamples, summarize

__all__ = [
    "SCHEMA_VERSION",
    "GuideLLMLoad",
    "LoadResult",
    "PreparedLoad",
    "StepResult",
    "prepare_load",
    "run_load",
]

#: Version of ``load_result.json`` and ``load_spec.json``.
SCHEMA_VERSION = LOAD_SCHEMA_VERSION
_RESULT_NAME = "load_result.json"
_SPEC_NAME = "load_spec.json"
_LOG_NAME = "guidellm.log"
_STARTUP_ALLOWANCE_S = 240.0  # child start, GuideLLM import, tokenizer, first workers
_STEP_ALLOWANCE_S = 120.0  # per step beyond its own seconds: drain, compile, save


@dataclass
class _Child:
    """The GuideLLM child process group and a thread feeding its protocol lines to a queue."""

    group: ProcessGroup
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.group.proc

    def start_reader(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for raw in stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith(PROTO_PREFIX):
                    self.lines.put(line[len(PROTO_PREFIX) :])
            self.lines.put(None)

        threading.Thread(target=pump, name="vtune-load-reader", daemon=True).start()

    def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        """Returns the next event, or None at EOF; raises TimeoutError on timeout."""
        try:
            line = self.lines.get(timeout=max(0.05, timeout_s))
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
        """Lets the child exit, then ends its process group (TERM, KILL after 10 s) if it does not."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        self.group.stop(grace_s=10.0)


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
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _child_command(spec_path: Path) -> list[str]:
    """The command line of the GuideLLM child (a seam for tests)."""
    return [sys.executable, "-m", "vtune.loads._guidellm_child", str(spec_path)]


def _spawn_child(spec: dict[str, Any], spec_path: Path, log_path: Path, *, append_log: bool) -> _Child:
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    with log_path.open("ab" if append_log else "wb") as log:
        if append_log:
            log.write(f"\nvtune: a fresh GuideLLM child from step {spec.get('first_step', 0)}\n".encode())
            log.flush()
        group = spawn_group(
            _child_command(spec_path),
            env=_child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=spec_path.parent,
        )
    child = _Child(group)
    child.start_reader()
    return child


@dataclass
class PreparedLoad:
    """A GuideLLM child started ahead of the load (see :func:`prepare_load`).

    Attributes:
        child: The child process and its protocol reader.
        workload: The workload with the duration applied.
        out_dir: The load's folder.
        log_path: GuideLLM's log.
        spec: The spec the child was started with (a retry starts from it).
    """

    child: _Child
    workload: Workload
    out_dir: Path
    log_path: Path
    spec: dict[str, Any] = field(default_factory=dict)

    def cancel(self) -> None:
        """Ends the child without running the load (the engine did not come up)."""
        self.child.stop(grace_s=5.0)


def _child_paths(target_url: str, tokenizer_dir: Path, out_dir: Path, stale: str) -> tuple[Path, Path, str]:
    """What a GuideLLM child is given: tokenizer folder, output folder and the server's base URL.

    Shared by this load's child and the capacity search's: the tokenizer folder resolved,
    the output folder created (files matching ``stale`` removed), ``/v1`` dropped from the URL.

    Raises:
        VtuneError: No tokenizer files in ``tokenizer_dir``.
    """
    tokenizer_dir = Path(tokenizer_dir).expanduser().resolve()
    if not (tokenizer_dir / "tokenizer_config.json").is_file() and not (tokenizer_dir / "tokenizer.json").is_file():
        raise VtuneError(f"no tokenizer files in {tokenizer_dir}; pass the served model's local folder")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(stale):
        old.unlink()
    url = target_url.rstrip("/")
    return tokenizer_dir, out_dir, url[: -len("/v1")] if url.endswith("/v1") else url


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
    tokenizer_dir, out_dir, url = _child_paths(target_url, tokenizer_dir, out_dir, "guidellm-step-*.json")
    spec = {
        "schema_version": SCHEMA_VERSION,
        "description": "input of `python -m vtune.loads._guidellm_child`: one GuideLLM load, in steps",
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
        "first_step": 0,
        "attempt": 0,
        "progress_interval_s": 1.0,
    }
    log_path = out_dir / _LOG_NAME
    child = _spawn_child(spec, out_dir / _SPEC_NAME, log_path, append_log=False)
    return PreparedLoad(child=child, workload=wl, out_dir=out_dir, log_path=log_path, spec=spec)


class _Stalled(Exception):
    """The running step made no progress within its bound."""


class _Watch:
    """The stall rules for one step of one child (see the module docstring)."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.cap_s = 0.0
        self.step_t0 = 0.0
        self.last_event_s = 0.0
        self.last_done_s = 0.0
        self.progress: dict[str, Any] | None = None
        self.heartbeats = False

    def begin(self, cap_s: float) -> None:
        """A step is expected now (after ``go`` or ``continue``), within ``cap_s`` at most."""
        now = time.monotonic()
        self.cap_s, self.step_t0, self.last_event_s, self.last_done_s = cap_s, now, now, now
        self.progress = None

    def saw(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        self.last_event_s = now
        if event.get("event") != "progress":
            return
        self.heartbeats = True
        done = int(event.get("completed", 0)) + int(event.get("errored", 0)) + int(event.get("cancelled", 0))
        old = self.progress
        old_done = -1 if old is None else int(old["_done"])
        if old is None or done != old_done or event.get("phase") != old.get("phase"):
            self.last_done_s = now
        self.progress = {**event, "_done": done}

    def seconds_left(self) -> float:
        now = time.monotonic()
        bounds = [self.step_t0 + self.cap_s]
        if self.heartbeats:
            bounds.append(self.last_event_s + self.stall_s)
        if self.progress is not None and self.progress.get("phase") == "running":
            bounds.append(self.last_done_s + self.stall_s)
        return max(0.0, min(bounds) - now)

    def check(self) -> None:
        now = time.monotonic()
        p = self.progress or {}
        if p.get("phase") == "running" and now - self.last_done_s >= self.stall_s:
            raise _Stalled(
                f"GuideLLM finished no request for {self.stall_s:.3g} s while running step {p.get('step')} "
                f"({p.get('in_flight', 0)} in flight, {p.get('created', 0)} sent, {p.get('completed', 0)} done)"
            )
        if self.heartbeats and now - self.last_event_s >= self.stall_s:
            raise _Stalled(f"GuideLLM went silent for {self.stall_s:.3g} s (phase {p.get('phase', '?')})")
        if now - self.step_t0 >= self.cap_s:
            raise _Stalled(f"GuideLLM did not finish a step within {self.cap_s:.0f} s")


@dataclass
class _State:
    """What one load accumulated over its children."""

    wl: Workload
    on_step: StepHook | None
    steps: list[StepResult] = field(default_factory=list)
    benches: list[BenchmarkSamples] = field(default_factory=list)
    stopped_early: bool = False
    first_request_s: float | None = None


def _step_cap_s(wl: Workload, *, child_start: bool) -> float:
    if child_start:
        return _STARTUP_ALLOWANCE_S + wl.warmup_s + wl.step_duration_s * 2 + _STEP_ALLOWANCE_S
    return wl.step_duration_s * 2 + _STEP_ALLOWANCE_S


def _drive(child: _Child, st: _State, watch: _Watch, served_model: str, log_path: Path) -> None:
    """Runs one child until it is done (returns), breaks (LoadFailure) or stalls (_Stalled)."""
    wl = st.wl
    child.send("go " + json.dumps({"served_model": served_model}))
    watch.begin(_step_cap_s(wl, child_start=True))
    while True:
        try:
            event = child.next_event(min(1.0, watch.seconds_left()))
        except TimeoutError:
            watch.check()
            continue
        if event is None:
            code = child.proc.wait(timeout=30)
            if len(st.steps) == wl.steps or st.stopped_early:
                return
            raise LoadFailure(
                "load_error",
                f"GuideLLM load stopped after {len(st.steps)} of {wl.steps} steps (exit code {code}); see {log_path}",
                steps_done=len(st.steps),
            )
        watch.saw(event)
        kind = event.get("event")
        if kind == "error":
            raise LoadFailure(
                "load_error", f"GuideLLM load failed: {event.get('message')}; see {log_path}", steps_done=len(st.steps)
            )
        if kind == "done":
            return
        if kind != "step":
            watch.check()
            continue
        if _take_step(st, event):
            child.send("stop")
            return
        child.send("continue")
        watch.begin(_step_cap_s(wl, child_start=False))


def _take_step(st: _State, event: dict[str, Any]) -> bool:
    """Reads a finished step and asks ``on_step``; returns True when the load must stop early."""
    parse_start = time.perf_counter()
    index = int(event["index"])
    report_path = Path(event["path"])
    new = read_guidellm_report(report_path)
    gap_s = None
    if st.benches and new:
        gap_s = max(0.0, new[0].measure_start_s - st.benches[-1].measure_end_s)
    elif new and st.first_request_s is None:
        st.first_request_s = new[0].measure_start_s
    st.benches.extend(new)
    overhead_s = float(event.get("save_s", 0.0)) + (time.perf_counter() - parse_start)
    step = StepResult(
        index=index,
        report_path=report_path,
        step=summarize(new, st.wl.slo),
        cumulative=summarize(st.benches, st.wl.slo),
        gap_s=gap_s,
        vtune_overhead_s=overhead_s,
    )
    st.steps.append(step)
    keep_going = True if st.on_step is None else bool(st.on_step(index, step))
    if not keep_going and index + 1 < st.wl.steps:
        st.stopped_early = True
        return True
    return False


def run_load(
    target_url: str,
    served_model: str,
    tokenizer_dir: Path,
    workload: Workload,
    out_dir: Path,
    *,
    duration_s: float | None = None,
    on_step: StepHook | None = None,
    prepared: PreparedLoad | None = None,
    stall_s: float | None = None,
    check_target: Callable[[], None] | None = None,
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
        stall_s: Seconds without a finished request (or any word from the child)
            after which a running step counts as stalled; default
            :func:`~vtune.loads._base.stall_bound_s` of the workload.
        check_target: Called before a stalled step runs again; may raise.

    Returns:
        The combined result of the finished steps; also saved as
        ``out_dir/load_result.json``.

    Raises:
        VtuneError: The tokenizer folder is missing.
        LoadFailure: GuideLLM failed (``load_error``), finished no step, or stalled
            twice on one step (``load_stalled``).
    """
    t0 = time.time()
    wl = workload.with_duration(duration_s) if duration_s is not None else workload
    if prepared is not None:
        wl, out_dir = prepared.workload, prepared.out_dir
    if prepared is None:
        prepared = prepare_load(target_url, tokenizer_dir, wl, out_dir)
    child, log_path = prepared.child, prepared.log_path
    st = _State(wl=wl, on_step=on_step)
    watch = _Watch(stall_bound_s(wl) if stall_s is None else float(stall_s))
    stalls: list[str] = []
    clean = False  # True once the child said it is done (or was told to stop)
    try:
        while True:
            try:
                _drive(child, st, watch, served_model, log_path)
                clean = True
                break
            except _Stalled as stall:
                child.stop(grace_s=0.0)
                what = f"{stall} (step {len(st.steps)} of {wl.steps}); see {log_path}"
                if stalls:
                    raise LoadFailure(
                        "load_stalled",
                        f"GuideLLM load stalled again after a fresh start: {what}; the first time: {stalls[0]}",
                        steps_done=len(st.steps),
                    ) from None
                if wl.load.kind == "sweep" and st.steps:
                    raise LoadFailure(
                        "load_stalled", f"GuideLLM sweep stalled: {what}; a sweep cannot resume mid-way",
                        steps_done=len(st.steps),
                    ) from None
                stalls.append(what)
                if check_target is not None:
                    check_target()
                spec = {**prepared.spec, "first_step": len(st.steps), "attempt": len(stalls)}
                child = _spawn_child(
                    spec, out_dir / f"load_spec-retry-{len(stalls)}.json", log_path, append_log=True
                )
                watch = _Watch(watch.stall_s)
    finally:
        child.stop(grace_s=30.0 if clean else 0.0)
    if not st.steps:
        raise LoadFailure("load_error", f"GuideLLM finished no step; see {log_path}")
    end = time.time()
    result = LoadResult(
        result=summarize(st.benches, wl.slo),
        steps=st.steps,
        stopped_early=st.stopped_early,
        workload=wl.name,
        out_dir=out_dir,
        startup_s=max(0.0, (st.first_request_s or t0) - t0 - wl.warmup_s),
        wall_s=end - t0,
        retries=len(stalls),
        stalls=stalls,
    )
    tmp = out_dir / (_RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    os.replace(tmp, result.result_path)
    return result


class GuideLLMLoad(LoadGenerator):
    """The :class:`~vtune.loads._base.LoadGenerator` for GuideLLM.

    Args:
        tokenizer_dir: Local folder of the served model's tokenizer.
        workload: What to send and the objectives.
        out_dir: Folder for the reports and the result (created).
        duration_s: Measured seconds in all, overriding the workload's.
        stall_s: The stall bound (default from the workload, see :func:`run_load`).
    """

    def __init__(
        self,
        tokenizer_dir: Path,
        workload: Workload,
        out_dir: Path,
        *,
        duration_s: float | None = None,
        stall_s: float | None = None,
    ) -> None:
        self.tokenizer_dir = Path(tokenizer_dir)
        self.workload = workload
        self.out_dir = Path(out_dir)
        self.duration_s = duration_s
        self.stall_s = stall_s
        self.target_url: str | None = None
        self._prepared: PreparedLoad | None = None

    def prepare(self, target_url: str) -> None:
        """Starts the GuideLLM child (see :func:`prepare_load`)."""
        if self._prepared is not None:
            raise RuntimeError("GuideLLMLoad.prepare() called twice; make a new GuideLLMLoad per load")
        self.target_url = target_url
        self._prepared = prepare_load(
            target_url, self.tokenizer_dir, self.workload, self.out_dir, duration_s=self.duration_s
        )

    def run(
        self,
        served_model: str,
        *,
        on_step: StepHook | None = None,
        check_target: Callable[[], None] | None = None,
    ) -> LoadResult:
        """Runs the load (see :func:`run_load`); :meth:`prepare` first."""
        prepared, self._prepared = self._prepared, None
        if prepared is None or self.target_url is None:
            raise RuntimeError("GuideLLMLoad.run() needs prepare(target_url) first")
        return run_load(
            self.target_url,
            served_model,
            self.tokenizer_dir,
            self.workload,
            self.out_dir,
            on_step=on_step,
            prepared=prepared,
            stall_s=self.stall_s,
            check_target=check_target,
        )

    def cancel(self) -> None:
        """Ends a prepared child that will not run."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.cancel()
