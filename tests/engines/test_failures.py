"""Tests of vtune.engines._failures: failures classified from real and format-string vLLM logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtune.engines._failures import FAILURE_KINDS, NOT_CONFIG_FAULTS, Failure, classify_failure

LOGS = Path(__file__).parents[1] / "data" / "logs"


def read(name: str) -> str:
    return (LOGS / name).read_text()


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
        "load_error",
        "load_stalled",
        "interrupted",
        "worker_lost",
    )
    got = classify_failure(read("cpu_fail_kv_too_small.log"), exit_code=1, timed_out=False)
    assert got.to_dict()["blames_config"] is True
    assert Failure.from_dict(json.loads(json.dumps(got.to_dict()))) == got
    assert Failure.from_dict({"kind": "timeout", "message": "m"}) == Failure("timeout", "m", None, None)
    with pytest.raises(ValueError, match="unknown failure kind 'oom'"):
        Failure("oom", "m")


@pytest.mark.parametrize("name", sorted(REAL_FAILURES) + ["cpu_fail_max_model_len.log"])
def test_failure_messages_are_one_line(name: str) -> None:
    got = classify_failure(read(name), exit_code=1, timed_out=False)
    assert "\n" not in got.message and got.kind in FAILURE_KINDS


def test_measurement_failures_do_not_blame_the_configuration() -> None:
    # The trial records these itself (a load that broke or stalled, Ctrl-C, a lost worker); they
    # used to be refused by Failure ("unknown failure kind"), so the record ended with failure: null.
    assert NOT_CONFIG_FAULTS == {"interrupted", "worker_lost", "load_stalled", "load_error"}
    for kind in sorted(NOT_CONFIG_FAULTS):
        failure = Failure(kind, "m")
        assert failure.blames_config is False
        assert failure.to_dict()["blames_config"] is False
        assert Failure.from_dict(failure.to_dict()) == failure
    for kind in FAILURE_KINDS:
        assert Failure(kind, "m").blames_config is (kind not in NOT_CONFIG_FAULTS)
