"""Packing trials on one node and joining a study as a worker, with a fake trial function.

The fake (:func:`fake_trial`) has :func:`vtune._trial.run_trial`'s signature: it
sleeps instead of starting an engine and logs what it was given (trial, pid, GPUs
or cores, start and end) to ``$VTUNE_TEST_LOG_DIR/<pid>.jsonl``. The PostgreSQL
tests (test_worker_postgres.py) use it in worker processes too.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from vtune._errors import VtuneError
from vtune._memory import resolve_gpu
from vtune._objectives import parse_objectives
from vtune._serve_config import ServeConfig
from vtune._space import default_space
from vtune._target import Target
from vtune._tiny_model import build_tiny_model
from vtune._trial import TrialRecord
from vtune._workload import load_workload
from vtune.loads._results import Percentiles, TrialResult
from vtune.study._packing import default_concurrency
from vtune.study._runner import elapsed_s
from vtune.study._settings import StudySettings
from vtune.study._storage import make_storage, wait_for_running
from vtune.study._study import prepare_study, run_study, run_worker

# ------------------------------------------------------------------ the fake
_BARRIER: threading.Barrier | None = None  # in-process tests: the first trials wait for each other


def fake_value(cfg: ServeConfig) -> float:
    """A smooth landscape: best near max-num-seqs 32 and 2048 batched tokens."""
    seqs = math.log2(cfg.max_num_seqs or 2)
    tokens = math.log2(cfg.max_num_batched_tokens or 2048)
    return round(20.0 - (seqs - 5) ** 2 - 0.5 * (tokens - 11) ** 2, 3)


def fake_trial(cfg: ServeConfig, workload: Any, run_dir: Path, *, gpus: Any = None, cpu_cores: Any = None,
               duration_s: Any = None, cache_dir: Any = None, on_step: Any = None, on_phase: Any = None,
               on_launch: Any = None, **_: Any) -> TrialRecord:
    t0 = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _BARRIER is not None:
        _BARRIER.wait()  # raises BrokenBarrierError if the other trial never runs at the same time
    time.sleep(float(os.environ.get("VTUNE_TEST_TRIAL_S", "0.2")))
    value = fake_value(cfg)
    pct = Percentiles(10.0, 20.0, 30.0, 15.0)
    result = TrialResult(
        output_tokens_per_second=value * 10, requests_per_second=value, goodput_requests_per_second=value,
        ttft_ms=pct, itl_ms=pct, tpot_ms=pct, e2e_latency_ms=pct, successful_requests=10, errored_requests=0,
        incomplete_requests=0, duration_s=1.0, slo_attainment=1.0, slo_met={},
        slo_observed_ms={"ttft_ms": 1.0, "itl_ms": 1.0, "tpot_ms": 1.0, "e2e_ms": 1.0}, steps=1)
    log_dir = os.environ.get("VTUNE_TEST_LOG_DIR")
    if log_dir:
        line = {"pid": os.getpid(), "number": int(run_dir.name), "run_dir": str(run_dir), "gpus": gpus,
                "cpu_cores": cpu_cores, "t0": t0, "t1": time.time(), "flags": cfg.to_flags_line()}
        with open(Path(log_dir) / f"{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
    return TrialRecord(config=cfg.to_dict(), flags_line=cfg.to_flags_line(), status="ok", result=result,
                       run_dir=str(run_dir), gpus=None if gpus is None else list(gpus),
                       cpu_cores=None if cpu_cores is None else list(cpu_cores), total_s=time.time() - t0)


def fake_log(log_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(log_dir.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def make_settings(root: Path, name: str = "w", *, target: Target | None = None, space: Any = None,
                  base: ServeConfig | None = None, enqueue: list[list[str]] | None = None) -> StudySettings:
    target = target or Target(device="cpu", cpu_cores=(0, 1))
    model = str(build_tiny_model())
    if space is None:
        space = default_space(device=target.device, num_gpus=target.num_gpus, cpu_cores=len(target.cpu_cores))
    return StudySettings(
        name=name, model=model, workload=load_workload("chatbot"), space=space,
        base=base or ServeConfig(model=model, max_model_len=512), objectives=parse_objectives("goodput"),
        target=target, duration_s=1.0, remeasure_top_k=0, enqueue=enqueue or [], seed=1,
        studies_dir=root / "studies", configs_dir=root / "configs")


def overlapping(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a["t0"] < b["t1"] and b["t0"] < a["t1"]:
                pairs.append((a, b))
    return pairs


@pytest.fixture
def plenty_of_memory(monkeypatch):
    """The CPU engine's default packing does not depend on what else uses this machine's memory now."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 1000 * 2**30})())


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    d = tmp_path / "fake-log"
    d.mkdir()
    monkeypatch.setenv("VTUNE_TEST_LOG_DIR", str(d))
    monkeypatch.setenv("VTUNE_TEST_TRIAL_S", "0.1")
    return d


# ---------------------------------------------------------- default packing
def test_default_concurrency_fills_the_node_with_the_smallest_layout(plenty_of_memory):
    cpu = make_settings(Path("/tmp"), target=Target(device="cpu", cpu_cores=(0, 1)))
    assert default_concurrency(cpu) == 2  # one core per rank, the CPU space's layout is tp1
    h100 = resolve_gpu("H100-80GB")
    gpu8 = Target(device="gpu", gpus=tuple(range(8)), gpu=h100, gpu_names=("H100",) * 8)
    every_layout_whole_node = make_settings(Path("/tmp"), target=gpu8)
    assert all(c.endswith("dp1") or "dp" in c for c in every_layout_whole_node.space.get("parallel_layout").choices)
    assert default_concurrency(every_layout_whole_node) == 1
    small = make_settings(Path("/tmp"), target=gpu8)
    small.space.get("parallel_layout").choices = ["tp1-pp1-dp1", "tp2-pp1-dp1", "tp4-pp1-dp1"]
    assert default_concurrency(small) == 8
    small.space.get("parallel_layout").choices = ["tp4-pp1-dp1", "tp8-pp1-dp1"]
    assert default_concurrency(small) == 2
    fixed_tp2 = make_settings(Path("/tmp"), target=gpu8, base=ServeConfig(model="m", tensor_parallel_size=2))
    fixed_tp2.space.get("parallel_layout").enabled = False
    assert default_concurrency(fixed_tp2) == 4
    three = make_settings(Path("/tmp"), target=Target(device="gpu", gpus=(0, 1, 2), gpu=h100))
    three.space.get("parallel_layout").choices = ["tp2-pp1-dp1"]
    assert default_concurrency(three) == 1


def test_cpu_engine_default_is_capped_by_available_memory(monkeypatch):
    import psutil

    from vtune.study._packing import cpu_trial_memory_gib

    settings = make_settings(Path("/tmp"), target=Target(device="cpu", cpu_cores=tuple(range(8))))
    per_trial = cpu_trial_memory_gib(settings)
    assert per_trial >= 4 + 2  # the space's largest KV cache space (4 GiB) and the engine's own memory
    for gib, expected in ((1000, 8), (2.5 * per_trial, 2), (1, 1)):
        monkeypatch.setattr(psutil, "virtual_memory", lambda g=gib: type("M", (), {"available": g * 2**30})())
        assert default_concurrency(settings) == expected


def test_packed_cpu_study_runs_two_trials_at_once_on_disjoint_cores(tmp_path, log_dir, monkeypatch, plenty_of_memory):
    monkeypatch.setattr(sys.modules[__name__], "_BARRIER", threading.Barrier(2, timeout=60))
    settings = make_settings(tmp_path)
    summary = run_study(settings, n_trials=6, max_concurrent_trials=None, trial_fn=_first_two_meet(), quiet=True,
                        export=False)
    assert summary.max_concurrent_trials == 2 and summary.finished_trials == 6
    rows = fake_log(log_dir)
    assert rows and all(r["cpu_cores"] is not None and len(r["cpu_cores"]) == 1 for r in rows)
    pairs = overlapping(rows)
    assert pairs, "no two trials ran at the same time"
    for a, b in pairs:
        assert set(a["cpu_cores"]).isdisjoint(b["cpu_cores"]), (a, b)
    study = optuna.load_study(study_name="w", storage=make_storage(summary.storage, heartbeat=False))
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.user_attrs["cpu_cores"] in ([0], [1])
        assert t.user_attrs["lease"]["units"] == t.user_attrs["cpu_cores"]
        assert t.user_attrs["lease"]["host"] == socket.gethostname()
    assert len({r["number"] for r in rows}) == len(rows)  # no trial ran twice


def _first_two_meet():
    """The fake, whose first two calls wait for each other (so they must overlap), later ones not."""
    calls = [0]
    lock = threading.Lock()

    def fn(*args: Any, **kw: Any) -> TrialRecord:
        global _BARRIER
        with lock:
            calls[0] += 1
            meet = calls[0] <= 2
        barrier = _BARRIER if meet else None
        saved, _BARRIER = _BARRIER, barrier
        try:
            return fake_trial(*args, **kw)
        finally:
            _BARRIER = saved

    return fn


def test_gpu_trials_get_disjoint_gpu_leases_of_their_layout_size(tmp_path, log_dir):
    h100 = resolve_gpu("H100-80GB")
    target = Target(device="gpu", gpus=(0, 1, 2, 3), gpu=h100, gpu_names=("NVIDIA H100 80GB HBM3",) * 4)
    settings = make_settings(tmp_path, target=target)
    settings.space.get("parallel_layout").choices = ["tp1-pp1-dp1", "tp2-pp1-dp1"]
    summary = run_study(settings, n_trials=10, max_concurrent_trials=None, trial_fn=fake_trial, quiet=True,
                        export=False)
    assert summary.max_concurrent_trials == 4
    rows = fake_log(log_dir)
    assert rows
    for r in rows:
        assert r["cpu_cores"] is None and r["gpus"]
        tp = int(r["flags"].split("--tensor-parallel-size ")[1].split()[0]) if "--tensor-parallel-size" in r[
            "flags"] else 1
        dp = int(r["flags"].split("--data-parallel-size ")[1].split()[0]) if "--data-parallel-size" in r[
            "flags"] else 1
        assert len(r["gpus"]) == tp * dp
    for a, b in overlapping(rows):
        assert set(a["gpus"]).isdisjoint(b["gpus"]), (a, b)


def test_a_trial_needing_more_cores_than_the_node_is_pruned_before_launch(tmp_path, log_dir):
    settings = make_settings(tmp_path, target=Target(device="cpu", cpu_cores=(0,)),
                             enqueue=[["--tensor-parallel-size", "2"]])
    summary = run_study(settings, n_trials=5, trial_fn=fake_trial, quiet=True, export=False)
    study = optuna.load_study(study_name="w", storage=make_storage(summary.storage, heartbeat=False))
    too_big = [t for t in study.get_trials() if t.user_attrs.get("pruned_by") == "resources"]
    assert len(too_big) == 1 and too_big[0].state == TrialState.PRUNED
    assert "tp2-pp1-dp1 needs 2 CPU cores but this node" in too_big[0].user_attrs["reason"]
    assert too_big[0].number not in {r["number"] for r in fake_log(log_dir)}  # never launched


def test_max_concurrent_trials_below_one_is_a_one_line_error(tmp_path):
    with pytest.raises(VtuneError, match="--max-concurrent-trials must be >= 1"):
        run_study(make_settings(tmp_path), n_trials=1, max_concurrent_trials=0, trial_fn=fake_trial, quiet=True)
    proc = subprocess.run([sys.executable, "-m", "vtune", "study", "--max-concurrent-trials", "0",
                           "--studies-dir", str(tmp_path / "s")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "vtune: error: --max-concurrent-trials must be >= 1, got 0"


# ------------------------------------------------------------------ workers
def test_worker_joins_a_study_runs_to_its_budget_and_never_exports(tmp_path, log_dir, plenty_of_memory):
    settings = make_settings(tmp_path, name="joined")
    study, _, _, url = prepare_study(settings, n_trials=5)
    baselines = [t.number for t in study.get_trials() if t.user_attrs.get("baseline")]
    assert baselines  # enqueued by the study, not by the worker
    summary = run_worker("joined", url, studies_dir=tmp_path / "studies", trial_fn=fake_trial, quiet=True,
                         target=Target(device="cpu", cpu_cores=(0, 1)))
    assert summary.finished_trials == 5 and sorted(summary.ran_here) == list(range(5))
    assert summary.exported == [] and not (tmp_path / "configs").exists()
    study = optuna.load_study(study_name="joined", storage=make_storage(url, heartbeat=False))
    assert [t.number for t in study.get_trials() if t.user_attrs.get("baseline")] == baselines
    assert {t.user_attrs["worker"]["pid"] for t in study.get_trials()} == {os.getpid()}
    # A second worker finds the budget spent and runs nothing.
    again = run_worker("joined", url, studies_dir=tmp_path / "studies", trial_fn=fake_trial, quiet=True,
                       target=Target(device="cpu", cpu_cores=(0, 1)))
    assert again.ran_here == [] and again.finished_trials == 5


def test_worker_n_trials_caps_its_own_share(tmp_path, log_dir):
    settings = make_settings(tmp_path, name="capped")
    _, _, _, url = prepare_study(settings, n_trials=20)
    summary = run_worker("capped", url, n_trials=2, max_concurrent_trials=1, studies_dir=tmp_path / "studies",
                         trial_fn=fake_trial, quiet=True, target=Target(device="cpu", cpu_cores=(0,)))
    assert len(summary.ran_here) == 2 and summary.finished_trials == 2


def test_worker_errors_are_one_line(tmp_path):
    settings = make_settings(tmp_path, name="exists")
    _, _, _, url = prepare_study(settings, n_trials=2)
    with pytest.raises(VtuneError, match="no such study"):
        run_worker("other", url, trial_fn=fake_trial)
    with pytest.raises(VtuneError, match="CPU engine; drop --gpus"):
        run_worker("exists", url, gpus="0", trial_fn=fake_trial)
    with pytest.raises(VtuneError, match="no study database"):
        run_worker("exists", f"sqlite:///{tmp_path}/missing.db", trial_fn=fake_trial)
    proc = subprocess.run([sys.executable, "-m", "vtune", "worker", "--study", "other", "--storage", url],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("vtune: error: --study other: no such study")
    assert "Traceback" not in proc.stderr


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage:UserWarning")
def test_a_trial_whose_worker_stopped_heartbeats_fails_with_worker_lost(tmp_path):
    url = f"sqlite:///{tmp_path}/hb.db"
    storage = make_storage(url, heartbeat_interval_s=1, grace_period_s=2)
    study = optuna.create_study(study_name="hb", storage=storage)
    lost = study.ask()
    dead = {"host": "elsewhere", "pid": 4242, "started": 1.0}
    lost.set_user_attr("worker", dead)
    storage.record_heartbeat(lost._trial_id)  # type: ignore[attr-defined]
    alive = study.ask()
    deadline = time.monotonic() + 30
    while study.get_trials(states=(TrialState.RUNNING,))[0].state == TrialState.RUNNING:
        storage.record_heartbeat(alive._trial_id)  # type: ignore[attr-defined]
        optuna.storages.fail_stale_trials(study)
        if [t.number for t in study.get_trials(states=(TrialState.FAIL,))]:
            break
        assert time.monotonic() < deadline, "the lost trial was never failed"
        time.sleep(0.5)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [lost.number]
    failure = failed[0].user_attrs["failure"]
    assert failure["kind"] == "worker_lost" and failure["worker"] == dead
    assert "pid 4242 on elsewhere" in failure["message"] and "more than 2 s" in failure["message"]
    assert study.get_trials(states=(TrialState.RUNNING,))[0].number == alive.number
    study.tell(alive, 1.0)
    wait_for_running(study, quiet=True)  # nothing running: returns at once


def test_elapsed_counts_overlapping_trials_once():
    study = optuna.create_study()
    t0 = dt.datetime(2025, 1, 1, 12, 0, 0)
    for start_s, end_s in [(0, 100), (50, 150), (200, 260), (210, 220)]:
        study.add_trial(optuna.trial.FrozenTrial(
            number=0, state=TrialState.COMPLETE, value=1.0, datetime_start=t0 + dt.timedelta(seconds=start_s),
            datetime_complete=t0 + dt.timedelta(seconds=end_s), params={}, distributions={}, user_attrs={},
            system_attrs={}, intermediate_values={}, trial_id=0))
    assert elapsed_s(study) == pytest.approx(150 + 60)


def test_multi_objective_studies_sample_with_tpe_and_constant_liar(tmp_path):
    from vtune.study._study import _make_sampler

    settings = make_settings(tmp_path)
    settings.objectives = parse_objectives("goodput,ttft_p99")
    sampler = _make_sampler(settings)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._constant_liar
