"""Tests of vtune.engines._startup_log: the numbers of real and format-string vLLM start-up logs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from vtune.engines._startup_log import StartupNumbers, parse_startup_log, split_log_line

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
        "cudagraph_estimate_gib": 0.99,
        "cudagraph_estimate_reserved": True,
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
