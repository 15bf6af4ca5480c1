"""Tests of vtune.loads._guidellm(_child): GuideLLM arguments, the step protocol and stalls (fake child), e2e."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import vtune.engines._process as process_mod
import vtune.loads._guidellm as load_mod
import vtune.loads._guidellm_child as child_mod
from vtune._errors import VtuneError
from vtune._workload import LoadProfile, Workload, load_workload
from vtune.loads import GuideLLMLoad, LoadFailure, LoadGenerator, stall_bound_s
from vtune.loads._guidellm import LoadResult, StepResult, run_load
from vtune.loads._guidellm_report import trial_result_from_reports

DATA = Path(__file__).parents[1] / "data" / "guidellm"
REPORTS = [DATA / "chatbot-step-00.json", DATA / "chatbot-step-01.json"]


def _two_step_chatbot() -> Workload:
    return replace(load_workload("chatbot"), steps=2, duration_s=6.0, warmup_s=1.0)


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


# --- GuideLLM arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (LoadProfile("concurrent", streams=8), {"kind": "concurrent", "streams": [8]}),
        (LoadProfile("constant", rate_per_s=2.0), {"kind": "constant", "rate": [2.0]}),
        (LoadProfile("poisson", streams=4, rate_per_s=3.0), {"kind": "poisson", "rate": [3.0], "max_concurrency": 4}),
        (LoadProfile("throughput", streams=32), {"kind": "throughput", "max_concurrency": 32}),
        (LoadProfile("throughput"), {"kind": "throughput"}),
        (LoadProfile("synchronous"), {"kind": "synchronous"}),
        (LoadProfile("sweep", streams=16), {"kind": "sweep", "sweep_size": 3, "max_concurrency": 16}),
    ],
)
def test_profile_args(load: LoadProfile, expected: dict) -> None:
    wl = replace(load_workload("chatbot"), load=load, steps=3, warmup_s=2.0)
    first = child_mod._profile_args(wl, 0)
    later = child_mod._profile_args(wl, 1)
    assert first.pop("warmup") == {"value": 2.0, "mode": "duration"}
    assert first == expected
    if load.kind == "sweep":  # one GuideLLM sweep: each point warms up
        assert later.pop("warmup") == {"value": 2.0, "mode": "duration"}
    assert later == expected


def test_scenarios_validate_with_guidellm(tmp_path: Path) -> None:
    from guidellm.benchmark.entrypoints import resolve_to_single_benchmark

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello there", "output_tokens": 7}) + "\n")
    spec = {"target_url": "http://127.0.0.1:9", "served_model": "m", "tokenizer_dir": str(tmp_path), "seed": 42}
    for name in ("chatbot", "batch", "interactive", "long-context", "reasoning", str(prompts)):
        wl = load_workload(name)
        for step in (0, 1):
            args: Any = resolve_to_single_benchmark(child_mod._scenario(spec, wl, step).get_benchmarks())
            seconds = args.constraints[0].seconds
            expected = wl.step_duration_s + (wl.warmup_s if step == 0 else 0.0)
            assert seconds == pytest.approx(expected)
            assert args.metrics.sample_size == 0
            assert args.seed.value == 42 + step
            assert args.backend.model == "m"


def test_jsonl_rows_cycle_and_tag_repeats(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "alpha", "output_tokens": 5}) + "\n" + json.dumps({"prompt": "beta"}) + "\n"
    )
    wl = replace(load_workload(str(prompts)), load=LoadProfile("constant", rate_per_s=1.0), duration_s=3, steps=3)
    rows0 = child_mod._jsonl_rows(wl, 0)
    rows1 = child_mod._jsonl_rows(wl, 1)
    assert rows0[0] == {"prompt": "alpha", "output_tokens_count": 5}
    assert rows0[1]["prompt"] == "beta"
    assert rows0[1]["output_tokens_count"] == load_workload("chatbot").output_tokens.mean
    assert all(r["prompt"].startswith("[") for r in rows0[2:] + rows1)
    everything = [r["prompt"] for r in rows0 + rows1]
    assert len(set(everything)) == len(everything)


# --- The step protocol, with a fake GuideLLM child ---------------------------------------

FAKE_CHILD = r"""
import json, shutil, sys, time
from pathlib import Path
spec = json.loads(Path(sys.argv[1]).read_text())
out = Path(spec["out_dir"])
mode = sys.argv[2]
reports = sys.argv[3:]
attempt, first = spec.get("attempt", 0), spec.get("first_step", 0)
def emit(**e):
    sys.stdout.write("VTUNE_LOAD " + json.dumps(e) + "\n"); sys.stdout.flush()
def progress(step, created, completed, in_flight):
    emit(event="progress", step=step, phase="running", created=created, completed=completed, errored=0,
         cancelled=0, in_flight=in_flight)
print("GuideLLM noise on stdout", flush=True)
(out / f"fake-attempt-{attempt}.json").write_text(json.dumps({"first_step": first}))
if spec.get("wait_for_go"):
    emit(event="ready")
    go = sys.stdin.readline()
    if not go.startswith("go"):
        sys.exit(0)
    spec.update(json.loads(go[2:].strip() or "{}"))
    (out / "fake-served-model.txt").write_text(spec["served_model"])
if mode == "hang":
    time.sleep(600)
if mode == "error":
    emit(event="error", message="RuntimeError: backend refused")
    sys.exit(1)
answers = []
for i in range(first, spec["workload"]["steps"]):
    if i == 1 and (mode == "stall-twice" or (mode == "stall-once" and attempt == 0)):
        for n in range(5):  # requests complete, then stop completing while 5 stay in flight
            progress(i, 8 + n, 3 + n, 5)
            time.sleep(0.01)
        while True:  # the heartbeat goes on, the counts do not move
            progress(i, 12, 7, 5)
            time.sleep(0.05)
    if i == 1 and mode == "silent-once" and attempt == 0:
        progress(i, 1, 0, 1)
        time.sleep(600)  # no word at all any more
    progress(i, 8, 8, 0)
    dst = out / f"guidellm-step-{i:02d}.json"
    shutil.copy(reports[i % len(reports)], dst)
    emit(event="step", index=i, path=str(dst), save_s=0.001)
    answer = sys.stdin.readline().strip()
    answers.append(answer)
    if answer != "continue":
        break
name = "fake-answers.json" if attempt == 0 else f"fake-answers-{attempt}.json"
(out / name).write_text(json.dumps(answers))
emit(event="done", steps=len(answers))
"""


@pytest.fixture
def fake_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    mode = ["ok"]

    def command(spec_path: Path) -> list[str]:
        return [sys.executable, str(script), str(spec_path), mode[0], *map(str, REPORTS)]

    monkeypatch.setattr(load_mod, "_child_command", command)
    yield mode


def test_run_load_reports_every_step(fake_child: list[str], tmp_path: Path, tokenizer_dir: Path) -> None:
    seen: list[StepResult] = []

    def on_step(index: int, step: StepResult) -> bool:
        assert index == step.index == len(seen)
        seen.append(step)
        return True

    out = tmp_path / "out"
    wl = _two_step_chatbot()
    res = run_load("http://127.0.0.1:8000/v1", "tiny-llama", tokenizer_dir, wl, out, on_step=on_step)
    assert isinstance(res, LoadResult)
    assert [s.index for s in seen] == [0, 1]
    assert res.stopped_early is False
    assert json.loads((out / "fake-answers.json").read_text()) == ["continue", "continue"]
    # The child was started ahead (prepare_load) and learned the served name with "go".
    assert (out / "fake-served-model.txt").read_text() == "tiny-llama"
    expected = trial_result_from_reports(res.report_paths, wl.slo)
    assert res.result == expected
    assert seen[1].cumulative == expected
    assert seen[0].cumulative == seen[0].step
    assert seen[0].step == trial_result_from_reports([out / "guidellm-step-00.json"], wl.slo)
    assert seen[0].gap_s is None
    assert seen[1].gap_s is not None and seen[1].gap_s > 0
    assert all(s.vtune_overhead_s >= 0.001 for s in seen)
    saved = json.loads((out / "load_result.json").read_text())
    assert saved["schema_version"] == load_mod.SCHEMA_VERSION
    assert saved["result"] == expected.to_dict()
    assert len(saved["steps"]) == 2
    spec = json.loads((out / "load_spec.json").read_text())
    assert spec["schema_version"] == load_mod.SCHEMA_VERSION
    assert spec["target_url"] == "http://127.0.0.1:8000"
    assert spec["workload"]["steps"] == 2
    assert (out / "guidellm.log").exists()


def test_on_step_false_stops_early(fake_child: list[str], tmp_path: Path, tokenizer_dir: Path) -> None:
    out = tmp_path / "out"
    res = run_load("http://h:1", "m", tokenizer_dir, _two_step_chatbot(), out, on_step=lambda i, s: False)
    assert res.stopped_early is True
    assert len(res.steps) == 1
    assert res.result == res.steps[0].step
    assert json.loads((out / "fake-answers.json").read_text()) == ["stop"]
    assert not (out / "guidellm-step-01.json").exists()


def test_duration_override_reaches_the_child(fake_child: list[str], tmp_path: Path, tokenizer_dir: Path) -> None:
    out = tmp_path / "out"
    run_load("http://h:1", "m", tokenizer_dir, _two_step_chatbot(), out, duration_s=40)
    assert json.loads((out / "load_spec.json").read_text())["workload"]["duration_s"] == 40


def test_jsonl_prompts_reach_the_child(fake_child: list[str], tmp_path: Path, tokenizer_dir: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi", "output_tokens": 3}) + "\n" + json.dumps({"prompt": "yo"}) + "\n")
    wl = replace(load_workload(str(prompts)), steps=2, duration_s=6.0)
    out = tmp_path / "out"
    run_load("http://h:1", "m", tokenizer_dir, wl, out)
    spec = json.loads((out / "load_spec.json").read_text())
    mean = load_workload("chatbot").output_tokens.mean
    assert spec["prompts"] == [{"prompt": "hi", "output_tokens": 3}, {"prompt": "yo", "output_tokens": mean}]
    assert spec["workload"]["dataset"] == str(prompts.resolve())


def test_child_error_is_a_vtune_error(fake_child: list[str], tmp_path: Path, tokenizer_dir: Path) -> None:
    fake_child[0] = "error"
    with pytest.raises(LoadFailure, match="backend refused") as info:
        run_load("http://h:1", "m", tokenizer_dir, _two_step_chatbot(), tmp_path / "out")
    assert info.value.kind == "load_error" and isinstance(info.value, VtuneError)


def _spy_popen(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(process_mod.subprocess, "Popen", spy)
    return started


def _all_gone(started: list[subprocess.Popen[bytes]]) -> None:
    assert started
    for proc in started:
        assert proc.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)


def test_hung_child_is_killed(
    fake_child: list[str], tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_child[0] = "hang"
    monkeypatch.setattr(load_mod, "_STARTUP_ALLOWANCE_S", 0.0)
    monkeypatch.setattr(load_mod, "_STEP_ALLOWANCE_S", 0.0)
    wl = replace(_two_step_chatbot(), warmup_s=0.0, duration_s=2.0)  # deadline: 2 x 1 s step
    started = _spy_popen(monkeypatch)
    with pytest.raises(LoadFailure, match="did not finish a step") as info:
        run_load("http://h:1", "m", tokenizer_dir, wl, tmp_path / "out")
    assert info.value.kind == "load_stalled"
    assert len(started) == 2  # the step was tried once more on a fresh child
    _all_gone(started)


def test_stalled_step_runs_again_on_a_fresh_child(
    fake_child: list[str], tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_child[0] = "stall-once"
    started = _spy_popen(monkeypatch)
    checks: list[int] = []
    seen: list[int] = []
    out = tmp_path / "out"
    res = run_load("http://h:1", "m", tokenizer_dir, _two_step_chatbot(), out, stall_s=0.5,
                   on_step=lambda i, s: seen.append(i) is None, check_target=lambda: checks.append(1))
    assert [s.index for s in res.steps] == [0, 1] and seen == [0, 1]
    assert res.retries == 1 and checks == [1]
    assert len(res.stalls) == 1 and "finished no request for 0.5 s while running step 1" in res.stalls[0]
    assert "5 in flight" in res.stalls[0]
    # The fresh child started at the stalled step, and warmed up there as step 0 does.
    assert json.loads((out / "fake-attempt-1.json").read_text()) == {"first_step": 1}
    retry_spec = json.loads((out / "load_spec-retry-1.json").read_text())
    assert retry_spec["first_step"] == 1 and retry_spec["attempt"] == 1
    assert json.loads((out / "fake-answers-1.json").read_text()) == ["continue"]
    assert json.loads((out / "load_result.json").read_text())["retries"] == 1
    wl = _two_step_chatbot()
    assert child_mod._profile_args(wl, 1, first_step=1)["warmup"] == {"value": wl.warmup_s, "mode": "duration"}
    assert len(started) == 2
    _all_gone(started)


def test_second_stall_is_a_load_stalled_failure(
    fake_child: list[str], tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_child[0] = "stall-twice"
    started = _spy_popen(monkeypatch)
    with pytest.raises(LoadFailure, match="stalled again after a fresh start") as info:
        run_load("http://h:1", "m", tokenizer_dir, _two_step_chatbot(), tmp_path / "out", stall_s=0.5)
    assert info.value.kind == "load_stalled" and info.value.steps_done == 1
    assert "\n" not in str(info.value)
    assert len(started) == 2
    _all_gone(started)


def test_silent_child_is_a_stall(
    fake_child: list[str], tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_child[0] = "silent-once"
    res = run_load("http://h:1", "m", tokenizer_dir, _two_step_chatbot(), tmp_path / "out", stall_s=0.5)
    assert res.retries == 1 and len(res.steps) == 2
    assert "finished no request for 0.5 s" in res.stalls[0] or "went silent for 0.5 s" in res.stalls[0]


def test_check_target_failure_stops_the_retry(
    fake_child: list[str], tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_child[0] = "stall-once"
    started = _spy_popen(monkeypatch)

    def engine_dead() -> None:
        raise RuntimeError("the engine died")

    with pytest.raises(RuntimeError, match="the engine died"):
        run_load("http://h:1", "m", tokenizer_dir, _two_step_chatbot(), tmp_path / "out", stall_s=0.5,
                 check_target=engine_dead)
    assert len(started) == 1  # no fresh child for a dead engine
    _all_gone(started)


def test_stall_bound_follows_the_workload() -> None:
    chatbot = load_workload("chatbot")
    assert stall_bound_s(chatbot) == 30.0  # 3 x (500 ms + 127 x 50 ms) is below the floor
    reasoning = load_workload("reasoning")  # 1 s TTFT + 1023 tokens x 50 ms, three times
    assert stall_bound_s(reasoning) == pytest.approx(3 * (1.0 + 1023 * 0.05))
    batch = load_workload("batch")
    assert stall_bound_s(batch) == pytest.approx(3 * (10.0 + 255 * 0.25))


def test_guidellm_load_is_a_load_generator(fake_child: list[str], tmp_path: Path, tokenizer_dir: Path) -> None:
    load = GuideLLMLoad(tokenizer_dir, _two_step_chatbot(), tmp_path / "out", duration_s=6.0)
    assert isinstance(load, LoadGenerator)
    with pytest.raises(RuntimeError, match="prepare"):
        load.run("m")
    load.prepare("http://127.0.0.1:8000/v1")
    res = load.run("tiny-llama")
    assert len(res.steps) == 2 and not res.stopped_early
    assert (tmp_path / "out" / "fake-served-model.txt").read_text() == "tiny-llama"
    load.cancel()  # nothing left to cancel: a no-op
    other = GuideLLMLoad(tokenizer_dir, _two_step_chatbot(), tmp_path / "out2")
    other.prepare("http://127.0.0.1:8000")
    other.cancel()
    assert not (tmp_path / "out2" / "fake-served-model.txt").exists()


def test_missing_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(VtuneError, match="no tokenizer"):
        run_load("http://h:1", "m", tmp_path / "nothing", _two_step_chatbot(), tmp_path / "out")


CHILD_DRIVER = """
import json, sys, time
from pathlib import Path
import psutil
from vtune._workload import load_workload
from vtune.loads import prepare_load
prepared = prepare_load("http://127.0.0.1:9", Path(sys.argv[1]), load_workload("chatbot"), Path(sys.argv[2]))
assert prepared.child.next_event(240) == {"event": "ready"}
leader = psutil.Process(prepared.child.proc.pid)
pids = [leader.pid] + [p.pid for p in leader.children(recursive=True)]
print(json.dumps(pids), flush=True)
time.sleep(600)
"""


def test_real_child_dies_with_vtune(tmp_path: Path, tokenizer_dir: Path) -> None:
    # The real child (GuideLLM imported, its forkserver started) kills its group when vtune is killed.
    driver = subprocess.Popen([sys.executable, "-c", CHILD_DRIVER, str(tokenizer_dir), str(tmp_path / "out")],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2], start_new_session=True)
    pids: list[int] = []
    try:
        assert driver.stdout is not None
        pids = json.loads(driver.stdout.readline())
        assert len(pids) >= 3  # the child, its watchdog, GuideLLM's forkserver
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)
        assert [p for p in pids if _pid_alive(p)] == []
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in pids:
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# (GuideLLM against a real engine: tests/engines/test_vllm.py::TestE2EServer::test_e2e_load_chatbot)


def test_prepared_child_is_cancelled_cleanly(fake_child: list[str], tmp_path: Path, tokenizer_dir: Path) -> None:
    prepared = load_mod.prepare_load("http://127.0.0.1:8000", tokenizer_dir, _two_step_chatbot(), tmp_path / "out")
    event = prepared.child.next_event(60)
    assert event == {"event": "ready"}
    prepared.cancel()
    assert prepared.child.proc.poll() is not None
    assert not (tmp_path / "out" / "fake-served-model.txt").exists()
