from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from vtune.engines._logparse import (
    FAILURE_KINDS,
    Failure,
    StartupNumbers,
    classify_failure,
    parse_startup_log,
    split_log_line,
)

LOGS = Path(__file__).parents[1] / "data" / "logs"
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def read(name: str) -> str:
    return (LOGS / name).read_text()


def numbers(name: str) -> dict[str, Any]:
    """The parsed fields of a fixture that are set, evidence left out."""
    d = parse_startup_log(read(name)).to_dict()
    d.pop("evidence")
    return {k: v for k, v in d.items() if v is not None and v != []}


# ------------------------------------------------------------ real CPU logs (0.32)

CPU_EXPECTED: dict[str, dict[str, Any]] = {
    "cpu_v0_32_eager.log": {
        "device": "cpu",
        "kv_cache_gib": 1.0,
        "kv_cache_tokens": 262144,
        "max_concurrency": 128.0,
        "max_model_len": 2048,
        "total_memory_gib": 7.46,
        "engine_init_s": 2.99,
        "num_engines": 1,
        "kv_cache_tokens_per_engine": [262144],
        "vllm_version": "0.32.0",
    },
    "cpu_v0_32_compiled.log": {
        "device": "cpu",
        "kv_cache_gib": 1.0,
        "kv_cache_tokens": 262144,
        "max_concurrency": 128.0,
        "max_model_len": 2048,
        "total_memory_gib": 8.71,
        "engine_init_s": 55.77,
        "num_engines": 1,
        "kv_cache_tokens_per_engine": [262144],
        "vllm_version": "0.32.0",
    },
    "cpu_v0_32_auto_kv.log": {
        "device": "cpu",
        "kv_cache_gib": 2.47,
        "kv_cache_tokens": 646528,
        "max_concurrency": 315.69,
        "max_model_len": 2048,
        "total_memory_gib": 10.21,
        "requested_memory_gib": 3.06,
        "gpu_memory_utilization": 0.3,
        "engine_init_s": 4.19,
        "num_engines": 1,
        "kv_cache_tokens_per_engine": [646528],
        "vllm_version": "0.32.0",
    },
    "cpu_v0_32_dp2.log": {
        "device": "cpu",
        "kv_cache_gib": 1.0,
        "kv_cache_tokens": 262144,
        "max_concurrency": 128.0,
        "max_model_len": 2048,
        "total_memory_gib": 11.21,
        "engine_init_s": 10.17,
        "num_engines": 2,
        "kv_cache_tokens_per_engine": [262144, 262144],
        "vllm_version": "0.32.0",
    },
    "cpu_v0_32_tp2.log": {
        "device": "cpu",
        "kv_cache_gib": 1.0,
        "kv_cache_tokens": 524288,
        "max_concurrency": 256.0,
        "max_model_len": 2048,
        "total_memory_gib": 12.34,
        "engine_init_s": 1.27,
        "num_engines": 1,
        "kv_cache_tokens_per_engine": [524288],
        "vllm_version": "0.32.0",
    },
}


@pytest.mark.parametrize("name", sorted(CPU_EXPECTED))
def test_real_cpu_logs(name: str) -> None:
    assert numbers(name) == CPU_EXPECTED[name]


def test_real_cpu_evidence_lines() -> None:
    got = parse_startup_log(read("cpu_v0_32_eager.log")).evidence
    kv_line = (
        "(EngineCore pid=4432) INFO 11-22 17:16:37 [kv_cache_utils.py:2327] CPU KV cache size: 262,144 tokens, "
        "Maximum concurrency for 2,048 tokens per request: 128.00x"
    )
    assert got["kv_cache_tokens"] == kv_line
    assert got["max_concurrency"] == kv_line
    assert got["kv_cache_gib"] == (
        "(Worker pid=4511) INFO 11-22 17:16:37 [cpu_worker.py:260] "
        "Explicitly set (1.0/7.46) GiB for KV cache on node 0."
    )
    assert got["vllm_version"] == (
        "(APIServer pid=4218) INFO 11-22 17:16:05 [api_utils.py:347]  ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.32.0"
    )
    assert got["engine_init_s"] == (
        "(EngineCore pid=4432) INFO 11-22 17:16:40 [core.py:402] init engine (profile, create kv cache, warmup model) "
        "took 2.99 s"
    )


def test_real_cpu_dp2_one_line_per_engine() -> None:
    got = parse_startup_log(read("cpu_v0_32_dp2.log")).evidence
    assert got["num_engines"].splitlines() == [
        "(EngineCore_DP0 pid=10390) INFO 11-22 17:25:58 [kv_cache_utils.py:2327] CPU KV cache size: 262,144 tokens, "
        "Maximum concurrency for 2,048 tokens per request: 128.00x",
        "(EngineCore_DP1 pid=10391) INFO 11-22 17:25:59 [kv_cache_utils.py:2327] CPU KV cache size: 262,144 tokens, "
        "Maximum concurrency for 2,048 tokens per request: 128.00x",
    ]


def test_real_cpu_auto_kv_line() -> None:
    got = parse_startup_log(read("cpu_v0_32_auto_kv.log")).evidence
    assert got["requested_memory_gib"] == (
        "(Worker pid=9969) INFO 11-22 17:24:44 [cpu_worker.py:260] Auto set (2.47/10.21) GiB for KV cache on node 0, "
        "with 3.06 GiB requested memory for the worker. 0.6 GiB memory was consumed by non-kv usages."
    )
    assert got["gpu_memory_utilization"].endswith("'gpu_memory_utilization': 0.3}")


# ------------------------------------------------- GPU logs written from format strings

GPU_EXPECTED: dict[str, dict[str, Any]] = {
    # V0 engine, 0.6.3: weights in "GB", blocks x block size from the args line.
    "gpu_v0_6_3.log": {
        "device": "gpu",
        "weights_gib": 14.9888,
        "kv_cache_tokens": 444768,
        "kv_cache_blocks": 27798,
        "block_size": 16,
        "max_concurrency": 54.29,
        "max_model_len": 8192,
        "gpu_memory_utilization": 0.9,
        "graph_capture_s": 14.0,
        "num_engines": 1,
        "kv_cache_tokens_per_engine": [444768],
        "vllm_version": "0.6.3",
    },
    # V0 engine, 0.7.3, TP=2: the three-line memory profiling message, "# cuda blocks",
    # block size inferred from the concurrency line (args say block_size=None).
    "gpu_v0_7_3_tp2.log": {
        "device": "gpu",
        "weights_gib": 7.4912,
        "activation_peak_gib": 1.39,
        "non_torch_gib": 0.81,
        "cudagraph_gib": 0.47,
        "kv_cache_gib": 61.58,
        "kv_cache_tokens": 1008912,
        "kv_cache_blocks": 63057,
        "block_size": 16,
        "max_concurrency": 30.79,
        "max_model_len": 32768,
        "total_memory_gib": 79.19,
        "requested_memory_gib": 71.27,
        "gpu_memory_utilization": 0.9,
        "graph_capture_s": 18.0,
        "engine_init_s": 40.21,
        "num_engines": 1,
        "kv_cache_tokens_per_engine": [1008912],
        "vllm_version": "0.7.3",
    },
    # V1 engine, 0.10.2, TP=2: per-worker lines, the summary line in bytes.
    "gpu_v0_10_2_tp2.log": {
        "device": "gpu",
        "weights_gib": 65.7194,
        "activation_peak_gib": 2.96,
        "non_torch_gib": 0.96,
        "cudagraph_gib": 1.14,
        "kv_cache_gib": 3.21,
        "kv_cache_tokens": 21024,
        "max_concurrency": 0.64,
        "max_model_len": 32768,
        "total_memory_gib": 79.19,
        "requested_memory_gib": 72.85,
        "gpu_memory_utilization": 0.92,
        "model_load_s": 54.012385,
        "graph_capture_s": 22.0,
        "torch_compile_s": 45.37,
        "engine_init_s": 141.53,
        "num_engines": 1,
        "kv_cache_tokens_per_engine": [21024],
        "vllm_version": "0.10.2",
    },
    # V1 engine, 0.26, DP=2, coloured: two engines with different KV sizes.
    "gpu_v0_26_dp2.log": {
        "device": "gpu",
        "weights_gib": 15.27,
        "activation_peak_gib": 1.37,
        "non_torch_gib": 0.22,
        "cudagraph_gib": 0.97,
        "kv_cache_gib": 57.38,
        "kv_cache_tokens": 417824,
        "block_size": 16,
        "max_concurrency": 25.5,
        "max_model_len": 16384,
        "total_memory_gib": 79.18,
        "requested_memory_gib": 75.22,
        "gpu_memory_utilization": 0.95,
        "model_load_s": 31.904512,
        "graph_capture_s": 10.0,
        "torch_compile_s": 26.85,
        "engine_init_s": 72.8,
        "num_engines": 2,
        "kv_cache_tokens_per_engine": [419792, 417824],
        "vllm_version": "0.26.0",
    },
}


@pytest.mark.parametrize("name", sorted(GPU_EXPECTED))
def test_gpu_logs(name: str) -> None:
    assert numbers(name) == GPU_EXPECTED[name]


@pytest.mark.parametrize("name", sorted(CPU_EXPECTED) + sorted(GPU_EXPECTED))
def test_evidence_lines_are_log_lines(name: str) -> None:
    text = read(name)
    lines = {ANSI.sub("", raw).rstrip() for raw in text.splitlines()}
    got = parse_startup_log(text)
    filled = {k for k, v in got.to_dict().items() if v is not None and v != [] and k != "evidence"}
    assert set(got.evidence) == filled
    for field_name, evidence in got.evidence.items():
        for line in evidence.split("\n"):
            assert line in lines, (field_name, line)


def test_gpu_v0_26_evidence_picks_the_smallest_engine() -> None:
    got = parse_startup_log(read("gpu_v0_26_dp2.log")).evidence
    assert got["kv_cache_tokens"] == (
        "(EngineCore_DP1 pid=2101) INFO 11-22 17:01:29 [kv_cache_utils.py:2177] GPU KV cache size: 417,824 tokens"
    )
    assert got["max_concurrency"] == (
        "(EngineCore_DP1 pid=2101) INFO 11-22 17:01:29 [kv_cache_utils.py:2179] "
        "Maximum concurrency for 16,384 tokens per request: 25.50x"
    )
    assert got["kv_cache_gib"] == (
        "(Worker_DP1 pid=2201) INFO 11-22 17:01:28 [gpu_worker.py:561] Available KV cache memory: 57.38 GiB"
    )


def test_gpu_v0_7_3_block_size_inferred_from_concurrency() -> None:
    got = parse_startup_log(read("gpu_v0_7_3_tp2.log")).evidence
    assert got["block_size"] == (
        "INFO 02-20 10:00:41 executor_base.py:116] Maximum concurrency for 32768 tokens per request: 30.79x"
    )
    assert got["kv_cache_gib"].endswith("the rest of the memory reserved for KV Cache is 61.58GiB.")
    assert got["kv_cache_gib"].startswith("(VllmWorkerProcess pid=4321) ")


# --------------------------------------------------------------- inline wordings


def test_v1_0_8_untagged_lines() -> None:
    log = (
        "INFO 05-01 10:00:00 [api_server.py:1043] vLLM API server version 0.8.5\n"
        "INFO 05-01 10:00:30 [gpu_model_runner.py:1347] Model loading took 14.9889 GiB and 4.112358 seconds\n"
        "INFO 05-01 10:00:45 [backends.py:148] Compiling a graph for general shape takes 20.15 s\n"
        "INFO 05-01 10:00:48 [backends.py:151] Compiling a graph for shape 8 takes 1.25 s\n"
        "INFO 05-01 10:00:49 [kv_cache_utils.py:634] GPU KV cache size: 444,896 tokens\n"
        "INFO 05-01 10:00:49 [kv_cache_utils.py:637] Maximum concurrency for 8,192 tokens per request: 54.31x\n"
        "INFO 05-01 10:01:04 [gpu_model_runner.py:1686] Graph capturing finished in 15 secs, took 0.52 GiB\n"
        "INFO 05-01 10:01:04 [core.py:159] init engine (profile, create kv cache, warmup model) took 48.57 seconds\n"
    )
    got = parse_startup_log(log)
    d = {k: v for k, v in got.to_dict().items() if v is not None and v != [] and k != "evidence"}
    assert d == {
        "device": "gpu",
        "weights_gib": 14.9889,
        "model_load_s": 4.112358,
        "cudagraph_gib": 0.52,
        "kv_cache_tokens": 444896,
        "max_concurrency": 54.31,
        "max_model_len": 8192,
        "graph_capture_s": 15.0,
        "torch_compile_s": 21.4,
        "engine_init_s": 48.57,
        "num_engines": 1,
        "kv_cache_tokens_per_engine": [444896],
        "vllm_version": "0.8.5",
    }
    # The per-shape compile lines of one process are added up.
    assert got.evidence["torch_compile_s"].count("\n") == 1


def test_torch_compile_total_beats_per_graph_lines() -> None:
    log = (
        "INFO 03-01 10:00:00 [backends.py:193] Compiling a graph for general shape takes 20.15 s\n"
        "INFO 03-01 10:00:01 [monitor.py:33] torch.compile takes 26.10 s in total\n"
    )
    assert parse_startup_log(log).torch_compile_s == 26.1


def test_compile_time_from_init_engine_line() -> None:
    log = (
        "(EngineCore pid=7) INFO 11-22 17:00:00 [core.py:341] init engine (profile, create kv cache, warmup model) "
        "took 71.23 s (compilation: 26.10 s)\n"
    )
    got = parse_startup_log(log)
    assert (got.engine_init_s, got.torch_compile_s) == (71.23, 26.1)


def test_tagged_torch_compile_parts_add_up_per_process() -> None:
    log = (
        "(Worker_TP0 pid=1) INFO 11-22 17:00:00 [monitor.py:48] [backbone] torch.compile took 20.00 s in total\n"
        "(Worker_TP0 pid=1) INFO 11-22 17:00:01 [monitor.py:48] [encoder] torch.compile took 5.50 s in total\n"
        "(Worker_TP1 pid=2) INFO 11-22 17:00:00 [monitor.py:48] [backbone] torch.compile took 24.00 s in total\n"
    )
    assert parse_startup_log(log).torch_compile_s == 25.5


def test_graph_pool_actual_beats_estimate() -> None:
    log = (
        "(Worker pid=5) INFO 11-22 17:00:00 [gpu_model_runner.py:6738] Estimated CUDA graph memory: 1.25 GiB total\n"
        "(Worker pid=5) INFO 11-22 17:00:09 [gpu_worker.py:794] CUDA graph pool memory: 1.19 GiB (actual), "
        "1.25 GiB (estimated), difference: 0.06 GiB (5.0%).\n"
    )
    assert parse_startup_log(log).cudagraph_gib == 1.19
    assert parse_startup_log(log.splitlines()[0]).cudagraph_gib == 1.25


def test_v0_cpu_executor_blocks_with_block_size() -> None:
    log = (
        "INFO 12-01 10:00:00 api_server.py:712] vLLM API server version 0.6.6.post1\n"
        "INFO 12-01 10:00:00 api_server.py:713] args: Namespace(model='m', block_size=128, max_model_len=4096)\n"
        "INFO 12-01 10:00:10 cpu_executor.py:186] # CPU blocks: 4096\n"
    )
    got = parse_startup_log(log)
    assert (got.device, got.kv_cache_blocks, got.block_size, got.kv_cache_tokens) == ("cpu", 4096, 128, 524288)
    assert got.vllm_version == "0.6.6.post1"


def test_v0_blocks_without_block_size_leave_tokens_unset() -> None:
    log = "INFO 12-01 10:00:10 gpu_executor.py:122] # GPU blocks: 12345, # CPU blocks: 2048\n"
    got = parse_startup_log(log)
    assert (got.kv_cache_blocks, got.kv_cache_tokens, got.block_size, got.num_engines) == (12345, None, None, 1)
    assert got.kv_cache_tokens_per_engine == []


def test_v0_block_size_not_inferred_from_inconsistent_concurrency() -> None:
    log = (
        "INFO 12-01 10:00:10 gpu_executor.py:122] # GPU blocks: 1000, # CPU blocks: 2048\n"
        "INFO 12-01 10:00:10 gpu_executor.py:126] Maximum concurrency for 1000 tokens per request: 15.00x\n"
    )
    got = parse_startup_log(log)
    assert (got.block_size, got.kv_cache_tokens, got.max_concurrency) == (None, None, 15.0)


def test_summary_line_of_0_2x_and_memory_error_line() -> None:
    summary = (
        "(Worker pid=9) INFO 11-22 17:00:00 [gpu_worker.py:856] Free memory on device cuda:0 (78.66/79.18 GiB) on "
        "startup. Desired GPU memory utilization is (0.95, 75.22 GiB). Actual usage is 15.0 GiB for weight, 1.1 GiB "
        "for peak activation, 0.22 GiB for non-torch memory, and 0.98 GiB for CUDAGraph memory. Replace "
        "gpu_memory_utilization config with `--kv-cache-memory=62447017574` (58.16 GiB) to fit into requested "
        "memory, or `--kv-cache-memory=66327431168` (61.77 GiB) to fully utilize gpu memory. Current kv cache "
        "memory in use is 58.89 GiB."
    )
    got = parse_startup_log(summary)
    assert (
        got.total_memory_gib,
        got.gpu_memory_utilization,
        got.requested_memory_gib,
        got.weights_gib,
        got.activation_peak_gib,
        got.non_torch_gib,
        got.cudagraph_gib,
        got.kv_cache_gib,
        got.device,
    ) == (79.18, 0.95, 75.22, 15.0, 1.1, 0.22, 0.98, 58.89, "gpu")


def test_cpu_default_kv_space_warning_0_18() -> None:
    log = (
        "(EngineCore_DP0 pid=3) WARNING 03-01 10:00:00 [cpu.py:137] VLLM_CPU_KVCACHE_SPACE not set. "
        "Using 11.4 GiB for KV cache.\n"
    )
    got = parse_startup_log(log)
    assert (got.kv_cache_gib, got.device) == (11.4, "cpu")


def test_version_wordings() -> None:
    assert parse_startup_log("INFO 10-17 13:39:17 api_server.py:528] vLLM API server version 0.6.3\n").vllm_version == (
        "0.6.3"
    )
    assert (
        parse_startup_log(
            "(APIServer pid=1) INFO 03-01 10:00:00 [api_server.py:1351] vLLM server version 0.22.0, serving model x\n"
        ).vllm_version
        == "0.22.0"
    )
    assert (
        parse_startup_log(
            "(EngineCore pid=2) INFO 03-01 10:00:00 [core.py:94] "
            "Initializing a V1 LLM engine (v0.11.0rc2.dev12+g1a2b3c) with config: model='m'\n"
        ).vllm_version
        == "0.11.0rc2.dev12+g1a2b3c"
    )


def test_platform_line_sets_device() -> None:
    assert parse_startup_log("INFO 02-20 10:00:00 __init__.py:207] Automatically detected platform rocm.\n").device == (
        "gpu"
    )
    assert parse_startup_log("INFO 02-20 10:00:00 [__init__.py:239] Automatically detected platform cpu.\n").device == (
        "cpu"
    )


def test_empty_log() -> None:
    got = parse_startup_log("")
    assert got == StartupNumbers()
    assert got.to_dict()["kv_cache_tokens_per_engine"] == []


def test_line_without_date_as_written_by_a_fake_engine() -> None:
    log = (
        "(EngineCore pid=1) INFO [kv_cache_utils.py:2327] CPU KV cache size: 262,144 tokens, "
        "Maximum concurrency for 2,048 tokens per request: 128.00x\n"
    )
    got = parse_startup_log(log)
    assert (got.kv_cache_tokens, got.max_concurrency, got.max_model_len) == (262144, 128.0, 2048)


def test_startup_numbers_round_trip() -> None:
    got = parse_startup_log(read("gpu_v0_26_dp2.log"))
    d = json.loads(json.dumps(got.to_dict()))
    back = StartupNumbers.from_dict(d)
    assert back == got
    assert isinstance(back.kv_cache_tokens, int) and isinstance(back.weights_gib, float)
    assert StartupNumbers.from_dict({"kv_cache_tokens": 5.0, "weights_gib": 2, "unknown": 1}) == StartupNumbers(
        kv_cache_tokens=5, weights_gib=2.0
    )


def test_to_dict_copies_lists() -> None:
    got = StartupNumbers(kv_cache_tokens_per_engine=[1, 2])
    got.to_dict()["kv_cache_tokens_per_engine"].append(3)
    assert got.kv_cache_tokens_per_engine == [1, 2]


# ---------------------------------------------------------------- split_log_line


@pytest.mark.parametrize(
    ("raw", "tag", "level", "message"),
    [
        (
            "\x1b[1;36m(EngineCore_DP0 pid=1234)\x1b[0;0m \x1b[32mINFO\x1b[0m \x1b[90m11-22 17:00:01\x1b[0m "
            "\x1b[90m[gpu_worker.py:123]\x1b[0m Available KV cache memory: 61.42 GiB",
            "EngineCore_DP0 pid=1234",
            "INFO",
            "Available KV cache memory: 61.42 GiB",
        ),
        (
            "INFO 10-17 13:39:31 gpu_executor.py:122] # GPU blocks: 27798, # CPU blocks: 2048",
            None,
            "INFO",
            "# GPU blocks: 27798, # CPU blocks: 2048",
        ),
        (
            "(RayWorkerWrapper pid=77, ip=10.0.0.2) WARNING 01-02 03:04:05 [utils.py:1] careful",
            "RayWorkerWrapper pid=77, ip=10.0.0.2",
            "WARNING",
            "careful",
        ),
        (
            "2025-11-22T17:00:01.123456Z (APIServer pid=5) ERROR 11-22 17:00:01 [api.py:9] boom",
            "APIServer pid=5",
            "ERROR",
            "boom",
        ),
        ("ValueError: bad", None, None, "ValueError: bad"),
    ],
)
def test_split_log_line(raw: str, tag: str | None, level: str | None, message: str) -> None:
    ln = split_log_line(raw, 7)
    assert (ln.index, ln.tag, ln.level, ln.message) == (7, tag, level, message)
    assert "\x1b" not in ln.raw


# ------------------------------------------------------------- classify_failure

REAL_FAILURES: dict[str, tuple[int, str, str, str]] = {
    # fixture: (exit code, kind, message, log line)
    "cpu_fail_unrecognized_flag.log": (
        2,
        "invalid_argument",
        "vLLM rejected the command line: unrecognized arguments: --no-such-flag; remove the flag or check its "
        "spelling for this vLLM version",
        "api_server.py: error: unrecognized arguments: --no-such-flag",
    ),
    "cpu_fail_bad_int.log": (
        2,
        "invalid_argument",
        "vLLM rejected the command line: argument --max-num-seqs: invalid int value: 'abc'; fix the flag's value",
        "api_server.py: error: argument --max-num-seqs: invalid int value: 'abc'",
    ),
    "cpu_fail_kv_too_small.log": (
        1,
        "kv_cache_too_small",
        "KV cache too small: one request of max_model_len 4096 needs 0.02 GiB of KV cache but only 0.01 GiB is "
        "available (vLLM estimates that 1920 tokens would fit); lower --max-model-len or give the KV cache more "
        "memory (raise --gpu-memory-utilization or --kv-cache-memory-bytes; on the CPU VLLM_CPU_KVCACHE_SPACE)",
        "(EngineCore pid=9474) ERROR 11-22 17:23:55 [core.py:1510] ValueError: To serve at least one request with "
        "the model's max seq len (4096), (0.02 GiB KV cache is needed, which is larger than the available KV cache "
        "memory (0.01 GiB). Based on the available memory, the estimated maximum model length is 1920. Try "
        "increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing "
        "`max_model_len` when initializing the engine. See "
        "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.",
    ),
    "cpu_fail_memory_utilization.log": (
        1,
        "out_of_memory",
        "not enough free memory at start-up: 6.42 of 10.21 GiB free on the NUMA node, less than the 10.11 GiB that "
        "--gpu-memory-utilization 0.99 asks for; lower --gpu-memory-utilization or stop the other processes using "
        "that memory",
        "(VllmWorker-0 pid=8442) ERROR 11-22 17:21:46 [multiproc_executor.py:953] ValueError: Available memory on "
        "node 0 (6.42/10.21 GiB) on startup is less than desired CPU memory utilization (0.99, 10.11 GiB). On the "
        "CPU backend, the `--gpu-memory-utilization` flag controls the fraction of CPU memory reserved (despite its "
        "name). To resolve: decrease `--gpu-memory-utilization` (e.g. `--gpu-memory-utilization 0.5`) or reduce "
        "CPU memory used by other processes.",
    ),
    "cpu_fail_no_config.log": (
        1,
        "model_load_error",
        "the model failed to load: Invalid repository ID or local directory specified: '/tmp/lp/emptydir'; check "
        "--model (a local directory needs config.json, the tokenizer and readable weight files; a hub name needs "
        "the files cached when offline) and --load-format",
        "  Value error, Invalid repository ID or local directory specified: '/tmp/lp/emptydir'.",
    ),
    "cpu_fail_bad_repo_id.log": (
        1,
        "model_load_error",
        "the model failed to load: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
        "'/tmp/lp/does_not_exist'. Use `repo_type` argument if needed; check --model (a local directory needs "
        "config.json, the tokenizer and readable weight files; a hub name needs the files cached when offline) "
        "and --load-format",
        "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
        "'namespace/repo_name': '/tmp/lp/does_not_exist'. Use `repo_type` argument if needed.",
    ),
    "cpu_fail_bad_safetensors.log": (
        1,
        "model_load_error",
        "the model failed to load: Error while deserializing header: header too large; check --model (a local "
        "directory needs config.json, the tokenizer and readable weight files; a hub name needs the files cached "
        "when offline) and --load-format",
        "(Worker pid=8762) ERROR 11-22 17:22:28 [multiproc_executor.py:953] "
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: header too large",
    ),
    "cpu_fail_port_in_use.log": (
        1,
        "port_in_use",
        "port 18123 is already in use: another process listens on it; stop that process or choose another --port",
        "OSError: [Errno 98] Address already in use",
    ),
    "cpu_fail_crash_bad_env.log": (
        1,
        "crash",
        "vLLM exited with code 1: ValueError: invalid literal for int() with base 10: ''; see the server log for "
        "the full traceback",
        "(Worker pid=8256) ERROR 11-22 17:21:12 [multiproc_executor.py:953] ValueError: invalid literal for int() "
        "with base 10: ''",
    ),
}


@pytest.mark.parametrize("name", sorted(REAL_FAILURES))
def test_real_cpu_failures(name: str) -> None:
    code, kind, message, line = REAL_FAILURES[name]
    got = classify_failure(read(name), exit_code=code, timed_out=False)
    assert got == Failure(kind=kind, message=message, log_line=line, exit_code=code)


def test_real_max_model_len_validation_error() -> None:
    got = classify_failure(read("cpu_fail_max_model_len.log"), exit_code=1, timed_out=False)
    assert got.kind == "invalid_argument"
    assert got.message.startswith(
        "vLLM rejected a configuration value (ModelConfig): User-specified max_model_len (100000) is greater than "
        "the derived max_model_len (max_position_embeddings=4096.0"
    )
    assert got.message.endswith("...; fix that setting")
    assert "[type=" not in got.message and "\n" not in got.message
    assert got.log_line is not None and got.log_line.startswith("  Value error, User-specified max_model_len (100000)")


def test_startup_failure_logs_also_parse() -> None:
    got = parse_startup_log(read("cpu_fail_memory_utilization.log"))
    assert (got.total_memory_gib, got.gpu_memory_utilization, got.requested_memory_gib, got.device) == (
        10.21,
        0.99,
        10.11,
        "cpu",
    )
    kv = parse_startup_log(read("cpu_fail_kv_too_small.log"))
    assert (kv.kv_cache_gib, kv.total_memory_gib, kv.kv_cache_tokens) == (0.01, 10.21, None)


def _fail(log: str, exit_code: int | None = 1, timed_out: bool = False) -> Failure:
    return classify_failure(log, exit_code=exit_code, timed_out=timed_out)


def test_cuda_oom() -> None:
    log = (
        "(EngineCore_DP0 pid=3) ERROR 11-22 17:00:00 [core.py:1510] torch.OutOfMemoryError: CUDA out of memory. "
        "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.02 GiB is free.\n"
    )
    got = _fail(log)
    assert got.kind == "out_of_memory"
    assert got.message == (
        "GPU out of memory (CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
        "of which 1.02 GiB is free); lower --gpu-memory-utilization, --max-num-seqs or --max-num-batched-tokens, "
        "or raise --tensor-parallel-size"
    )
    assert got.log_line == log.strip()


def test_old_torch_cuda_oom() -> None:
    log = "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB\n"
    assert _fail(log).kind == "out_of_memory"


def test_free_memory_less_than_desired_gpu() -> None:
    log = (
        "(EngineCore pid=3) ERROR 11-22 17:00:00 [core.py:1510] ValueError: Free memory on device cuda:0 "
        "(40.12/79.19 GiB) on startup is less than desired GPU memory utilization (0.9, 71.27 GiB). Decrease GPU "
        "memory utilization or reduce GPU memory used by other processes.\n"
    )
    got = _fail(log)
    assert got.kind == "out_of_memory"
    assert got.message == (
        "not enough free memory at start-up: 40.12 of 79.19 GiB free on the device, less than the 71.27 GiB that "
        "--gpu-memory-utilization 0.9 asks for; lower --gpu-memory-utilization or stop the other processes using "
        "that memory"
    )


def test_v0_kv_cache_too_small() -> None:
    log = (
        "ValueError: The model's max seq len (131072) is larger than the maximum number of tokens that can be "
        "stored in KV cache (83520). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
        "initializing the engine.\n"
    )
    got = _fail(log)
    assert got.kind == "kv_cache_too_small"
    assert got.message == (
        "KV cache too small: max_model_len 131072 is more than the 83520 tokens the KV cache can hold; lower "
        "--max-model-len or raise --gpu-memory-utilization"
    )


def test_v1_0_8_kv_cache_too_small_wording() -> None:
    log = (
        "ValueError: To serve at least one request with the models's max seq len (131072), (16.00 GiB KV cache is "
        "needed, which is larger than the available KV cache memory (9.50 GiB). Try increasing "
        "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.\n"
    )
    got = _fail(log)
    assert got.kind == "kv_cache_too_small"
    assert got.message.startswith(
        "KV cache too small: one request of max_model_len 131072 needs 16.00 GiB of KV cache but only 9.50 GiB is "
        "available; lower --max-model-len"
    )


def test_no_available_memory_for_cache_blocks() -> None:
    log = (
        "(EngineCore pid=3) ERROR 11-22 17:00:00 [core.py:1510] ValueError: No available memory for the cache "
        "blocks. Try increasing `gpu_memory_utilization` when initializing the engine.\n"
    )
    got = _fail(log)
    assert got.kind == "kv_cache_too_small"
    assert got.message == (
        "no memory left for the KV cache after the weights and activations; raise --gpu-memory-utilization, add "
        "tensor parallelism, or use a smaller or quantized model"
    )


def test_divisible_by_is_invalid_argument() -> None:
    log = (
        "Traceback (most recent call last):\n"
        '  File "/x/vllm/config.py", line 10, in verify\n'
        "    raise ValueError(\n"
        "ValueError: Total number of attention heads (40) must be divisible by tensor parallel size (3).\n"
    )
    got = _fail(log)
    assert got.kind == "invalid_argument"
    assert got.message == (
        "vLLM rejected the parallel layout: Total number of attention heads (40) must be divisible by tensor "
        "parallel size (3); choose sizes that divide the model's dimensions"
    )
    assert got.log_line == (
        "ValueError: Total number of attention heads (40) must be divisible by tensor parallel size (3)."
    )


def test_pydantic_type_error_names_the_field() -> None:
    log = (
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for SchedulerConfig\n"
        "max_num_seqs\n"
        "  Input should be greater than or equal to 1 [type=greater_than_equal, input_value=0, input_type=int]\n"
        "    For further information visit https://errors.pydantic.dev/2.11/v/greater_than_equal\n"
    )
    got = _fail(log)
    assert got.kind == "invalid_argument"
    assert got.message == (
        "vLLM rejected a configuration value (SchedulerConfig.max_num_seqs): Input should be greater than or equal "
        "to 1; fix that setting"
    )


def test_vllm_serve_argparse_error() -> None:
    log = "usage: vllm serve [model_tag] [options]\nvllm serve: error: argument --dtype: invalid choice: 'fp8'\n"
    got = _fail(log, exit_code=2)
    assert got == Failure(
        kind="invalid_argument",
        message="vLLM rejected the command line: argument --dtype: invalid choice: 'fp8'; fix the flag's value",
        log_line="vllm serve: error: argument --dtype: invalid choice: 'fp8'",
        exit_code=2,
    )


def test_missing_config_json_is_model_load_error() -> None:
    log = "OSError: /models/llama does not appear to have a file named config.json. Checkout 'https://hf.co/x'\n"
    assert _fail(log).kind == "model_load_error"


def test_unrelated_missing_file_is_a_crash() -> None:
    log = "FileNotFoundError: [Errno 2] No such file or directory: 'nvidia-smi'\n"
    assert _fail(log).kind == "crash"


def test_warnings_never_decide() -> None:
    log = (
        "(APIServer pid=1) WARNING 11-22 17:16:05 [system_utils.py:255] Found ulimit of 20000 and failed to "
        "automatically increase with error current limit exceeds maximum limit. This can cause fd limit errors "
        "like `OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n\n"
        "(APIServer pid=1) WARNING 11-22 17:16:05 [x.py:1] CUDA out of memory may happen; Address already in use\n"
    )
    got = _fail(log, exit_code=1)
    assert got.kind == "crash"
    assert got.log_line is None
    assert got.message == "vLLM exited with code 1; see the server log for the full traceback"


def test_worker_killed_by_sigkill_is_out_of_memory() -> None:
    log = (
        "(EngineCore pid=3) ERROR 11-22 17:00:00 [multiproc_executor.py:316] Worker proc VllmWorker-0 died "
        "unexpectedly (exit code: -9), shutting down executor.\n"
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n"
    )
    got = _fail(log, exit_code=1)
    assert got.kind == "out_of_memory"
    assert got.message.startswith("host memory exhausted (Worker proc VllmWorker-0 died unexpectedly (exit code: -9)")


def test_plain_sigkill_is_a_crash() -> None:
    got = _fail("(APIServer pid=1) INFO 11-22 17:00:00 [x.py:1] serving\n", exit_code=-9)
    assert got == Failure(
        kind="crash",
        message="vLLM was killed by signal 9 (SIGKILL); if vtune did not kill it, the kernel's OOM killer may have "
        "(check dmesg and host memory); see the server log for the full traceback",
        log_line=None,
        exit_code=-9,
    )


def test_shell_exit_137_is_sigkill() -> None:
    assert _fail("", exit_code=137).message.startswith("vLLM was killed by signal 9 (SIGKILL)")


def test_crash_prefers_root_cause_over_generic_wrapper() -> None:
    log = (
        "(EngineCore pid=3) ERROR 11-22 17:00:00 [core.py:1510] Exception: WorkerProc initialization failed due to "
        "an exception in a background process. See stack trace for root cause.\n"
        "(Worker pid=4) ERROR 11-22 17:00:00 [multiproc_executor.py:953] KeyError: 'model.layers.0.mlp'\n"
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n"
    )
    got = _fail(log)
    assert got.kind == "crash"
    assert got.log_line == (
        "(Worker pid=4) ERROR 11-22 17:00:00 [multiproc_executor.py:953] KeyError: 'model.layers.0.mlp'"
    )


def test_crash_with_only_generic_wrapper() -> None:
    log = "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n"
    got = _fail(log)
    assert got.log_line == log.strip()
    assert got.message == (
        "vLLM exited with code 1: RuntimeError: Engine core initialization failed. See root cause above. Failed core "
        "proc(s): {}; see the server log for the full traceback"
    )


def test_timeout() -> None:
    log = "(APIServer pid=1) INFO 11-22 17:00:00 [x.py:1] Loading weights\n"
    got = _fail(log, exit_code=None, timed_out=True)
    assert got == Failure(
        kind="timeout",
        message="vLLM did not become ready within the start-up timeout; raise the timeout (a first start compiles "
        "and loads slowly) or look for a hang in the log; its last line: Loading weights",
        log_line="(APIServer pid=1) INFO 11-22 17:00:00 [x.py:1] Loading weights",
        exit_code=None,
    )


def test_timeout_names_a_known_failure() -> None:
    got = _fail(read("cpu_fail_port_in_use.log"), exit_code=None, timed_out=True)
    assert got.kind == "timeout"
    assert got.message.endswith(
        "; the log shows: port 18123 is already in use: another process listens on it; "
        "stop that process or choose another --port"
    )
    assert got.log_line == "OSError: [Errno 98] Address already in use"


def test_exit_zero_before_ready() -> None:
    got = _fail("", exit_code=0)
    assert (got.kind, got.message, got.log_line) == (
        "crash",
        "vLLM exited with code 0; see the server log for the full traceback",
        None,
    )


def test_failure_kinds_and_round_trip() -> None:
    assert FAILURE_KINDS == (
        "out_of_memory",
        "kv_cache_too_small",
        "invalid_argument",
        "model_load_error",
        "port_in_use",
        "timeout",
        "crash",
    )
    got = classify_failure(read("cpu_fail_kv_too_small.log"), exit_code=1, timed_out=False)
    assert Failure.from_dict(json.loads(json.dumps(got.to_dict()))) == got
    assert Failure.from_dict({"kind": "timeout", "message": "m"}) == Failure("timeout", "m", None, None)
    with pytest.raises(ValueError, match="unknown failure kind 'oom'"):
        Failure("oom", "m")


@pytest.mark.parametrize("name", sorted(REAL_FAILURES) + ["cpu_fail_max_model_len.log"])
def test_failure_messages_are_one_line(name: str) -> None:
    got = classify_failure(read(name), exit_code=1, timed_out=False)
    assert "\n" not in got.message and got.kind in FAILURE_KINDS
