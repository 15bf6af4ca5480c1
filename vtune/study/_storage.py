"""Storage and heartbeats: Optuna storages with recorded reasons, stale trials, worker identity.

* SQLite at ``studies/<name>.db`` by default, any Optuna storage URL (PostgreSQL for several machines);
* every running trial sends heartbeats; a trial whose worker was silent for the grace period is
  failed by the next worker that looks, with ``failure = {"kind": "worker_lost", ...}``;
* a trial left RUNNING by a dead process of this host is failed on resume and its engine killed;
* safe to race: processes opening a new SQLite database at once are serialized by a lock file
  next to it (other databases are retried); claims and the trial budget hold across processes.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vtune._errors import VtuneError
from vtune.study._budget import BUDGET_STATES, BudgetSpent, counts_toward_budget

__all__ = [
    "GRACE_PERIOD_S", "HEARTBEAT_INTERVAL_S", "claim", "default_storage", "heartbeat_interval_s", "make_storage",
    "recover_stale_trials", "wait_for_running",
]


#: Seconds between a running trial's heartbeats in the storage.
HEARTBEAT_INTERVAL_S = 20

#: Seconds without a heartbeat after which a RUNNING trial's worker counts as lost.
GRACE_PERIOD_S = 60

def default_storage(name: str, studies_dir: Path) -> str:
    """``sqlite:///studies/<name>.db`` (absolute, so the dashboard finds it from anywhere)."""
    studies_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(studies_dir / f'{name}.db').resolve()}"

class _VtuneRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose heartbeat sweep also records why a trial failed, with a claim lock and a budget.

    Optuna marks a RUNNING trial whose worker stopped sending heartbeats FAIL
    (``optuna.storages.fail_stale_trials``, run by every worker before each new
    trial). Once FAIL a trial's user attributes can no longer be written, so the
    reason is written here, while the sweep finds the trial and it is still
    RUNNING: ``failure = {"kind": "worker_lost", ...}``.

    Claims are serialized (:meth:`claim`): a lock (threads) and, on SQLite, a lock
    file next to the database (processes of this machine), on PostgreSQL an advisory
    lock (processes anywhere). Under it:

    * claiming a waiting (enqueued) trial is atomic: Optuna relies on ``SELECT ... FOR
      UPDATE``, which SQLite ignores, so two threads or processes could both start the
      same enqueued trial;
    * the study's budget holds across processes: a trial is claimed or created only
      while the trials that spend ``--n-trials`` (:func:`~vtune.study._budget.counts_toward_budget`,
      running ones included) are fewer than the study's ``budget.n_trials`` user
      attribute; else :class:`~vtune.study._budget.BudgetSpent` is raised and nothing is
      started (Optuna's ``MaxTrialsCallback`` checks only after a trial, so N processes
      overshoot by up to N - 1).
    """

    #: Key of the PostgreSQL advisory lock serializing claims (any constant shared by vtune processes).
    _PG_LOCK_KEY = 0x7674756E65  # "vtune"

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._claim_lock = threading.RLock()
        self._claim_depth = threading.local()
        self._claim_file: str | None = None
        if url.startswith("sqlite:///") and url.removeprefix("sqlite:///") not in ("", ":memory:"):
            self._claim_file = url.removeprefix("sqlite:///") + ".claim-lock"

    def __getstate__(self) -> dict[Any, Any]:
        state = dict(super().__getstate__())
        state.pop("_claim_lock", None)
        state.pop("_claim_depth", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._claim_lock = threading.RLock()
        self._claim_depth = threading.local()

    @contextmanager
    def claim(self) -> Iterator[None]:
        """Holds the claim lock (re-entrant in a thread): threads here, and processes on this database."""
        with self._claim_lock:
            depth = getattr(self._claim_depth, "n", 0)
            self._claim_depth.n = depth + 1
            try:
                if depth:
                    yield
                elif self._claim_file is not None:
                    import fcntl

                    with open(self._claim_file, "a") as lock:
                        fcntl.flock(lock, fcntl.LOCK_EX)
                        try:
                            yield
                        finally:
                            fcntl.flock(lock, fcntl.LOCK_UN)
                elif self.engine.name == "postgresql":
                    import sqlalchemy

                    with self.engine.connect() as conn:
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._PG_LOCK_KEY})
                        conn.commit()
                        try:
                            yield
                        finally:
                            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._PG_LOCK_KEY})
                            conn.commit()
                else:
                    yield
            finally:
                self._claim_depth.n = depth

    def _check_budget(self, study_id: int) -> None:
        """Raises BudgetSpent when the study's ``budget.n_trials`` is handed out (call under :meth:`claim`)."""
        budget = self.get_study_user_attrs(study_id).get("budget") or {}
        n_trials = budget.get("n_trials")
        if n_trials is None:
            return
        spent = sum(1 for t in self.get_all_trials(study_id, deepcopy=False, states=BUDGET_STATES)
                    if counts_toward_budget(t))
        if spent >= int(n_trials):
            raise BudgetSpent(f"the study's budget of {n_trials} trials is handed out ({spent} spent or running)")

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        # Optuna's cache in front of every RDB storage calls this private method, not create_new_trial.
        if template_trial is not None:  # an enqueued (WAITING) or added trial: nothing starts
            return super()._create_new_trial(study_id, template_trial)
        with self.claim():
            self._check_budget(study_id)
            return super()._create_new_trial(study_id, template_trial)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        with self.claim():
            self._check_budget(self._study_of(trial_id))
            return super().set_trial_state_values(trial_id, state, values)

    def _study_of(self, trial_id: int) -> int:
        """The study id of a trial (Optuna's storage API has no public call for it; its schema's ``trials`` table)."""
        import sqlalchemy

        with self.engine.connect() as conn:
            row = conn.execute(sqlalchemy.text("SELECT study_id FROM trials WHERE trial_id = :t"),
                               {"t": trial_id}).fetchone()
        if row is None:
            raise KeyError(f"no trial with id {trial_id}")
        return int(row[0])

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Private Optuna API, checked against Optuna 5.0.0 (unchanged since 3.6): the public
        # heartbeat_stale_trial_callback is called only once the trial is FAIL, when its user
        # attributes can no longer be written, so the reason is written here, while it is RUNNING.
        stale = list(super()._get_stale_trial_ids(study_id))
        for trial_id in stale:
            _note_worker_lost(self, trial_id, self.grace_period or 2 * (self.heartbeat_interval or 0))
        return stale

def _note_worker_lost(storage: optuna.storages.BaseStorage, trial_id: int, grace_s: float) -> None:
    """Writes the ``worker_lost`` failure of a trial whose worker stopped sending heartbeats."""
    try:
        trial = storage.get_trial(trial_id)
    except KeyError:
        return
    if trial.state != TrialState.RUNNING:
        return
    worker = trial.user_attrs.get("worker") or {}
    who = f"pid {worker.get('pid')} on {worker.get('host')}" if worker else "an unknown worker"
    engine_stopped = False
    if worker.get("host") == socket.gethostname() and not _process_alive(worker):
        engine_stopped = _kill_stale_engine(trial.user_attrs.get("engine") or {})
    message = (f"worker lost: no heartbeat from the vtune worker ({who}) for more than {grace_s:g} s "
               f"(killed, crashed or cut off from the storage); marked failed by pid {os.getpid()} on "
               f"{socket.gethostname()}{' and its engine was stopped' if engine_stopped else ''}")
    failure = {"kind": "worker_lost", "message": message, "log_line": None, "exit_code": None,
               "worker": worker, "noticed_by": _worker_id()}
    try:
        storage.set_trial_user_attr(trial_id, "failure", failure)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # another worker failed it first (and wrote the reason)

def _with_driver(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 means psycopg 3 by it, vtune ships psycopg2."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url

def make_storage(url: str, *, heartbeat: bool = True, heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
                 grace_period_s: int = GRACE_PERIOD_S) -> optuna.storages.BaseStorage:
    """An Optuna storage with heartbeats: dead workers' trials become FAIL, with the reason.

    Args:
        url: ``sqlite:///path.db``, ``postgresql://...``, ``mysql://...`` or ``journal:/path.log``.
        heartbeat: Send heartbeats from running trials and fail stale ones (RDB storages only).
        heartbeat_interval_s: Seconds between heartbeats (whole seconds, as Optuna wants).
        grace_period_s: Seconds without heartbeat after which a trial's worker is lost;
            every worker of a study should use the same value.

    Raises:
        VtuneError: An unknown scheme or a database that cannot be opened.
    """
    if url.startswith(("sqlite", "postgresql", "mysql")):
        kw: dict[str, Any] = {}
        if heartbeat:
            if heartbeat_interval_s < 1 or grace_period_s <= heartbeat_interval_s:
                raise VtuneError(f"heartbeat every {heartbeat_interval_s} s with a grace period of {grace_period_s} s: "
                                 "use an interval >= 1 s and a longer grace period")
            kw.update(heartbeat_interval=int(heartbeat_interval_s), grace_period=int(grace_period_s))
        engine_kwargs = {"pool_pre_ping": True} if url.startswith("postgresql") else {}
        try:
            with warnings.catch_warnings(), _init_lock(url):
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _open_rdb(_with_driver(url), engine_kwargs=engine_kwargs, **kw)
        except Exception as exc:
            raise VtuneError(f"--storage {url}: cannot open it ({str(exc).splitlines()[0]})") from None
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    raise VtuneError(f"--storage {url}: use sqlite:///path.db, postgresql://user@host/db or journal:/path.log")

#: Attempts at opening an RDB storage whose tables another process is creating at the same moment.
OPEN_ATTEMPTS = 5


@contextmanager
def _init_lock(url: str) -> Iterator[None]:
    """Serializes creating a new SQLite database with other processes: a lock file next to it.

    Optuna's ``RDBStorage`` creates its tables and stamps the schema version check-then-create,
    unguarded, so two processes opening a new database at once fail one of them
    (``UNIQUE constraint failed: alembic_version.version_num``, ``table ... already exists``).
    Other databases (PostgreSQL, MySQL) get retries instead (:func:`_open_rdb`).
    """
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        yield
        return
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path + ".init-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        yield


def _open_rdb(url: str, **kwargs: Any) -> _VtuneRDBStorage:
    """Opens the storage, retrying while another process creates the same database's tables."""
    import sqlalchemy.exc

    for attempt in range(OPEN_ATTEMPTS):
        try:
            return _VtuneRDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
            if attempt == OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("not reached")


def claim(study: optuna.Study) -> Any:
    """The study storage's claim lock (:meth:`_VtuneRDBStorage.claim`), or a no-op for other storages.

    Check-then-write steps that two processes may run at once (enqueueing the baselines,
    enqueueing a baseline again) run under it.
    """
    storage = _study_storage(study)
    backend = getattr(storage, "_backend", storage)  # optuna wraps RDB storages in a cache
    return backend.claim() if isinstance(backend, _VtuneRDBStorage) else nullcontext()


# ------------------------------------------------------------------------ trials
def _worker_id() -> dict[str, Any]:
    """Who runs here: host, pid and the pid's start time (to tell a reused pid apart)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_started(os.getpid())}

def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None

def _process_alive(worker: dict[str, Any]) -> bool:
    """Whether the worker process recorded as ``{host, pid, started}`` still runs on this host."""
    import psutil

    pid = worker.get("pid")
    if not pid or not psutil.pid_exists(pid):
        return False
    started = worker.get("started")
    if started is not None:
        now = _process_started(pid)
        return now is not None and abs(now - float(started)) < 0.05
    return _is_vtune(pid)

def _is_vtune(pid: int) -> bool:
    import psutil

    try:
        return "vtune" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False

# ------------------------------------------------------------------- lifecycle
def _kill_stale_engine(info: dict[str, Any]) -> bool:
    """Kills a dead worker's engine group if it is still alive here (:func:`vtune.engines.kill_recorded_group`)."""
    from vtune.engines import kill_recorded_group

    return bool(info) and kill_recorded_group(info)


def recover_stale_trials(study: optuna.Study) -> list[int]:
    """Marks trials left RUNNING by a dead process on this host as FAIL, with the reason.

    A trial is stale when its worker process (recorded as host and pid) is gone;
    trials of other hosts are left to Optuna's heartbeat. The engine such a
    trial left behind is killed.
    """
    marked = []
    here = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != here:
            continue
        pid = worker.get("pid")
        if pid == os.getpid() or _process_alive(worker):
            continue
        killed = _kill_stale_engine(t.user_attrs.get("engine") or {})
        reason = (f"interrupted: the vtune process (pid {pid} on {here}) died while this trial ran; "
                  f"marked failed on resume{' and its engine was stopped' if killed else ''}")
        try:
            _set_trial_user_attr(study, t, "failure", {"kind": "interrupted", "message": reason,
                                                       "log_line": None, "exit_code": None})
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process resuming the same study marked it first
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        marked.append(t.number)
    return marked

def _study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage behind a study.

    Private Optuna API (``Study._storage``), checked against Optuna 5.0.0: Optuna has no
    public accessor. Used only where no public API exists: writing a user attribute of a
    trial known by its number, and asking a storage for its heartbeat interval.
    """
    return study._storage

def _set_trial_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Sets a user attribute of a running trial of another process (no public API: by trial id)."""
    _study_storage(study).set_trial_user_attr(trial._trial_id, key, value)

def heartbeat_interval_s(study: optuna.Study) -> float | None:
    """Seconds between the study's heartbeats (None: its storage sends none, e.g. a journal file)."""
    get = getattr(_study_storage(study), "get_heartbeat_interval", None)
    interval = get() if callable(get) else None
    return float(interval) if interval else None

def wait_for_running(study: optuna.Study, *, quiet: bool = False, poll_s: float | None = None) -> None:
    """Waits until no trial of the study runs anywhere; fails those of lost workers meanwhile.

    Without heartbeats (a journal storage) only trials left by dead processes of
    this host are failed, and trials of other hosts are not waited for.
    """
    interval = heartbeat_interval_s(study)
    if interval is None:
        recover_stale_trials(study)
        return
    poll = poll_s if poll_s is not None else min(5.0, interval)
    announced: set[int] = set()
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        numbers = {t.number for t in running}
        if not quiet and not numbers <= announced:
            print(f"waiting for trial(s) {sorted(numbers)} running on other workers", file=sys.stderr, flush=True)
            announced |= numbers
        time.sleep(poll)
