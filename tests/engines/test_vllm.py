from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vtune._errors import VtuneError
from vtune._hardware import cpu_cores, discover_gpus, gpu_memory_used_bytes
from vtune._serve_config import ServeConfig
from vtune.engines import _vllm as _server
from vtune.engines._launcher import installed_vllm_version, vllm_command
from vtune.engines._metrics import MetricsSampler
from vtune.engines._vllm import EngineFailure, VllmServer, find_free_port, omp_threads_bind, port_is_free

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# A fake `vllm serve`: same argv shape, writes a start-up log line, serves /health, /v1/models
# and /metrics, and starts a child in its process group the way vLLM starts its EngineCore.
FAKE_ENGINE = textwrap.dedent(
    r"""
    import http.server, json, mmap, os, signal, subprocess, sys, time
    mode = os.environ.get("FAKE_ENGINE_MODE", "ok")
    state = os.environ["FAKE_ENGINE_STATE"]
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    host = args[args.index("--host") + 1]
    model = args[1]

    def note(name, value):
        with open(os.path.join(state, name), "w") as f:
            f.write(str(value))

    note("leader.pid", os.getpid())
    note("argv.json", json.dumps(sys.argv))
    note("env.json", json.dumps(dict(os.environ)))
    note("affinity.json", json.dumps(sorted(os.sched_getaffinity(0))))
    print("INFO fake engine starting", flush=True)
    if mode == "bad_flag":
        print("usage: vllm [-h] [-v]", file=sys.stderr)
        print("vllm: error: unrecognized arguments: --no-such-flag", file=sys.stderr, flush=True)
        sys.exit(2)
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.2)"])
    note("child.pid", child.pid)
    if mode == "escape":
        esc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.2)"],
                               start_new_session=True)
        note("escaped.pid", esc.pid)
    if mode == "shm":
        name = "vtune_fake_%d" % os.getpid()
        fd = os.open("/dev/shm/" + name, os.O_CREAT | os.O_RDWR, 0o600)
        os.ftruncate(fd, 4096)
        segment = mmap.mmap(fd, 4096)
        note("shm.name", name)
    if mode == "cuda":
        import torch
        block = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("(EngineCore pid=1) INFO [kv_cache_utils.py:2327] CPU KV cache size: 262,144 tokens, "
          "Maximum concurrency for 2,048 tokens per request: 128.00x", flush=True)
    if mode == "hang":
        time.sleep(3600)
    health_calls = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                health_calls[0] += 1
                code, body = (503, b"") if health_calls[0] < 3 else (200, b"")
            elif self.path == "/v1/models":
                code, body = 200, json.dumps({"data": [{"id": model}]}).encode()
            elif self.path == "/metrics":
                code, body = 200, b'vllm:num_requests_running{engine="0"} 0.0\n'
            else:
                code, body = 404, b""
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    http.server.HTTPServer.allow_reuse_address = True
    http.server.HTTPServer((host, port), Handler).serve_forever()
    """
)


class Fake:
    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "fake_vllm.py"
        self.script.write_text(FAKE_ENGINE)
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.log = tmp_path / "logs" / "trial-0.log"

    def read(self, name: str) -> str:
        return (self.state / name).read_text()

    def pid(self, name: str) -> int:
        return int(self.read(name))

    def server(self, mode: str = "ok", **kwargs: object) -> VllmServer:
        env = {"FAKE_ENGINE_MODE": mode, "FAKE_ENGINE_STATE": str(self.state)}
        env.update(kwargs.pop("env", {}))  # type: ignore[call-overload]
        config = kwargs.pop("config", ServeConfig(model="fake/model", max_num_seqs=8))
        return VllmServer(config, log_path=self.log, env=env, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    f = Fake(tmp_path)
    monkeypatch.setattr(_server, "vllm_command", lambda: [sys.executable, str(f.script)])
    return f


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: object, limit_s: float = 30.0) -> bool:
    """Polls a condition (a bound on hangs, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------- launcher
def test_vllm_command_and_version() -> None:
    assert vllm_command() == [sys.executable, "-m", "vtune.engines._launcher"]
    version = installed_vllm_version()
    if version is None:
        pytest.skip("vLLM is not installed")
    assert version[0].isdigit()


def test_launcher_aliases_only_the_vllm_lookup() -> None:
    code = (
        "import importlib.metadata as m, vtune.engines._launcher as l\n"
        "l._install_version_alias()\n"
        "try:\n    print(m.version('vllm'))\nexcept m.PackageNotFoundError:\n    print('absent')\n"
        "print(m.version('psutil'))\n"
        "try:\n    m.version('no-such-dist-xyz')\nexcept m.PackageNotFoundError:\n    print('missing')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    vllm_version, psutil_version, missing = out.stdout.split()
    assert vllm_version == (installed_vllm_version() or "absent")
    assert psutil_version == psutil.__version__
    assert missing == "missing"


# ------------------------------------------------------------------------------------ helpers
def test_omp_threads_bind() -> None:
    assert omp_threads_bind([0, 1], 1) == "0-1"
    assert omp_threads_bind([0, 1], 2) == "0|1"
    assert omp_threads_bind([0, 1, 2, 3, 4], 2) == "0-1|2-3"
    assert omp_threads_bind([4, 6, 8, 9], 1) == "4,6,8-9"
    with pytest.raises(VtuneError, match="need at least 2 cores"):
        omp_threads_bind([0], 2)


def test_ports() -> None:
    port = find_free_port()
    assert port_is_free("127.0.0.1", port)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free("127.0.0.1", port)


def test_launch_env_and_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_server, "_is_cpu_engine", lambda gpus: True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", "/somewhere/hf")
    cores = cpu_cores()[:2]
    cfg = ServeConfig(model="/m", tensor_parallel_size=len(cores), env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    server = VllmServer(cfg, log_path=tmp_path / "l.log", cpu_cores=cores, cache_dir=tmp_path / "c", port=1234)
    env = server.launch_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "|".join(str(c) for c in cores)
    for key in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "XDG_CACHE_HOME", "HF_HOME"):
        assert env[key].startswith(str((tmp_path / "c").resolve())), key
    wanted_tmp = str((tmp_path / "c" / "tmp").resolve())
    if len(wanted_tmp) <= 64:
        assert env["TMPDIR"] == wanted_tmp
    else:  # too long for vLLM's ZeroMQ socket paths: a short private folder instead
        assert env["TMPDIR"].startswith(os.path.join(tempfile.gettempdir(), "vtune-")) and len(env["TMPDIR"]) <= 64
    assert env["HF_HUB_CACHE"] == "/somewhere/hf/hub"  # models stay findable
    assert "CUDA_VISIBLE_DEVICES" not in env
    cmd = server.build_command()
    assert cmd[-4:] == ["--host", "127.0.0.1", "--port", "1234"]
    serve = cmd.index("serve")
    assert cmd[serve + 1] == "/m" and "--model" not in cmd
    assert cmd[serve - 3 : serve] == vllm_command()
    if cmd[0].endswith("taskset"):
        assert cmd[1:3] == ["-c", _server._compact(cores)]

    gpu = VllmServer(cfg.replace(env={"VLLM_CPU_OMP_THREADS_BIND": "nobind"}), log_path=tmp_path / "l.log", gpus=[2, 3])
    genv = gpu.launch_env()
    assert genv["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert genv["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"  # the user's setting wins
    assert "TMPDIR" not in genv  # no cache_dir: caches left alone
    assert "HF_HUB_OFFLINE" not in VllmServer(cfg, log_path=tmp_path / "l", offline=False).launch_env()


def test_bad_cores_and_empty_model(tmp_path: Path) -> None:
    with pytest.raises(VtuneError, match="not all allowed"):
        VllmServer(ServeConfig(model="/m"), log_path=tmp_path / "l", cpu_cores=[max(cpu_cores()) + 1000])
    with pytest.raises(VtuneError, match="empty model"):
        VllmServer(ServeConfig(), log_path=tmp_path / "l")


# ------------------------------------------------------------------------- fake engine runs
def test_fake_start_ready_stop(fake: Fake, tmp_path: Path) -> None:
    cores = cpu_cores()[:1]
    with fake.server(cpu_cores=cores, cache_dir=tmp_path / "cache") as server:
        assert server.start_s is not None and server.start_s > 0
        assert server.served_model_name == "fake/model"
        assert server.startup is not None
        assert server.startup.kv_cache_tokens == 262144
        assert server.is_alive()
        server.check(probe_http=True)
        leader, child = fake.pid("leader.pid"), fake.pid("child.pid")
        assert server.pid == leader
        assert os.getpgid(child) == server.pgid == leader
        argv = json.loads(fake.read("argv.json"))
        assert argv[1:3] == ["serve", "fake/model"] and "--max-num-seqs" in argv
        env = json.loads(fake.read("env.json"))
        wanted_tmp = str((tmp_path / "cache" / "tmp").resolve())
        if len(wanted_tmp) <= 64:
            assert env["TMPDIR"] == wanted_tmp
        else:  # too long for vLLM's ZeroMQ socket paths: a short private folder instead
            assert env["TMPDIR"].startswith(os.path.join(tempfile.gettempdir(), "vtune-"))
            assert len(env["TMPDIR"]) <= 64
        assert json.loads(fake.read("affinity.json")) == cores
        port = server.port
        assert port is not None and not port_is_free("127.0.0.1", port)
    report = server.teardown
    assert report is not None
    assert report.signal_sent == "SIGTERM"
    assert report.exit_code == -signal.SIGTERM
    assert report.leftover_pids == [] and report.orphans_killed == []
    assert report.port_free and report.clean
    assert report.gpu_memory_back is None or report.gpu_memory_back
    assert gone(leader) and gone(child)
    assert "fake engine starting" in fake.log.read_text()
    assert server.stop() is report  # idempotent
    assert report.to_dict()["clean"] is True


def test_fake_invalid_argument(fake: Fake) -> None:
    server = fake.server("bad_flag")
    with pytest.raises(EngineFailure) as info:
        with server:
            pass
    assert info.value.kind == "invalid_argument"
    assert info.value.failure.exit_code == 2
    assert info.value.log_path == fake.log
    assert "\n" not in str(info.value)
    assert server.teardown is not None and server.teardown.clean
    assert server.teardown.signal_sent == "none"


def test_fake_startup_timeout(fake: Fake) -> None:
    server = fake.server("hang", startup_timeout_s=0.5)
    server.start()
    try:
        with pytest.raises(EngineFailure) as info:
            server.wait_ready()
        assert info.value.kind == "timeout"
    finally:
        report = server.stop(grace_s=10)
    assert report.clean and gone(fake.pid("leader.pid")) and gone(fake.pid("child.pid"))


def test_fake_sigterm_ignored_escalates_to_sigkill(fake: Fake) -> None:
    server = fake.server("ignore_term")
    server.start()
    server.wait_ready()
    report = server.stop(grace_s=0.5)
    assert report.signal_sent == "SIGKILL"
    assert report.exit_code == -signal.SIGKILL
    assert report.clean and gone(fake.pid("leader.pid"))


def test_fake_escaped_descendant_is_killed(fake: Fake) -> None:
    with fake.server("escape") as server:
        escaped = fake.pid("escaped.pid")
        assert os.getpgid(escaped) != server.pgid
    report = server.teardown
    assert report is not None
    assert report.orphans_killed == [escaped]
    assert report.leftover_pids == [] and gone(escaped)


def test_fake_leftover_shm_is_removed(fake: Fake) -> None:
    unrelated = Path("/dev/shm") / f"vtune_unrelated_{os.getpid()}"
    try:
        unrelated.write_bytes(b"x")
    except OSError:
        pytest.skip("no writable /dev/shm")
    try:
        with fake.server("shm"):
            name = fake.read("shm.name")
            assert (Path("/dev/shm") / name).exists()
    finally:
        unrelated.unlink()
    assert not (Path("/dev/shm") / name).exists()


def test_fake_kill9_detected(fake: Fake) -> None:
    with fake.server() as server:
        child = fake.pid("child.pid")
        os.kill(server.pid or 0, signal.SIGKILL)
        assert wait_for(lambda: not server.is_alive())
        with pytest.raises(EngineFailure) as info:
            server.check()
        assert info.value.kind == "crash"
        assert info.value.failure.exit_code == -signal.SIGKILL
        assert not gone(child)  # the child outlived its parent, still in the group
    report = server.teardown
    assert report is not None and report.clean
    assert gone(child)


def test_keyboard_interrupt_stops(fake: Fake) -> None:
    with pytest.raises(KeyboardInterrupt):
        with fake.server() as server:
            raise KeyboardInterrupt
    assert server.teardown is not None and server.teardown.clean
    assert gone(fake.pid("leader.pid")) and gone(fake.pid("child.pid"))


@pytest.mark.parametrize("how", ["sigterm", "exit"])
def test_safety_net_kills_engine_when_python_dies(fake: Fake, tmp_path: Path, how: str) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            import vtune.engines._vllm as s
            from vtune._serve_config import ServeConfig
            s.vllm_command = lambda: [sys.executable, {str(fake.script)!r}]
            srv = s.VllmServer(ServeConfig(model="m"), log_path=Path({str(fake.log)!r}),
                               env={{"FAKE_ENGINE_MODE": "ok", "FAKE_ENGINE_STATE": {str(fake.state)!r}}})
            srv.start()
            srv.wait_ready()
            print("READY", flush=True)
            if {how!r} == "exit":
                sys.exit(0)
            time.sleep(600)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(driver)], stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        leader, child = fake.pid("leader.pid"), fake.pid("child.pid")
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == (-signal.SIGTERM if how == "sigterm" else 0)
        assert gone(leader) and gone(child)
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.gpu
def test_gpu_memory_checked_on_real_gpu(fake: Fake) -> None:
    gpus = discover_gpus()
    if not gpus:
        print("no NVIDIA GPU here (neither NVML nor nvidia-smi): skipping the GPU memory teardown check")
        pytest.skip("no NVIDIA GPU (neither NVML nor nvidia-smi)")
    if importlib.util.find_spec("torch") is None:
        print("torch is not installed: the fake engine cannot allocate GPU memory")
        pytest.skip("torch is not installed")
    target = gpus[-1].index
    with fake.server("cuda", gpus=[target], startup_timeout_s=300) as server:
        assert json.loads(fake.read("env.json"))["CUDA_VISIBLE_DEVICES"] == str(target)
        during = gpu_memory_used_bytes([target])[target]
        assert during >= server._gpu_before[target] + 900 * 1024 * 1024  # the fake's 1 GiB block
    report = server.teardown
    assert report is not None
    print(f"GPU teardown: {report.to_dict()}")
    assert set(report.gpu_memory_before_mib) == {target} == set(report.gpu_memory_after_mib)
    assert report.gpu_memory_back is True and report.clean


# ------------------------------------------------------------------------ real vLLM (CPU)
MAKE_MODEL = Path("/work/shared/gpu/make_model.py")
TINY_ARCH = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 8192,
    "max_position_embeddings": 4096,
    "torch_dtype": "float32",
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if installed_vllm_version() is None:
        pytest.skip("vLLM is not installed")
    if not MAKE_MODEL.exists():
        pytest.skip(f"{MAKE_MODEL} not found: cannot build the tiny model")
    out = tmp_path_factory.mktemp("tinymodel")
    subprocess.run([sys.executable, str(MAKE_MODEL), str(out), json.dumps(TINY_ARCH)], check=True)
    return out


def tiny_config(model: Path, **changes: object) -> ServeConfig:
    return ServeConfig(
        model=str(model),
        load_format="dummy",
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    ).replace(**changes)


def complete(url: str, model: str, prompt: str, max_tokens: int = 32) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.fixture(scope="class")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """One real engine for the tests of a class (at most one of ours runs at a time)."""
    work = tmp_path_factory.mktemp("e2e-serve")
    server = VllmServer(
        tiny_config(tiny_model, max_num_seqs=16),
        log_path=work / "trial.log",
        cpu_cores=cpu_cores(),
        cache_dir=work / "cache",
        startup_timeout_s=600,
    )
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.e2e
class TestE2EServer:
    """One real CPU engine for every test that needs only a running engine, in this order: start and readiness
    numbers, ``--check-log`` on its startup log, metrics under load, a GuideLLM load through
    :func:`vtune.loads.run_load`, teardown (each engine start costs 35-45 s of CI on 2 cores)."""

    def test_e2e_ready_with_startup_numbers(self, served: VllmServer, tiny_model: Path) -> None:
        print(f"tiny model ready in {served.start_s:.1f} s; startup numbers {served.startup}")
        assert served.served_model_name == str(tiny_model)
        assert served.startup is not None
        assert served.startup.kv_cache_tokens and served.startup.kv_cache_tokens > 0
        assert served.startup.max_concurrency and served.startup.max_concurrency > 0
        assert served.env_overrides["VLLM_CPU_OMP_THREADS_BIND"] == _server._compact(cpu_cores())
        served.check(probe_http=True)

    def test_e2e_metrics_under_load(self, served: VllmServer) -> None:
        model = served.served_model_name or ""
        prompt = "the quick brown fox jumps over the lazy dog " * 60
        statuses: list[int] = []
        with MetricsSampler(served.url, interval_s=0.05) as sampler:
            for _round in range(20):
                threads = [
                    threading.Thread(target=lambda: statuses.append(complete(served.url, model, prompt)))
                    for _ in range(8)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if (sampler.summary()["num_requests_running_max"] or 0) > 0:
                    break
        summary = sampler.summary()
        print(f"metrics summary: {summary}")
        assert statuses and all(s == 200 for s in statuses)
        assert summary["fetch_errors"] == 0
        assert summary["engines"] == 1
        assert summary["num_requests_running_max"] > 0
        assert summary["kv_cache_usage_max"] > 0
        assert summary["generation_tokens_delta"] >= 32
        assert summary["num_preemptions_delta"] == 0

    def test_e2e_check_log_on_a_real_cpu_start(self, served: VllmServer, tiny_model: Path) -> None:
        """``--check-log`` on the engine's startup log finds the release it ran, the configuration it was given
        and the KV cache size and concurrency it logged."""
        from vtune._check_log import check_startup_log
        from vtune._model_shape import load_model_shape
        from vtune._vllm_versions import parse_version

        log = served.log_path
        check = check_startup_log(log.read_text(errors="replace"), load_model_shape(tiny_model), path=str(log))
        assert check.vllm_version == parse_version(installed_vllm_version() or "")
        assert check.device == "cpu" and check.config.max_num_seqs == 16 and check.config.max_model_len == 2048
        assert check.row("kv_cache_gib").logged == 1.0
        for key in ("kv_cache_tokens", "max_concurrency"):
            assert check.row(key).diff_pct == pytest.approx(0.0, abs=1e-9), key

    def test_e2e_load_chatbot(self, served: VllmServer, tmp_path: Path) -> None:
        """Real GuideLLM steps of the chatbot workload against the engine: two steps, each reported."""
        from dataclasses import replace

        from vtune._workload import load_workload
        from vtune.loads._guidellm import StepResult, run_load

        seen: list[int] = []

        def on_step(index: int, step: StepResult) -> bool:
            seen.append(index)
            assert step.step.successful_requests > 0
            return True

        workload = replace(load_workload("chatbot"), steps=2, warmup_s=2.0)
        res = run_load(served.url, served.served_model_name or "", Path(served.config.model), workload,
                       tmp_path / "load", duration_s=20, on_step=on_step)
        print(f"\ne2e: startup {res.startup_s:.1f} s, wall {res.wall_s:.1f} s")
        for s in res.steps:
            t = s.step
            print(f"e2e: step {s.index}: {t.output_tokens_per_second:.0f} out tok/s, {t.requests_per_second:.2f} "
                  f"req/s, goodput {t.goodput_requests_per_second:.2f}/s, TTFT p50/p90/p99 {t.ttft_ms.p50:.0f}/"
                  f"{t.ttft_ms.p90:.0f}/{t.ttft_ms.p99:.0f} ms, ITL p50 {t.itl_ms.p50:.1f} ms, gap {s.gap_s} s, "
                  f"vtune {1000 * s.vtune_overhead_s:.1f} ms")
        r = res.result
        assert seen == [0, 1]
        assert res.stopped_early is False
        assert r.steps == 2
        assert r.duration_s == pytest.approx(20, rel=0.1)
        assert r.output_tokens_per_second > 0 and r.requests_per_second > 0 and r.successful_requests > 0
        assert r.errored_requests == 0
        assert 0 <= r.goodput_requests_per_second <= r.requests_per_second
        assert 0.0 <= r.slo_attainment <= 1.0
        for p in (r.ttft_ms, r.itl_ms, r.tpot_ms, r.e2e_latency_ms):
            assert 0 < p.p50 <= p.p90 <= p.p99
        assert len(res.report_paths) == 2
        for path in res.report_paths:
            assert json.loads(path.read_text())["benchmarks"]
        assert res.result_path.is_file()

    def test_e2e_stop_leaves_nothing(self, served: VllmServer) -> None:
        port = served.port
        pids = set(served._seen)
        assert len(pids) >= 2  # API server + engine core (+ workers)
        report = served.stop()
        print(f"teardown: {report.to_dict()}")
        assert report.leftover_pids == []
        assert report.port_free and port is not None and port_is_free("127.0.0.1", port)
        assert all(gone(pid) for pid in pids)
        assert report.clean


@pytest.mark.e2e
def test_e2e_invalid_flag(tiny_model: Path, tmp_path: Path) -> None:
    server = VllmServer(tiny_config(tiny_model, extra_args=["--no-such-flag"]), log_path=tmp_path / "t.log")
    with pytest.raises(EngineFailure) as info:
        with server:
            pass
    assert info.value.kind == "invalid_argument"
    assert info.value.failure.exit_code == 2
    assert server.teardown is not None and server.teardown.clean


@pytest.mark.e2e
def test_e2e_kill9_engine_detected(tiny_model: Path, tmp_path: Path) -> None:
    with VllmServer(
        tiny_config(tiny_model), log_path=tmp_path / "t.log", cache_dir=tmp_path / "c", startup_timeout_s=600
    ) as server:
        pids = set(server._seen)
        assert len(pids) >= 2
        shm_seen = set(server._shm_seen)
        os.kill(server.pid or 0, signal.SIGKILL)  # the API server: its engine core is orphaned
        assert wait_for(lambda: not server.is_alive())
        with pytest.raises(EngineFailure) as info:
            server.check()
        assert info.value.kind == "crash"
        assert info.value.failure.exit_code == -signal.SIGKILL
    report = server.teardown
    assert report is not None
    print(f"teardown after kill -9: {report.to_dict()}")
    assert report.leftover_pids == [] and report.port_free and report.clean
    assert all(gone(pid) for pid in pids)
    assert not (shm_seen & set(os.listdir("/dev/shm")))


@pytest.mark.e2e
def test_e2e_tp2_shm_segments_removed(tiny_model: Path, tmp_path: Path) -> None:
    cores = cpu_cores()
    if len(cores) < 2:
        pytest.skip(f"tensor parallel 2 on the CPU engine needs 2 cores, this process has {len(cores)}")
    before = set(os.listdir("/dev/shm"))
    with VllmServer(
        tiny_config(tiny_model, tensor_parallel_size=2),
        log_path=tmp_path / "t.log",
        cpu_cores=cores[:2],
        cache_dir=tmp_path / "c",
        startup_timeout_s=600,
    ) as server:
        assert server.env_overrides["VLLM_CPU_OMP_THREADS_BIND"] == f"{cores[0]}|{cores[1]}"
        ours = set(server._shm_seen) - before
        assert ours  # the workers' shared memory was attributed to this engine
    report = server.teardown
    assert report is not None
    print(f"teardown TP=2: {report.to_dict()}")
    assert report.clean
    assert not (ours & set(os.listdir("/dev/shm")))
