"""The GuideLLM child of the capacity search: one constant-concurrency probe per command.

:func:`prepare_capacity_search` starts ``python -m vtune.loads._capacity_probe SPEC`` in
its own session; the child imports GuideLLM once, says ``ready`` and waits. The parent
(:mod:`vtune.loads._capacity`) then sends ``go {"served_model": ...}`` and, one at a
time, ``probe {"index": i, "streams": n, "seconds": s, "warmup_s": w}``: the child runs
one GuideLLM benchmark at ``n`` closed-loop streams for ``w + s`` seconds (the first
``w`` not measured), saves it as ``capacity-probe-II.json`` exactly as ``guidellm run
--output kind=json`` would, and answers ``probe {"index": i, "path": ...}``. ``stop``
(or a closed stdin) ends it.

Why not the child of :mod:`vtune.loads._guidellm`: that one runs a workload's fixed
steps at the workload's one load, while a search chooses each probe's concurrency
from the verdict on the previous probe, so the next command is not known in advance.
What the two children share is taken from there, not copied: the protocol prefix and
reader, the child environment (one GuideLLM worker on small machines, offline, this
vtune on ``PYTHONPATH``), the ``forkserver`` that makes a benchmark's worker processes
start in about a second, and the request data (synthetic prompts from the workload's
token distributions, or its JSONL prompts sized for the probe's streams).

Each probe uses its own data seed (:data:`_SEED_BASE` + :data:`_SEED_STRIDE` x index),
so no probe re-sends the prompts of an earlier one and a prefix cache cannot answer
them from it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from vtune._workload import LoadProfile, Workload
from vtune.engines._process import spawn_group
from vtune.loads._base import LoadFailure
from vtune.loads._guidellm import _Child, _child_env, _child_paths
from vtune.loads._guidellm_child import PROTO_PREFIX as _PROTO_PREFIX
from vtune.loads._guidellm_child import _data_args, _use_forkserver, spec_workload

__all__ = [
    "SCHEMA_VERSION",
    "PreparedCapacitySearch",
    "prepare_capacity_search",
]

#: Version of ``capacity_spec.json``.
SCHEMA_VERSION = 1
_REPORT_NAME = "capacity-probe-{:02d}.json"
_SPEC_NAME = "capacity_spec.json"
_LOG_NAME = "guidellm.log"
_SEED_BASE = 7919  # apart from the load's seeds (42 + step)
_SEED_STRIDE = 1009  # GuideLLM's synthetic data seeds each pass with seed + pass
_STARTUP_ALLOWANCE_S = 240.0  # child start, GuideLLM import, tokenizer, first workers
_PROBE_ALLOWANCE_S = 120.0  # per probe beyond its own seconds: drain, workers, save
_MAX_ERROR_RATE = 0.5  # GuideLLM ends a probe early once half its requests fail


def _probe_child_env() -> dict[str, str]:
    """The load child's environment (this checkout first on ``PYTHONPATH``)."""
    return _child_env()


def _child_command(spec_path: Path) -> list[str]:
    """The command line of the probe child (a seam for tests)."""
    return [sys.executable, "-m", "vtune.loads._capacity_probe", str(spec_path)]


@dataclass
class PreparedCapacitySearch:
    """A probe child started ahead of the search (see :func:`prepare_capacity_search`).

    Attributes:
        child: The child process and its protocol reader.
        workload: The workload whose prompts and objectives the probes use.
        out_dir: Folder of the probe reports, the spec and GuideLLM's log.
        log_path: GuideLLM's log.
        started: Whether ``go`` was sent (the child then has the served model's name).
    """

    child: _Child
    workload: Workload
    out_dir: Path
    log_path: Path
    started: bool = False
    _first: bool = field(default=True, repr=False)

    def go(self, served_model: str) -> None:
        """Tells the child the served model's name; probes may follow."""
        if not self.started:
            self.child.send("go " + json.dumps({"served_model": served_model}))
            self.started = True

    def probe(self, index: int, streams: int, seconds: float, warmup_s: float) -> Path:
        """Runs one probe and returns the path of its GuideLLM report.

        Raises:
            LoadFailure: GuideLLM failed or exited (``load_error``), or did not answer in
                time (``load_stalled``).
        """
        if not self.started:
            raise RuntimeError("PreparedCapacitySearch.probe() before go()")
        command = {"index": index, "streams": streams, "seconds": seconds, "warmup_s": warmup_s}
        self.child.send("probe " + json.dumps(command))
        deadline_s = warmup_s + seconds + _PROBE_ALLOWANCE_S + (_STARTUP_ALLOWANCE_S if self._first else 0.0)
        self._first = False
        while True:
            try:
                event = self.child.next_event(deadline_s)
            except TimeoutError:
                raise LoadFailure(
                    "load_stalled",
                    f"GuideLLM did not finish capacity probe {index} ({streams} streams) within "
                    f"{deadline_s:.0f} s; see {self.log_path}"
                ) from None
            if event is None:
                code = self.child.proc.wait(timeout=30)
                raise LoadFailure(
                    "load_error", f"GuideLLM exited (code {code}) during capacity probe {index}; see {self.log_path}"
                )
            kind = event.get("event")
            if kind == "error":
                raise LoadFailure("load_error",
                                  f"GuideLLM capacity probe failed: {event.get('message')}; see {self.log_path}")
            if kind == "probe" and int(event.get("index", -1)) == index:
                return Path(event["path"])

    def close(self, *, clean: bool = True) -> None:
        """Tells the child to stop and ends its process group if it does not."""
        if clean:
            self.child.send("stop")
        self.child.stop(grace_s=30.0 if clean else 0.0)

    def cancel(self) -> None:
        """Ends the child without any probe (the engine did not come up)."""
        self.child.stop(grace_s=5.0)


def prepare_capacity_search(
    target_url: str, tokenizer_dir: Path, workload: Workload, out_dir: Path
) -> PreparedCapacitySearch:
    """Starts the probe child now; it imports GuideLLM and waits for the first probe.

    Called while the engine is still starting, GuideLLM's start-up (seconds of
    imports) is not added to the trial's time.

    Args:
        target_url: Server base URL, e.g. ``http://127.0.0.1:8000`` (``/v1`` optional).
        tokenizer_dir: Local folder of the served model's tokenizer (no downloads).
        workload: Prompts, output lengths and objectives for the probes.
        out_dir: Folder for the probe reports (created; old probe reports removed).

    Raises:
        VtuneError: No tokenizer files in ``tokenizer_dir``.
    """
    tokenizer_dir, out_dir, url = _child_paths(target_url, tokenizer_dir, out_dir, "capacity-probe-*.json")
    spec = {
        "schema_version": SCHEMA_VERSION,
        "description": (
            "input of `python -m vtune.loads._capacity_probe`: target_url, served_model (sent with 'go'), "
            "tokenizer_dir, out_dir, workload (its prompts, output lengths, objectives), prompts (resolved "
            "JSONL prompts), seed (data seed of probe 0; probe i uses seed + 1009 i)"
        ),
        "target_url": url,
        "served_model": "",
        "tokenizer_dir": str(tokenizer_dir),
        "out_dir": str(out_dir),
        "workload": workload.to_dict(),
        "prompts": [{"prompt": p.prompt, "output_tokens": p.output_tokens} for p in workload.prompts],
        "seed": _SEED_BASE,
    }
    spec_path = out_dir / _SPEC_NAME
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    log_path = out_dir / _LOG_NAME
    with log_path.open("ab") as log:
        group = spawn_group(
            _child_command(spec_path),
            env=_probe_child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=out_dir,
        )
    child = _Child(group)
    child.start_reader()
    return PreparedCapacitySearch(child=child, workload=workload, out_dir=out_dir, log_path=log_path)


# -----------------------------------------------------------------------------------
# The child. GuideLLM is imported inside the functions, so importing this module stays
# cheap (GuideLLM's forked workers import it again as __mp_main__).


def probe_workload(wl: Workload, streams: int, seconds: float, warmup_s: float) -> Workload:
    """The workload of one probe: ``streams`` closed-loop streams for ``seconds``, one step."""
    return replace(
        wl, load=LoadProfile("concurrent", streams=streams), duration_s=float(seconds), warmup_s=warmup_s, steps=1
    )


def probe_scenario(
    spec: dict[str, Any], wl: Workload, index: int, streams: int, seconds: float, warmup_s: float
) -> Any:
    """GuideLLM's scenario for probe ``index`` (validated by GuideLLM's own schema)."""
    from guidellm.schemas.benchmark import BenchmarkScenario

    pwl = probe_workload(wl, streams, seconds, warmup_s)
    profile: dict[str, Any] = {"kind": "concurrent", "streams": [streams]}
    if warmup_s > 0:
        profile["warmup"] = {"value": warmup_s, "mode": "duration"}
    return BenchmarkScenario.create(
        scenario=None,
        spec={
            "backend": {
                "kind": "openai_http",
                "target": spec["target_url"],
                "model": spec["served_model"],
                "request_format": pwl.request_format,
            },
            "tokenizer": {"kind": "hf_auto", "model": spec["tokenizer_dir"]},
            "data": _data_args(pwl, index),
            "profile": profile,
            "constraints": [
                {"kind": "max_duration", "seconds": seconds + warmup_s},
                {"kind": "max_error_rate", "rate": _MAX_ERROR_RATE},
            ],
            "seed": {"kind": "static", "value": int(spec["seed"]) + _SEED_STRIDE * index},
            "outputs": [],
            # sample_size 0: every request's timings kept, prompts and outputs dropped.
            "metrics": {"kind": "generative", "sample_size": 0},
        },
        metadata={"labels": {"vtune_workload": wl.name, "vtune_capacity_probe": str(index), "streams": str(streams)}},
    )


async def _child_run(spec: dict[str, Any], proto: IO[str]) -> None:
    """Answers probe commands until ``stop`` or end of input."""
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

    wl = spec_workload(spec)
    out_dir = Path(spec["out_dir"])
    loop = asyncio.get_running_loop()

    def emit(**event: Any) -> None:
        proto.write(_PROTO_PREFIX + json.dumps(event) + "\n")
        proto.flush()

    backend = None
    done = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        word, _, rest = line.strip().partition(" ")
        if word != "probe":
            break
        cmd = json.loads(rest)
        index, streams = int(cmd["index"]), int(cmd["streams"])
        seconds, warmup_s = float(cmd["seconds"]), float(cmd["warmup_s"])
        prepare_start = time.perf_counter()
        scenario = probe_scenario(spec, wl, index, streams, seconds, warmup_s)
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
        print(f"vtune: capacity probe {index} ({streams} streams) prepared in "
              f"{time.perf_counter() - prepare_start:.3f} s", file=sys.stderr)
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
        try:
            async for bench in runner:
                save_start = time.perf_counter()
                report = GenerativeBenchmarksReport(config=scenario)
                report.benchmarks.append(bench)
                path = report.save_file(out_dir / _REPORT_NAME.format(index))
                emit(event="probe", index=index, streams=streams, path=str(path),
                     save_s=time.perf_counter() - save_start)
                done += 1
                break
        finally:
            await runner.aclose()
    emit(event="done", probes=done)


def _child_main(spec_path: str) -> int:
    """Entry of the child process; returns its exit code."""
    # Protocol lines go to the real stdout; GuideLLM's output goes to stderr (the log).
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _use_forkserver()
    try:
        spec = json.loads(Path(spec_path).read_text())
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
    from vtune.engines._watchdog import start_watchdog

    start_watchdog()  # before GuideLLM, its forkserver and its workers start
    sys.exit(_child_main(sys.argv[1]))
