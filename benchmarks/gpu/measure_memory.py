"""Starts real vLLM engines on the GPU for several model shapes and keeps their startup logs.

Runs on the lent GPU machine (vLLM kit installed). For each case: build a model folder
(config.json of the shape + a tokenizer trained offline), start `vllm serve --load-format dummy`,
wait for /health, stop the process group, and keep the log. Logs and a summary go to $OUT.

Usage: python3 benchmarks/gpu/measure_memory.py CASE [CASE ...]   (cases below)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from shapes import DEEPSEEK_V2_LITE, LLAMA_8B, QWEN3_0_6B, QWEN3_30B_A3B  # noqa: E402

QWEN2_5_32B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 5120,
    "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40,
    "num_key_value_heads": 8, "vocab_size": 152064, "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16", "tie_word_embeddings": False, "use_sliding_window": False,
}
SHAPES = {"qwen3-0.6b": QWEN3_0_6B, "llama-8b": LLAMA_8B, "qwen3-30b-a3b": QWEN3_30B_A3B,
          "deepseek-v2-lite": DEEPSEEK_V2_LITE, "qwen2.5-32b": QWEN2_5_32B}
BASE = ["--max-model-len", "8192", "--gpu-memory-utilization", "0.9"]
CASES: dict[str, tuple[str, list[str]]] = {
    "small-default": ("qwen3-0.6b", BASE),
    "small-b2048-s128": ("qwen3-0.6b", [*BASE, "--max-num-batched-tokens", "2048", "--max-num-seqs", "128"]),
    "8b-default": ("llama-8b", BASE),
    "8b-b2048-s64": ("llama-8b", ["--max-model-len", "8192", "--gpu-memory-utilization", "0.8",
                                   "--max-num-batched-tokens", "2048", "--max-num-seqs", "64"]),
    "8b-b16384-s512": ("llama-8b", [*BASE, "--max-num-batched-tokens", "16384", "--max-num-seqs", "512"]),
    "8b-eager": ("llama-8b", [*BASE, "--enforce-eager"]),
    "8b-fp8kv": ("llama-8b", [*BASE, "--kv-cache-dtype", "fp8"]),
    "moe-default": ("qwen3-30b-a3b", BASE),
    "mla-default": ("deepseek-v2-lite", [*BASE, "--trust-remote-code"]),
    "32b-tp2": ("qwen2.5-32b", [*BASE, "--tensor-parallel-size", "2"]),
    "8b-tp2": ("llama-8b", [*BASE, "--tensor-parallel-size", "2"]),
}
# A case pinned to GPUs (to run beside other work) is written "<case>-g<digits>", e.g. mla-default-g1.
OUT = Path(os.environ.get("OUT", "/tmp/out"))
WORK = Path("/tmp/vtune-gpu")


def make_model(name: str) -> Path:
    folder = WORK / "models" / name
    if (folder / "config.json").exists():
        return folder
    kit = Path(os.environ.get("MAKE_MODEL", ".gpukit/make_model.py"))
    subprocess.run([sys.executable, str(kit), str(folder), json.dumps(SHAPES[name])], check=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smi_used() -> list[int]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],  # all GPUs
                         capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def run_case(case: str, timeout_s: float) -> dict:
    base, _, pin = case.rpartition("-g")
    pinned = pin if base in CASES and pin.isdigit() else None
    shape, flags = CASES[base if pinned else case]
    model = make_model(shape)
    port = free_port()
    log = WORK / "logs" / f"{case}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, VLLM_CACHE_ROOT=str(WORK / "cache"), HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    if pinned:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(pinned)
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model), "--load-format", "dummy",
           "--port", str(port), "--host", "127.0.0.1", *flags]
    before = smi_used()
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ready, status = None, "timeout"
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            status = f"exited {proc.returncode}"
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    ready, status = time.time() - t0, "ready"
                    break
        except Exception:
            pass
        time.sleep(1)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except Exception:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(3)
    after = smi_used()
    res = {"case": case, "shape": shape, "flags": flags, "status": status, "ready_s": ready,
           "smi_used_before_mib": before, "smi_used_after_mib": after}
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    budget_s = float(os.environ.get("BUDGET_S", "540"))
    start = time.time()
    info = {}
    try:
        import torch

        free, total = torch.cuda.mem_get_info()
        info = {"torch_total_bytes": total, "torch_free_bytes": free, "name": torch.cuda.get_device_name(0),
                "count": torch.cuda.device_count()}
    except Exception as exc:
        info = {"error": str(exc)}
    info["smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.used",
                                  "--format=csv,noheader"], capture_output=True, text=True).stdout
    print(json.dumps(info), flush=True)
    results = []
    for case in sys.argv[1:]:
        left = budget_s - (time.time() - start)
        if left < 60:
            results.append({"case": case, "status": "skipped: no time left"})
            continue
        results.append(run_case(case, min(420.0, left - 20)))
    summary = OUT / f"summary-{int(start)}.json"
    summary.write_text(json.dumps({"device": info, "results": results}, indent=1))
    with tarfile.open(OUT / f"logs-{int(start)}.tar.gz", "w:gz") as tar:
        tar.add(WORK / "logs", arcname="logs")


if __name__ == "__main__":
    main()
