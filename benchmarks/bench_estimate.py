"""Times `vtune estimate`: per configuration after import, and the whole CLI process.

Usage: python benchmarks/bench_estimate.py
Target (issue 2): < 50 ms per configuration after import; the CLI well under a second.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from shapes import DEEPSEEK_V2_LITE, GEMMA3_27B, GPT_OSS_20B, LLAMA_8B, QWEN3_VL_2B, write_model  # noqa: E402

from vtune._memory import estimate_memory, resolve_gpu, valid_layouts  # noqa: E402
from vtune._model_shape import load_model_shape  # noqa: E402
from vtune._serve_config import ServeConfig  # noqa: E402


def main() -> None:
    gpu = resolve_gpu("H200")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in (("llama8b", LLAMA_8B), ("qwen3vl", QWEN3_VL_2B), ("gemma3", GEMMA3_27B),
                          ("gptoss", GPT_OSS_20B), ("dsv2lite", DEEPSEEK_V2_LITE)):
            folder = write_model(Path(tmp), name, cfg)
            shape = load_model_shape(folder)
            configs = [ServeConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp, data_parallel_size=dp,
                                   max_model_len=8192, max_num_seqs=seqs)
                       for tp, pp, dp in valid_layouts(shape, 8) for seqs in (64, 256, 1024)]
            t0 = time.perf_counter()
            for c in configs:
                estimate_memory(shape, c, gpu)
            per_ms = (time.perf_counter() - t0) / len(configs) * 1e3
            print(f"{name:10s} {len(configs):4d} configs  {per_ms:.3f} ms per configuration (after import)")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vtune", "estimate", "--model", str(folder), "--gpu", "H200",
                            "--num-gpus", "8", "--max-model-len", "8192"], check=True, capture_output=True)
            print(f"{'':10s} CLI process, all layouts of 8 GPUs: {(time.perf_counter() - t0) * 1e3:.0f} ms wall")


if __name__ == "__main__":
    main()
