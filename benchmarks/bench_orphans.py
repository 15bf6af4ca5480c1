"""How long a real vLLM CPU engine outlives a ``kill -9`` of the vtune process that started it.

A small driver process (standing in for vtune) starts a :class:`vtune.engines.VllmServer`
on the built-in tiny model; this script watches the engine's process group and the
leader's descendants (pid and creation time, every 50 ms), SIGKILLs the driver at a
point of the engine's start, and measures the seconds until the last process it saw
is gone. Points:

* ``spawn``: at once (the launcher is still starting Python);
* ``import``: 3 s in (the launcher imports vLLM; launcher and watchdog only);
* ``core``: 2 s after the EngineCore process appeared (it loads the model, starts
  its worker);
* ``ready``: once ``/health`` answered 200 (API server, EngineCore, worker, ZeroMQ
  and HTTP ports).

Before the watchdog (measured on 2 cores): engine processes outlived vtune by more
than 10 s in 2 of 3 runs, a starting engine kept its EngineCore and workers until
+17 to +31 s. Run it alone (it starts one engine at a time, under the e2e lock when
others share the machine)::

    flock /tmp/vtune-e2e.lock python benchmarks/bench_orphans.py --runs 5

It prints one line per run and, per point, the worst and the median seconds.
:func:`kill_run` is also what ``tests/engines/test_e2e_orphans.py`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
POINTS = ("spawn", "import", "core", "ready")

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from vtune._serve_config import ServeConfig
    from vtune.engines import EngineFailure, VllmServer

    args = json.loads(sys.argv[1])
    cfg = ServeConfig(model=args["model"], dtype="float32", enforce_eager=True, max_model_len=2048,
                      env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    work = Path(args["work"])
    server = VllmServer(cfg, log_path=work / "server.log", cache_dir=work / "cache", startup_timeout_s=600)
    server.start()
    print(json.dumps({"event": "started", "pgid": server.pgid, "leader": server.pid}), flush=True)
    try:
        server.wait_ready()
        print(json.dumps({"event": "ready", "start_s": server.start_s}), flush=True)
    except EngineFailure as exc:
        print(json.dumps({"event": "failed", "message": str(exc)}), flush=True)
    time.sleep(3600)
    """
)


@dataclass
class OrphanRun:
    """One ``kill -9`` of the driver and what followed.

    Attributes:
        point: Where in the engine's start the driver was killed.
        killed_after_s: Seconds from the engine's launch to the kill.
        processes_seen: Processes of the engine recorded before the kill.
        alive_at_kill: Their names (process titles) alive at the kill.
        listening_ports: TCP ports they listened on at the kill.
        gone_after_s: Seconds from the kill until the last of them was gone; None
            when some were still alive at the limit.
        survivors: Pids still alive at the limit (killed by this script then).
        ready: Whether the engine had become ready.
        log_tail: The engine log's last lines.
    """

    point: str
    killed_after_s: float
    processes_seen: int
    alive_at_kill: list[str] = field(default_factory=list)
    listening_ports: int = 0
    gone_after_s: float | None = None
    survivors: list[int] = field(default_factory=list)
    ready: bool = False
    log_tail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def _alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _snapshot(pgid: int, leader: int) -> dict[int, tuple[float, str]]:
    """``{pid: (creation time, title)}`` of the group's live processes and all their descendants."""
    rows: dict[int, tuple[int, float, str]] = {}
    for proc in psutil.process_iter(["ppid", "create_time", "name", "cmdline", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        title = info["name"] or ""
        if title == "python" or title.startswith("python3"):
            title = " ".join((info["cmdline"] or [])[1:4]) or title
        rows[proc.pid] = (info["ppid"] or 0, info["create_time"] or 0.0, title[:60])
    children: dict[int, list[int]] = {}
    for pid, row in rows.items():
        children.setdefault(row[0], []).append(pid)
    out: dict[int, tuple[float, str]] = {}
    for pid, row in rows.items():
        try:
            if os.getpgid(pid) == pgid:
                out[pid] = (row[1], row[2])
        except OSError:
            continue
    todo = [leader, *out]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out[child] = (rows[child][1], rows[child][2])
                todo.append(child)
    return out


def _listening_ports(pids: list[int]) -> int:
    ports = set()
    for pid in pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    ports.add(conn.laddr.port)
        except psutil.Error:
            continue
    return len(ports)


def kill_run(point: str, model: Path, work: Path, *, limit_s: float = 60.0, core_delay_s: float = 2.0,
             start_limit_s: float = 600.0) -> OrphanRun:
    """Starts an engine from a driver process, SIGKILLs the driver at ``point``, times the engine's end.

    Args:
        point: One of :data:`POINTS`.
        model: The model folder (the built-in tiny model).
        work: Folder for the engine's log and caches.
        limit_s: Longest wait for the engine's processes to go after the kill.
        core_delay_s: Seconds after the EngineCore appeared for the ``core`` point.
        start_limit_s: Longest wait for the point to be reached.

    Returns:
        What was seen.
    """
    if point not in POINTS:
        raise ValueError(f"point must be one of {', '.join(POINTS)}, got {point!r}")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps({"model": str(model), "work": str(work)})],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env=env, start_new_session=True,
    )
    events: queue.Queue[dict[str, Any]] = queue.Queue()

    def pump() -> None:
        assert driver.stdout is not None
        for line in driver.stdout:
            if line.startswith("{"):
                events.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    seen: dict[int, tuple[float, str]] = {}
    try:
        started = events.get(timeout=120)
        assert started["event"] == "started", started
        pgid, leader = int(started["pgid"]), int(started["leader"])
        t0 = time.monotonic()
        ready = False
        core_at: float | None = None
        while True:
            seen.update(_snapshot(pgid, leader))
            while not events.empty():
                event = events.get()
                ready = ready or event["event"] == "ready"
                if event["event"] == "failed":
                    raise RuntimeError(f"the engine failed to start: {event['message']}")
            now = time.monotonic() - t0
            if core_at is None and any("EngineCore" in t or "spawn_main" in t for _c, t in seen.values()):
                core_at = now
            if (
                point == "spawn"
                or (point == "import" and now >= 3.0)
                or (point == "core" and core_at is not None and now >= core_at + core_delay_s)
                or (point == "ready" and ready)
            ):
                break
            if now > start_limit_s:
                raise RuntimeError(f"the engine did not reach {point!r} within {start_limit_s:.0f} s")
            time.sleep(0.05)
        seen.update(_snapshot(pgid, leader))
        alive = [pid for pid, (created, _t) in seen.items() if _alive(pid, created)]
        run = OrphanRun(point=point, killed_after_s=round(time.monotonic() - t0, 2), processes_seen=len(seen),
                        alive_at_kill=sorted(seen[p][1] for p in alive), listening_ports=_listening_ports(alive),
                        ready=ready)
        os.kill(driver.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        driver.wait()
        while True:
            for pid, info in _snapshot(pgid, leader).items():
                seen.setdefault(pid, info)  # anything started after the kill counts too
            left = [pid for pid, (created, _t) in seen.items() if _alive(pid, created)]
            waited = time.monotonic() - t_kill
            if not left:
                run.gone_after_s = round(waited, 2)
                break
            if waited > limit_s:
                run.survivors = sorted(left)
                break
            time.sleep(0.02)
        try:
            run.log_tail = "\n".join((work / "server.log").read_text(errors="replace").splitlines()[-5:])
        except OSError:
            pass
        return run
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid, (created, _t) in seen.items():
            if _alive(pid, created):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints one line per run and a summary per point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per point (default 5)")
    parser.add_argument("--points", default=",".join(POINTS), help=f"comma-separated, of {', '.join(POINTS)}")
    parser.add_argument("--limit-s", type=float, default=60.0, help="longest wait for the engine to go")
    parser.add_argument("--work", default=None, help="folder for logs and caches (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print every run as JSON too")
    args = parser.parse_args(argv)
    import tempfile

    from vtune._tiny_model import build_tiny_model

    points = [p.strip() for p in args.points.split(",") if p.strip()]
    model = build_tiny_model()
    work = Path(args.work or tempfile.mkdtemp(prefix="vtune-orphans-"))
    results: dict[str, list[OrphanRun]] = {p: [] for p in points}
    print(f"kill -9 of the process that started a vLLM CPU engine ({model.name}); {args.runs} runs per point")
    for i in range(args.runs):
        for point in points:
            run = kill_run(point, model, work / f"{point}-{i}", limit_s=args.limit_s)
            results[point].append(run)
            gone = f"{run.gone_after_s:.2f} s" if run.gone_after_s is not None else f"NOT GONE after {args.limit_s} s"
            print(f"run {i + 1} {point:>6}: killed {run.killed_after_s:5.1f} s after launch, "
                  f"{len(run.alive_at_kill)} processes alive ({run.listening_ports} listening ports): "
                  f"last one gone {gone}   [{', '.join(run.alive_at_kill)}]", flush=True)
            if args.json:
                print(json.dumps(run.to_dict()))
    print("\npoint   runs  worst s  median s  survivors")
    for point, runs in results.items():
        times = [r.gone_after_s for r in runs if r.gone_after_s is not None]
        worst = "-" if len(times) < len(runs) or not times else f"{max(times):.2f}"
        median = f"{statistics.median(times):.2f}" if times else "-"
        print(f"{point:<7} {len(runs):>4}  {worst:>7}  {median:>8}  {sum(len(r.survivors) for r in runs):>9}")
    return 0 if all(r.gone_after_s is not None for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
