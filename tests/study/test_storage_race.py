"""Processes creating the same new SQLite study at the same moment: none fails, the study is made once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import traceback
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.study.test_worker import make_settings
from vtune.study._storage import make_storage
from vtune.study._study import prepare_study

PROCESSES = 4
ROUNDS = 6

_CTX = mp.get_context("fork")  # the children start at once (no imports), so they really race


def _open(url: str, barrier: mp.synchronize.Barrier, errors: mp.Queue) -> None:
    try:
        barrier.wait(30)
        storage = make_storage(url)
        optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
    except BaseException:
        errors.put(traceback.format_exc().strip().splitlines()[-1])
        raise SystemExit(1) from None


def _prepare(root: str, barrier: mp.synchronize.Barrier, errors: mp.Queue) -> None:
    try:
        settings = make_settings(Path(root), name="race")
        barrier.wait(30)
        prepare_study(settings, n_trials=4, check_flags=False)
    except BaseException:
        errors.put(traceback.format_exc().strip().splitlines()[-1])
        raise SystemExit(1) from None


def _race(target, args_for) -> list[str]:
    barrier = _CTX.Barrier(PROCESSES)
    errors: mp.Queue = _CTX.Queue()
    procs = [_CTX.Process(target=target, args=(*args_for, barrier, errors)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    found = []
    while not errors.empty():
        found.append(errors.get())
    found += [f"exit code {p.exitcode}" for p in procs if p.exitcode != 0]
    return found


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_processes_opening_a_new_sqlite_study_at_once_all_succeed(tmp_path, round_):
    url = f"sqlite:///{tmp_path}/race.db"
    assert _race(_open, (url,)) == []
    db = sqlite3.connect(tmp_path / "race.db")
    try:
        assert db.execute("select count(*) from alembic_version").fetchone() == (1,)
        assert db.execute("select count(*) from studies").fetchone() == (1,)
    finally:
        db.close()


def test_processes_preparing_a_new_study_at_once_enqueue_the_baselines_once(tmp_path):
    assert _race(_prepare, (str(tmp_path),)) == []
    study = optuna.load_study(study_name="race", storage=make_storage(f"sqlite:///{tmp_path}/studies/race.db",
                                                                      heartbeat=False))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["baseline"] for t in waiting) == ["memory-model-guess", "size-preset",
                                                                 "vllm-defaults"]
    assert study.user_attrs["budget"]["n_trials"] == 4 and study.metric_names == ["goodput"]


def test_a_default_database_that_cannot_be_opened_is_named_as_such_not_as_a_storage_flag(tmp_path):
    from vtune._errors import VtuneError

    settings = make_settings(tmp_path, name="broken")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "broken.db").write_text("not a database")
    with pytest.raises(VtuneError) as info:
        prepare_study(settings, n_trials=2, check_flags=False)
    assert str(info.value).startswith(f"the study database {tmp_path / 'studies' / 'broken.db'} (the default for "
                                      "--study broken): cannot open it")
    assert "--storage" not in str(info.value)
