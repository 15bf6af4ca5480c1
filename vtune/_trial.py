"""One trial: start a real engine for a configuration, load it, record everything.

:func:`run_trial` is what both ``vtune bench`` and every study trial call. It
writes, under the trial's folder::

    config.yaml       the configuration as a ``vllm serve --config`` file
    flags.txt         the same as one command line (environment settings first)
    server.log        the engine's stdout and stderr
    load/             GuideLLM's raw reports and the combined load result (fixed load)
    capacity/         the capacity search's probe reports and ``capacity_result.json``
    trial.json        the :class:`TrialRecord` (schema-versioned, fields described)

A trial measures either the workload's fixed load (in steps, each reported to
``on_step``) or, with ``capacity=`` :class:`CapacityOptions`, the capacity under the
SLOs: the capacity search (:mod:`vtune.loads._capacity`) runs on the ready engine in
place of the fixed load, its GuideLLM child started while the engine starts, the
engine checked after every probe (a dying engine fails the trial classified), every
probe kept in :attr:`TrialRecord.capacity`; :attr:`TrialRecord.result` is then the
probe at capacity (:meth:`~vtune.loads._capacity.CapacityResult.to_trial_result`).

Nothing is lost on failure: an engine that does not start, dies mid-load, or a
load that breaks, produces a record with its classified failure, and the
engine's process group is always torn down and verified. A load that stalls is
run once more on the same engine (see :mod:`vtune.loads._guidellm`); if it
stalls again the record's failure is ``load_stalled``, which, like
``load_error`` and ``interrupted``, does not blame the configuration
(:attr:`~vtune.engines.Failure.blames_config`).

The engine and the load tool are the abstract :class:`~vtune.engines.Engine` and
:class:`~vtune.loads.LoadGenerator`; by default a
:class:`~vtune.engines.VllmServer` and a :class:`~vtune.loads.GuideLLMLoad`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vtune._errors import VtuneError
from vtune._serve_config import ServeConfig
from vtune._workload import Workload
from vtune.engines._failures import Failure
from vtune.engines._startup_log import StartupNumbers
from vtune.loads._capacity import CapacityResult
from vtune.loads._results import TrialResult

if TYPE_CHECKING:
    from vtune.engines._base import Engine
    from vtune.loads._base import LoadGenerator

__all__ = ["SCHEMA_VERSION", "CapacityOptions", "TrialRecord", "capacity_summary", "record_summary", "run_trial",
           "write_config_files"]

SCHEMA_VERSION = 1

#: Called after each load step with (step index, cumulative result); False stops the load.
StepCallback = Callable[[int, TrialResult], bool]


@dataclass
class CapacityOptions:
    """How a trial searches its capacity (``run_trial(..., capacity=...)``).

    None means :func:`~vtune.loads._capacity.run_capacity_search`'s default.

    Attributes:
        start_streams: First probe (default the workload's streams, else 4).
        max_streams: Highest level probed (default 1024).
        probe_s: Measured seconds a probe (default the workload's step seconds; a trial's
            ``duration_s`` sets it when this is None).
        warmup_s: Unmeasured seconds before each probe (default the workload's).
        tolerance: Relative bracket width at which bisection stops.
        max_probes: Probe budget.
        attainment_target: None: each objective at its percentile; else the attainment form.
        on_probe: Called after each probe (the engine checked first); False ends the
            search (``bounded_by`` ``stopped``, the trial ``stopped_early``): a pruner.
    """

    start_streams: int | None = None
    max_streams: int | None = None
    probe_s: float | None = None
    warmup_s: float | None = None
    tolerance: float = 0.1
    max_probes: int = 15
    attainment_target: float | None = None
    on_probe: Callable[[Any], bool] | None = None


@dataclass
class TrialRecord:
    """Everything one trial measured.

    Attributes:
        config: The :class:`ServeConfig` as plain data.
        flags_line: The configuration as one shell line.
        status: ``ok`` (measured every step, or the capacity search ended by
            itself), ``stopped_early`` (the step or probe callback stopped it), or
            ``failed``.
        failure: The classified failure (``kind``, ``message``, ``log_line``,
            ``exit_code``) when ``status`` is ``failed``.
        startup: Numbers parsed from the engine's startup log (the calibration).
        result: What the load measured (None if the engine never served); for a
            capacity trial the probe at capacity (else at the fewest streams).
        step_results: Cumulative result after each step (fixed load only).
        capacity: The capacity search with every probe (capacity trials only).
        metrics: Summary of the engine's ``/metrics`` during the load (KV cache
            usage, running/waiting requests, preemptions).
        teardown: What stopping the engine did and verified.
        engine_start_s: Launch to ``/health`` answering 200.
        load_s: Wall seconds of the load or of the capacity search.
        load_retries: Steps run again on a fresh load tool after a stall.
        teardown_s: Seconds stopping the engine took.
        total_s: Wall seconds of the whole trial.
        run_dir: The trial's folder.
        log_path: The engine log.
        gpus: GPUs the trial was given (None on the CPU engine).
        cpu_cores: CPU cores the engine was pinned to, if any.
        schema_version: Layout version of ``trial.json``.
    """

    config: dict[str, Any]
    flags_line: str
    status: str
    failure: Failure | None = None
    startup: StartupNumbers | None = None
    result: TrialResult | None = None
    step_results: list[TrialResult] = field(default_factory=list)
    capacity: CapacityResult | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    teardown: dict[str, Any] = field(default_factory=dict)
    engine_start_s: float | None = None
    load_s: float | None = None
    load_retries: int = 0
    teardown_s: float | None = None
    total_s: float = 0.0
    run_dir: str = ""
    log_path: str = ""
    gpus: list[int] | None = None
    cpu_cores: list[int] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def overhead_s(self) -> float:
        """Seconds of the trial spent neither starting the engine nor under load."""
        return max(0.0, self.total_s - (self.engine_start_s or 0.0) - (self.load_s or 0.0))

    def to_dict(self) -> dict[str, Any]:
        """The content of ``trial.json``."""
        return {
            "schema_version": self.schema_version,
            "description": "vtune trial record; fields: vtune._trial.TrialRecord (times in seconds)",
            "config": self.config,
            "flags_line": self.flags_line,
            "status": self.status,
            "failure": self.failure.to_dict() if self.failure else None,
            "startup": self.startup.to_dict() if self.startup else None,
            "result": self.result.to_dict() if self.result else None,
            "step_results": [r.to_dict() for r in self.step_results],
            "capacity": self.capacity.to_dict() if self.capacity else None,
            "metrics": self.metrics,
            "teardown": self.teardown,
            "engine_start_s": self.engine_start_s,
            "load_s": self.load_s,
            "load_retries": self.load_retries,
            "teardown_s": self.teardown_s,
            "total_s": self.total_s,
            "overhead_s": self.overhead_s,
            "run_dir": self.run_dir,
            "log_path": self.log_path,
            "gpus": self.gpus,
            "cpu_cores": self.cpu_cores,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(
            config=data["config"],
            flags_line=data["flags_line"],
            status=data["status"],
            failure=Failure.from_dict(data["failure"]) if data.get("failure") else None,
            startup=StartupNumbers.from_dict(data["startup"]) if data.get("startup") else None,
            result=TrialResult.from_dict(data["result"]) if data.get("result") else None,
            step_results=[TrialResult.from_dict(r) for r in data.get("step_results", [])],
            capacity=CapacityResult.from_dict(data["capacity"]) if data.get("capacity") else None,
            metrics=data.get("metrics") or {},
            teardown=data.get("teardown") or {},
            engine_start_s=data.get("engine_start_s"),
            load_s=data.get("load_s"),
            load_retries=int(data.get("load_retries") or 0),
            teardown_s=data.get("teardown_s"),
            total_s=data.get("total_s", 0.0),
            run_dir=data.get("run_dir", ""),
            log_path=data.get("log_path", ""),
            gpus=data.get("gpus"),
            cpu_cores=data.get("cpu_cores"),
        )

    def save(self, path: Path) -> None:
        """Writes ``trial.json`` atomically."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=str))
        tmp.replace(path)


def write_config_files(cfg: ServeConfig, folder: Path) -> None:
    """Writes ``config.yaml`` (for ``vllm serve --config``) and ``flags.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(cfg.to_yaml())
    (folder / "flags.txt").write_text(cfg.to_flags_line() + "\n")


def _failure(kind: str, message: str, exit_code: int | None = None) -> Failure:
    return Failure(kind=kind, message=message, log_line=None, exit_code=exit_code)


def _load_failure(server: Any, exc: VtuneError) -> Failure:
    """The failure of a load (or capacity search) that raised: the engine's if it died, else the tool's."""
    from vtune.engines._base import EngineFailure
    from vtune.loads._base import LoadFailure

    try:
        server.check(probe_http=True)
    except EngineFailure as dead:
        return dead.failure
    kind = exc.kind if isinstance(exc, LoadFailure) else "load_error"
    return _failure(kind, str(exc))


def _search_capacity(server: Any, served_model: str, tokenizer_dir: Path, workload: Workload, out_dir: Path,
                     options: CapacityOptions, duration_s: float | None, prepared: Any) -> CapacityResult:
    """Runs the capacity search on the ready engine, checking it after every probe."""
    from vtune.loads import _capacity

    def check(probe: Any) -> bool:
        server.check()  # an engine that died mid-search fails the trial now, classified
        return True if options.on_probe is None else bool(options.on_probe(probe))

    probe_s = options.probe_s if options.probe_s is not None else duration_s
    return _capacity.run_capacity_search(
        server.url, served_model, tokenizer_dir, workload, out_dir, start_streams=options.start_streams,
        max_streams=options.max_streams, probe_s=probe_s, warmup_s=options.warmup_s, tolerance=options.tolerance,
        max_probes=options.max_probes, attainment_target=options.attainment_target, on_probe=check,
        prepared=prepared)


def run_trial(
    cfg: ServeConfig,
    workload: Workload,
    run_dir: Path,
    *,
    gpus: Sequence[int] | None = None,
    cpu_cores: Sequence[int] | None = None,
    duration_s: float | None = None,
    cache_dir: Path | None = None,
    tokenizer_dir: Path | None = None,
    startup_timeout_s: float = 900.0,
    on_step: StepCallback | None = None,
    on_phase: Callable[[str], None] | None = None,
    on_ready: Callable[[Any], None] | None = None,
    on_launch: Callable[[Any], None] | None = None,
    engine: Engine | None = None,
    load: LoadGenerator | None = None,
    stall_s: float | None = None,
    capacity: CapacityOptions | None = None,
) -> TrialRecord:
    """Starts the engine, runs the workload's load (or the capacity search), stops the engine, records it all.

    Args:
        cfg: The configuration to serve.
        workload: The load to drive (and the SLOs behind goodput).
        run_dir: The trial's folder (created).
        gpus: GPU indices for ``CUDA_VISIBLE_DEVICES`` (None on the CPU engine).
        cpu_cores: Cores to pin the engine to (the CPU engine's packing).
        duration_s: Measured seconds of load, overriding the workload's; with
            ``capacity``, the measured seconds of each probe (unless
            ``capacity.probe_s`` is given).
        cache_dir: vLLM/torch compile caches shared by a study's trials.
        tokenizer_dir: Where the served model's tokenizer is (default: the model
            folder).
        startup_timeout_s: Longest wait for the engine to become ready.
        on_step: Called after each load step with the cumulative result;
            returning False stops the load early (an optimizer's pruner).
        on_phase: Called with ``launching``, ``measuring`` and ``stopping`` as
            the trial moves on (progress display).
        on_ready: Called with the ready engine (tests use it to break the engine
            on purpose).
        on_launch: Called with the engine right after its process started (a
            study records ``engine.process_info()`` or its pid and pgid, to clean
            up after a crash).
        engine: The engine to run (default: a :class:`~vtune.engines.VllmServer`
            for ``cfg`` logging to ``run_dir/server.log``).
        load: The load tool (default: a :class:`~vtune.loads.GuideLLMLoad` writing
            to ``run_dir/load``).
        stall_s: The load's stall bound (default from the workload; see
            :func:`vtune.loads.stall_bound_s`).
        capacity: Measure the capacity under the SLOs instead of the fixed load
            (``load`` and ``on_step`` are then not used; ``capacity.on_probe`` is
            called after each probe). Probe reports go to ``run_dir/capacity``.

    Returns:
        The record, also saved as ``run_dir/trial.json``. Engine and load
        failures are recorded, not raised.

    Raises:
        VtuneError: Only for bad input (e.g. no tokenizer in the model folder)
            found before anything was launched; KeyboardInterrupt after the
            record of the interrupted trial was saved as failed.
    """
    from vtune.engines._base import EngineFailure
    from vtune.engines._metrics import MetricsSampler
    from vtune.engines._vllm import VllmServer
    from vtune.loads import _capacity_probe
    from vtune.loads._guidellm import GuideLLMLoad

    t0 = time.monotonic()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config_files(cfg, run_dir)
    log_path = run_dir / "server.log"
    record = TrialRecord(
        config=cfg.to_dict(), flags_line=cfg.to_flags_line(), status="failed",
        run_dir=str(run_dir), log_path=str(log_path),
        gpus=None if gpus is None else list(gpus), cpu_cores=None if cpu_cores is None else list(cpu_cores),
    )
    tok_dir = Path(tokenizer_dir or cfg.model)
    phase = on_phase or (lambda _p: None)
    server: Engine = engine if engine is not None else VllmServer(
        cfg, log_path=log_path, gpus=gpus, cpu_cores=cpu_cores, cache_dir=cache_dir,
        startup_timeout_s=startup_timeout_s)
    loader: LoadGenerator | None = None  # not made for a capacity trial (its search has its own child)
    if capacity is None:
        loader = load if load is not None else GuideLLMLoad(
            tok_dir, workload, run_dir / "load", duration_s=duration_s, stall_s=stall_s)
    sampler: MetricsSampler | None = None
    prepared = False  # the load tool was prepared and has not run (to cancel it)
    search: Any = None  # the capacity search's child, prepared and not yet run
    try:
        phase("launching")
        server.start()
        if on_launch is not None:
            on_launch(server)
        # The load tool starts (GuideLLM imports) while the engine starts: seconds saved per trial.
        if capacity is not None:
            search = _capacity_probe.prepare_capacity_search(server.url, tok_dir, workload, run_dir / "capacity")
        else:
            assert loader is not None
            loader.prepare(server.url)
            prepared = True
        try:
            record.startup = server.wait_ready()
        except EngineFailure as exc:
            record.failure = exc.failure
            return record
        record.engine_start_s = server.start_s
        if on_ready is not None:
            on_ready(server)
        phase("measuring")
        sampler = MetricsSampler(server.url, interval_s=2.0).start()
        load_t0 = time.monotonic()
        served = server.served_model_name or cfg.served_model_name or cfg.model

        def step_hook(index: int, step: Any) -> bool:
            record.step_results.append(step.cumulative)
            server.check()  # an engine that died mid-load fails the trial now, classified
            keep_going = True if on_step is None else bool(on_step(index, step.cumulative))
            return keep_going

        result: Any = None
        try:
            if capacity is not None:
                child, search = search, None  # the search ends its child, whatever happens
                record.capacity = _search_capacity(server, served, tok_dir, workload, run_dir / "capacity",
                                                   capacity, duration_s, child)
            else:
                assert loader is not None
                prepared = False  # run() ends the tool, whatever happens
                result = loader.run(served, on_step=step_hook, check_target=lambda: server.check(probe_http=True))
        except EngineFailure as exc:
            record.failure = exc.failure
            return record
        except VtuneError as exc:
            record.failure = _load_failure(server, exc)
            return record
        finally:
            record.load_s = time.monotonic() - load_t0
        if record.capacity is not None:
            record.result = record.capacity.to_trial_result()
            stopped = record.capacity.bounded_by == "stopped"
        else:
            record.load_retries = result.retries
            record.result = result.result
            stopped = result.stopped_early
        try:
            server.check(probe_http=True)
        except EngineFailure as exc:
            record.failure = exc.failure
            return record
        record.status = "stopped_early" if stopped else "ok"
        return record
    except KeyboardInterrupt:
        record.failure = _failure("interrupted", "the trial was interrupted (Ctrl-C or SIGTERM) and recorded as failed")
        raise
    finally:
        phase("stopping")
        if prepared and loader is not None:
            loader.cancel()
        if search is not None:
            search.cancel()
        if sampler is not None:
            sampler.stop()
            record.metrics = sampler.summary()
            record.result = record.result and record.result.with_server_metrics(record.metrics)
        teardown_t0 = time.monotonic()
        report = server.stop()
        record.teardown_s = time.monotonic() - teardown_t0
        record.teardown = report.to_dict()
        if record.engine_start_s is None and server.start_s is not None:
            record.engine_start_s = server.start_s
        record.total_s = time.monotonic() - t0
        record.save(run_dir / "trial.json")


def capacity_summary(cap: CapacityResult, *, num_gpus: int = 1,
                     target_rate_rps: float | None = None) -> dict[str, Any]:
    """The ``capacity`` object of ``bench --json`` and ``best --format json``.

    Keys: ``concurrency`` (capacity in streams), ``requests_per_second``,
    ``output_tokens_per_second``, ``goodput_requests_per_second``, ``slo_attainment``,
    ``ttft_ms``/``itl_ms``/``tpot_ms``/``e2e_latency_ms`` at capacity, ``bounded_by``,
    ``search_s``, ``num_gpus`` and the per-GPU rates, ``probes`` (every probe's dict);
    with ``target_rate_rps``: ``target_rate_rps``, ``replicas`` and ``gpus`` needed for
    it (None when the capacity is 0: no number of servers meets the SLOs).

    Args:
        cap: The capacity result.
        num_gpus: GPUs (CPU-engine ranks) one server uses: TP x PP x DP.
        target_rate_rps: Requests/s to serve within the SLOs, or None.
    """
    from vtune.loads._capacity import capacity_per_gpu, gpus_for_rate, replicas_for_rate

    per_gpu = capacity_per_gpu(cap, num_gpus)
    out: dict[str, Any] = {
        "concurrency": cap.capacity_streams,
        "requests_per_second": cap.requests_per_second,
        "output_tokens_per_second": cap.output_tokens_per_second,
        "goodput_requests_per_second": cap.goodput_requests_per_second,
        "slo_attainment": cap.slo_attainment,
        "ttft_ms": cap.ttft_ms.to_dict(), "itl_ms": cap.itl_ms.to_dict(), "tpot_ms": cap.tpot_ms.to_dict(),
        "e2e_latency_ms": cap.e2e_latency_ms.to_dict(),
        "bounded_by": cap.bounded_by,
        "search_s": cap.wall_s,
        "num_gpus": num_gpus,
        "requests_per_second_per_gpu": per_gpu.requests_per_second,
        "output_tokens_per_second_per_gpu": per_gpu.output_tokens_per_second,
        "probes": [p.to_dict() for p in cap.probes],
    }
    if target_rate_rps is not None:
        out["target_rate_rps"] = target_rate_rps
        try:
            out["replicas"] = replicas_for_rate(cap, target_rate_rps)
            out["gpus"] = gpus_for_rate(cap, target_rate_rps, num_gpus)
        except VtuneError:  # capacity 0: it meets the SLOs at no load
            out["replicas"] = out["gpus"] = None
    return out


def record_summary(rec: TrialRecord, *, target_rate_rps: float | None = None) -> dict[str, Any]:
    """The ``bench --json`` object for one record (``capacity``: :func:`capacity_summary`, or None)."""
    res = rec.result
    out: dict[str, Any] = {
        "status": rec.status,
        "flags": rec.flags_line,
        "output_tokens_per_second": res.output_tokens_per_second if res else None,
        "requests_per_second": res.requests_per_second if res else None,
        "goodput_requests_per_second": res.goodput_requests_per_second if res else None,
        "ttft_ms": res.ttft_ms.to_dict() if res else None,
        "itl_ms": res.itl_ms.to_dict() if res else None,
        "tpot_ms": res.tpot_ms.to_dict() if res else None,
        "e2e_latency_ms": res.e2e_latency_ms.to_dict() if res else None,
        "errors": res.errored_requests if res else None,
        "incomplete": res.incomplete_requests if res else None,
        "slo_attainment": res.slo_attainment if res else None,
        "slo_met": res.slo_met if res else None,
        "prefix_cache_hit_rate": res.prefix_cache_hit_rate if res else None,
        "calibration": rec.startup.to_dict() if rec.startup else None,
        "failure": rec.failure.to_dict() if rec.failure else None,
        "metrics": rec.metrics,
        "teardown": rec.teardown,
        "engine_start_s": rec.engine_start_s,
        "load_s": rec.load_s,
        "load_retries": rec.load_retries,
        "run_dir": rec.run_dir,
        "log_path": rec.log_path,
        "capacity": capacity_summary(rec.capacity, num_gpus=_record_gpus(rec), target_rate_rps=target_rate_rps)
        if rec.capacity is not None else None,
    }
    return out


def _record_gpus(rec: TrialRecord) -> int:
    """GPUs (CPU-engine ranks) the record's layout uses: TP x PP x DP."""
    c = rec.config
    return max(1, int(c.get("tensor_parallel_size") or 1) * int(c.get("pipeline_parallel_size") or 1)
               * int(c.get("data_parallel_size") or 1))

