"""The memory model against every real GPU engine start kept in the repo.

For each start (``benchmarks/results/gpu-logs/``: the H100 and H200 starts of
``benchmarks/gpu/measure_memory.py`` and the 2 x H200 study's trials) it parses the
log, predicts the same configuration with the memory model, before calibration
and after calibrating on the first start of the same model shape and GPU, and
prints predicted vs reported weights, activation, non-torch, CUDA-graph memory,
KV GiB, KV tokens and max concurrency. Writes ``benchmarks/results/memory_model.json``
and ``.md``.

Usage: python benchmarks/memory_model_vs_logs.py
Targets (issue 5): KV tokens within 2% before calibration, 0.5% after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from shapes import LLAMA_8B  # noqa: E402

from vtune._memory import Calibration, Gpu, estimate_memory, resolve_gpu  # noqa: E402
from vtune._model_shape import shape_from_config  # noqa: E402
from vtune._serve_config import parse_serve_args  # noqa: E402
from vtune.engines import parse_startup_log  # noqa: E402

LOGS = ROOT / "benchmarks" / "results" / "gpu-logs"
OUT = ROOT / "benchmarks" / "results" / "memory_model"
TERMS = ("weights_gib", "activation_peak_gib", "non_torch_gib", "cudagraph_gib", "kv_cache_gib", "kv_cache_tokens",
         "max_concurrency")


NOTES = """
Shapes: Qwen3-0.6B and Llama-3.1-8B (dense GQA), Qwen3-30B-A3B (MoE, 128 experts), Qwen2.5-32B at TP=2 (30B+
dense), DeepSeek-V2-Lite (MLA + MoE); 8B also at TP=2 and DP=2 (the study's trials). All `--load-format dummy`.

Where the terms still miss:
- DeepSeek-V2-Lite: activation predicted 2.51 GiB, reported 1.09 (the fused-MoE factor was fitted to the Qwen3 MoE
  start, which runs the V1 model runner; DeepSeek-V2 runs V2); CUDA graphs 0.36 vs 1.20 GiB. Its KV tokens are
  1.4% low before calibration. Which runner a model gets is vLLM's rule (`uses_v1_model_runner`: hybrid models, and
  MoE models outside `DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES`); before that rule was read from vLLM's source the
  model took 0.29 GiB of graph reservation out of this start's KV cache and was 1.7% low.
- Qwen2.5-32B at TP=2: CUDA graphs predicted 2.00 GiB, reported 1.10 (dense models run V2, which takes nothing for
  graphs out of the KV cache, so KV tokens are 0.28% high only through weights and activation).
- "after" needs an earlier start of the same shape on the same GPU; the 32B and MLA shapes have one start each, so
  they show the self-calibrated check only.
"""


def starts() -> list[dict]:
    """(log, shape name, config dict, flags, GPU) of every recorded start."""
    import measure_memory as mm

    out = []
    for prefix, gpu in (("h100-vllm0.26-", "H100-80GB"), ("h200-vllm0.26-", "H200")):
        for log in sorted(LOGS.glob(f"{prefix}*.log")):
            shape_name, flags = mm.CASES[log.stem.removeprefix(prefix)]
            out.append({"log": log.name, "gpu": gpu, "shape": shape_name, "config": mm.SHAPES[shape_name],
                        "flags": flags})
    trials = json.loads((ROOT / "benchmarks" / "results" / "gpu-study-2xh200" / "trials.json").read_text())["trials"]
    for t in trials:
        flags = t["flags"].split(" ", 3)[3].split() if t.get("flags") else []
        out.append({"log": f"h200x2-vllm0.26-study-trial{t['n']}.log", "gpu": "H200", "shape": "llama-8b",
                    "config": LLAMA_8B, "flags": flags})
    return out


def main() -> None:
    gpus = {"H100-80GB": resolve_gpu("H100-80GB"), "H200": Gpu("H200", 139.80)}
    rows, cals = [], {}
    for s in starts():
        obs = parse_startup_log((LOGS / s["log"]).read_text())
        if obs.kv_cache_tokens is None:
            rows.append({"log": s["log"], "status": "engine did not start (see the log)"})
            continue
        shape = shape_from_config(s["config"])
        cfg = parse_serve_args([f for f in s["flags"] if f != "--trust-remote-code"])
        gpu = gpus[s["gpu"]]
        key = (s["shape"], s["gpu"])
        before = estimate_memory(shape, cfg, gpu)
        cal = cals.get(key)
        after = estimate_memory(shape, cfg, gpu, calibration=cal) if cal else None
        # Fold this start into the calibration used for the next starts of the same shape and GPU.
        cals[key] = (cal or Calibration()).observe(after or before, obs.to_dict())
        # The first start of a shape has no earlier one: calibrate on itself (a check that the KV
        # sizing is exact once the measured terms are known, not a prediction).
        self_cal = estimate_memory(shape, cfg, gpu, calibration=cals[key]) if cal is None else None
        row = {"log": s["log"], "gpu": s["gpu"], "shape": s["shape"], "flags": " ".join(s["flags"]),
               "observed": {k: getattr(obs, k) for k in TERMS},
               "before": {k: getattr(before, k) for k in TERMS},
               "after": {k: getattr(after, k) for k in TERMS} if after else None,
               "kv_tokens_error_before": before.kv_cache_tokens / obs.kv_cache_tokens - 1,
               "kv_tokens_error_after": (after.kv_cache_tokens / obs.kv_cache_tokens - 1) if after else None,
               "kv_tokens_error_self_calibrated": (self_cal.kv_cache_tokens / obs.kv_cache_tokens - 1)
               if self_cal else None}
        rows.append(row)
    OUT.with_suffix(".json").write_text(json.dumps({
        "schema_version": 1,
        "description": "memory model vs real vLLM 0.26 starts; 'before': uncalibrated prediction, 'after': "
                       "calibrated on the earlier starts of the same shape and GPU (None for the first, whose "
                       "'kv_tokens_error_self_calibrated' calibrates on itself: a check, not a prediction); "
                       "errors are predicted/observed - 1",
        "command": "python benchmarks/memory_model_vs_logs.py",
        "starts": rows}, indent=1, default=str))
    lines = ["# Memory model vs real vLLM 0.26 engine starts\n\n",
             "`python benchmarks/memory_model_vs_logs.py` (logs in `benchmarks/results/gpu-logs/`). GiB per GPU; "
             "pred/obs; KV tokens error before calibration and after calibrating on the earlier starts of the same "
             "shape and GPU; \"(self)\": the first start of a shape and GPU calibrated on itself (a check of the KV "
             "sizing given the measured terms, not a prediction).\n\n",
             "| start | GPU | weights | activation | non-torch | CUDA graph | KV GiB | KV tokens | max conc | "
             "err before | err after |\n|---|---|---|---|---|---|---|---|---|---|---|\n"]
    for r in rows:
        if "observed" not in r:
            lines.append(f"| {r['log']} | | {r['status']} |||||||||\n")
            continue
        b, o = r["before"], r["observed"]

        def pair(k: str, fmt: str = "{:.2f}", b: dict = b, o: dict = o) -> str:
            ov = o.get(k)
            return fmt.format(b[k]) + "/" + ("-" if ov is None else fmt.format(ov))

        after = "" if r["kv_tokens_error_after"] is None else f"{100 * r['kv_tokens_error_after']:+.2f}%"
        if r["kv_tokens_error_self_calibrated"] is not None:
            after = f"({100 * r['kv_tokens_error_self_calibrated']:+.2f}% self)"
        lines.append(
            f"| {r['log'].removesuffix('.log')} | {r['gpu']} | {pair('weights_gib')} | {pair('activation_peak_gib')} | "
            f"{pair('non_torch_gib')} | {pair('cudagraph_gib')} | {pair('kv_cache_gib')} | "
            f"{pair('kv_cache_tokens', '{:,.0f}')} | {pair('max_concurrency')} | "
            f"{100 * r['kv_tokens_error_before']:+.2f}% | {after} |\n")
    errs_b = [abs(r["kv_tokens_error_before"]) for r in rows if "observed" in r]
    errs_a = [abs(r["kv_tokens_error_after"]) for r in rows if r.get("kv_tokens_error_after") is not None]
    errs_s = [abs(r["kv_tokens_error_self_calibrated"]) for r in rows
              if r.get("kv_tokens_error_self_calibrated") is not None]
    lines.append(f"\nKV tokens, |error| before calibration: max {100 * max(errs_b):.2f}%, median "
                 f"{100 * sorted(errs_b)[len(errs_b) // 2]:.2f}% over {len(errs_b)} starts; after: max "
                 f"{100 * max(errs_a):.2f}% over {len(errs_a)} starts; self-calibrated first starts: max "
                 f"{100 * max(errs_s):.2f}% over {len(errs_s)}.\n")
    lines.append(NOTES)
    OUT.with_suffix(".md").write_text("".join(lines))
    print("".join(lines))


if __name__ == "__main__":
    main()
