"""The memory model against every real engine start kept in the repo, or against logs you give.

For each log (``benchmarks/results/gpu-logs/``: the H100 and H200 starts of
``benchmarks/gpu/measure_memory.py``, the 2 x H200 study's trials and bench; ``tests/data/logs/``:
the GPU and CPU fixtures) it runs :func:`vtune._check_log.check_startup_log`: the log's flags,
GPU memory and vLLM version, the model's estimate for that release, term by term. Each start is
predicted before calibration and after calibrating on the earlier starts of the same model shape,
GPU and release; the first start of a group is also calibrated on itself (a check of the KV
sizing once the measured terms are known, not a prediction). Logs of releases outside 0.15-0.33
are listed as out of range. Prints the accuracy per vLLM release and writes
``benchmarks/results/memory_model.json`` and ``.md``.

Usage:
    python benchmarks/memory_model_vs_logs.py                      # the kept starts
    python benchmarks/memory_model_vs_logs.py --model DIR LOG ...  # your logs of one model
Targets (issues 5, 16): KV tokens within 2% before calibration, 0.5% after.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from vtune._check_log import TERMS, check_startup_log  # noqa: E402
from vtune._errors import VtuneError  # noqa: E402
from vtune._memory import Calibration  # noqa: E402
from vtune._model_shape import ModelShape, load_model_shape, shape_from_config  # noqa: E402
from vtune._vllm_versions import parse_version  # noqa: E402
from vtune.engines import parse_startup_log  # noqa: E402

LOG_DIRS = (ROOT / "benchmarks" / "results" / "gpu-logs", ROOT / "tests" / "data" / "logs")
OUT = ROOT / "benchmarks" / "results" / "memory_model"

#: Qwen/Qwen3-8B's config.json (the shape of tests/data/logs/gpu_v0_26_dp2.log).
QWEN3_8B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 40960, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}


def _shapes() -> dict[str, dict[str, Any]]:
    """Model folder name (as the logs name it) -> config.json of the kept starts."""
    import measure_memory as mm

    from vtune._tiny_model import _ARCH, _VOCAB_SIZE

    tiny = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": _VOCAB_SIZE,
            "torch_dtype": "float32", **_ARCH}
    return {**mm.SHAPES, "Qwen3-8B": QWEN3_8B, "tinymodel": tiny}


def _model_name(text: str) -> str | None:
    from vtune._check_log import config_from_log

    try:
        return Path(config_from_log(text).model.rstrip("/")).name
    except VtuneError:
        return None


#: Kept logs that are not real starts: scored, shown, left out of the per-release accuracy.
FIXTURES = {
    "gpu_v0_26_dp2.log": "parser fixture, not a real start: a 0.26 banner over the worker lines of a V1-runner start "
                         "(a real 0.26 Qwen3-8B start runs the V2 runner, logs 'Using V2 Model Runner' and reserves "
                         "no CUDA-graph memory)",
}


def kept_shape(text: str) -> tuple[ModelShape | None, str]:
    """The shape of a kept log's model (by the folder name its non-default args give), and that name."""
    name = _model_name(text) or "?"
    if name == "qwen3-vl-2b":  # the VL start: vtune's own folder (config + processor configs), as the GPU ran it
        import tempfile

        from vtune._model_shape import load_model_shape
        from vtune._tiny_model import build_tiny_vl_model

        with tempfile.TemporaryDirectory() as tmp:
            return load_model_shape(build_tiny_vl_model(Path(tmp) / name, shape=name)), name
    cfg = _shapes().get(name)
    return (shape_from_config(cfg) if cfg else None), name


def kept_logs() -> list[Path]:
    """Every kept log that may hold a start (failure fixtures excluded)."""
    return [p for d in LOG_DIRS for p in sorted(d.glob("*.log")) if not p.name.startswith("cpu_fail_")]


def score(logs: list[Path], shape_for: Any) -> list[dict[str, Any]]:
    """One row per log: status, or the check before/after calibration."""
    rows: list[dict[str, Any]] = []
    cals: dict[tuple[str, str, str], Calibration] = {}
    for log in logs:
        text = log.read_text(errors="replace")
        numbers = parse_startup_log(text)
        row: dict[str, Any] = {"log": str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log),
                               "vllm_version": numbers.vllm_version, "device": numbers.device}
        try:
            if numbers.vllm_version:
                parse_version(numbers.vllm_version)
        except VtuneError:
            row["status"] = (f"out of range: vLLM {numbers.vllm_version} is older than 0.15 (V0 engine or the first "
                             "V1 worker), whose accounting vtune does not model")
            rows.append(row)
            continue
        shape, shape_name = shape_for(text)
        if shape is None:
            row["status"] = "no shape kept for this model"
            rows.append(row)
            continue
        try:
            before = check_startup_log(text, shape, path=log.name)
        except VtuneError as exc:
            row["status"] = str(exc).split(": ", 1)[-1]
            rows.append(row)
            continue
        key = (shape_name, before.gpu.name if before.gpu else "cpu", before.vllm_version)
        cal = cals.get(key)
        after = check_startup_log(text, shape, path=log.name, calibration=cal) if cal else None
        cals[key] = (cal or Calibration()).observe((after or before).estimate, before.observed)
        self_cal = None if cal else check_startup_log(text, shape, path=log.name, calibration=cals[key])
        tokens = before.row("kv_cache_tokens")
        row.update({
            "release": before.vllm_version, "gpu": before.gpu.name if before.gpu else "cpu", "shape": shape_name,
            "flags": before.config.to_flags_line(),
            "observed": {r.key: r.logged for r in before.rows},
            "before": {r.key: r.estimated for r in before.rows},
            "after": {r.key: r.estimated for r in after.rows} if after else None,
            "kv_tokens_error_before": None if tokens.diff_pct is None else tokens.diff_pct / 100,
            "kv_tokens_error_after": (after.row("kv_cache_tokens").diff_pct or 0.0) / 100 if after else None,
            "kv_tokens_error_self_calibrated": (self_cal.row("kv_cache_tokens").diff_pct or 0.0) / 100
            if self_cal else None,
            "notes": before.notes,
        })
        if log.name in FIXTURES:
            row["fixture"] = FIXTURES[log.name]
        rows.append(row)
    return rows


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:+.2f}%"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy of the KV tokens per vLLM release and device."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("kv_tokens_error_before") is not None and not r.get("fixture"):
            groups.setdefault((r["release"], "cpu" if r["gpu"] == "cpu" else "gpu"), []).append(r)
    out = []
    for (release, device), rs in sorted(groups.items()):
        b = sorted(abs(r["kv_tokens_error_before"]) for r in rs)
        a = [abs(r["kv_tokens_error_after"]) for r in rs if r["kv_tokens_error_after"] is not None]
        s = [abs(r["kv_tokens_error_self_calibrated"]) for r in rs if r["kv_tokens_error_self_calibrated"] is not None]
        out.append({"release": release, "device": device, "starts": len(rs), "max_before": b[-1],
                    "median_before": b[len(b) // 2], "after_n": len(a), "max_after": max(a) if a else None,
                    "self_n": len(s), "max_self": max(s) if s else None})
    return out


def render(rows: list[dict[str, Any]], per_release: list[dict[str, Any]]) -> str:
    lines = ["# Memory model vs real vLLM engine starts\n\n",
             "`python benchmarks/memory_model_vs_logs.py`: every start kept in `benchmarks/results/gpu-logs/` and "
             "`tests/data/logs/`, estimated with `vtune estimate --check-log` (the log's flags, GPU memory and "
             "vLLM release). GiB per GPU; estimated/logged; KV tokens error before calibration and after "
             "calibrating on the earlier starts of the same shape, GPU and release; \"(self)\": the first start of "
             "a group calibrated on itself (a check of the KV sizing given the measured terms, not a "
             "prediction).\n\n## Accuracy per vLLM release (KV cache tokens, |estimated / logged - 1|)\n\n",
             "| release | device | starts | max before | median before | max after (n) | max self-calibrated (n) |\n"
             "|---|---|---|---|---|---|---|\n"]
    for s in per_release:
        after = "" if s["max_after"] is None else f"{100 * s['max_after']:.2f}% ({s['after_n']})"
        self_ = "" if s["max_self"] is None else f"{100 * s['max_self']:.2f}% ({s['self_n']})"
        lines.append(f"| {s['release']} | {s['device']} | {s['starts']} | {100 * s['max_before']:.2f}% | "
                     f"{100 * s['median_before']:.2f}% | {after} | {self_} |\n")
    skipped = [r for r in rows if "status" in r]
    if skipped:
        lines.append("\nNot scored:\n\n")
        for r in skipped:
            lines.append(f"- `{r['log']}` (vLLM {r['vllm_version'] or '?'}): {r['status']}\n")
    lines.append("\n## Every start\n\n| start | release | GPU | weights | activation | non-torch | CUDA graph reserved "
                 "| CUDA graph | KV GiB | KV tokens | max conc | err before | err after |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        if "status" in r:
            continue
        b, o = r["before"], r["observed"]

        def pair(k: str, fmt: str = "{:.2f}", b: dict = b, o: dict = o) -> str:
            bv, ov = b.get(k), o.get(k)
            return ("-" if bv is None else fmt.format(bv)) + "/" + ("-" if ov is None else fmt.format(ov))

        after = _pct(r["kv_tokens_error_after"])
        if r["kv_tokens_error_self_calibrated"] is not None:
            after = f"({_pct(r['kv_tokens_error_self_calibrated'])} self)"
        lines.append(
            f"| {Path(r['log']).stem} | {r['release']} | {r['gpu']} | {pair('weights_gib')} | "
            f"{pair('activation_peak_gib')} | {pair('non_torch_gib')} | {pair('cudagraph_reserved_gib')} | "
            f"{pair('cudagraph_gib')} | {pair('kv_cache_gib')} | {pair('kv_cache_tokens', '{:,.0f}')} | "
            f"{pair('max_concurrency')} | {_pct(r['kv_tokens_error_before'])} | {after} |\n")
    for r in rows:
        if r.get("fixture"):
            lines.append(f"\n`{Path(r['log']).name}`: {r['fixture']}; left out of the accuracy above.\n")
    lines.append(NOTES)
    return "".join(lines)


NOTES = """
Shapes: Qwen3-0.6B and Llama-3.1-8B (dense GQA), Qwen3-30B-A3B (MoE, 128 experts), Qwen2.5-32B at TP=2 (30B+
dense), DeepSeek-V2-Lite (MLA + MoE); 8B also at TP=2 and DP=2 (the study's trials and bench), Qwen3-8B at DP=2
(a fixture), and vtune's tiny CPU model on vLLM 0.32's CPU engine. All `--load-format dummy`.

Every kept GPU start is vLLM 0.26; the rules of the other releases (vtune/_vllm_versions.py) are pinned by
worked examples from each release's source (tests/test_vllm_versions.py), not by starts: no GPU start of another
release was recorded. On the CPU engine the KV space is an input (`VLLM_CPU_KVCACHE_SPACE`), so those rows
check the block arithmetic only.

Where the terms still miss:
- DeepSeek-V2-Lite: activation predicted 2.51 GiB, logged 1.09 (the fused-MoE factor was fitted to the Qwen3 MoE
  start); CUDA graphs 0.36 vs 1.20 GiB. Its KV tokens are 1.4% low before calibration.
- Qwen2.5-32B at TP=2: CUDA graphs predicted 2.00 GiB, logged 1.10 (dense models run V2 on 0.26, which takes
  nothing for graphs out of the KV cache, so KV tokens are 0.28% high only through weights and activation).
- Qwen3-VL-2B (the users' VL preset, the one VLM start): weights 4.21 GiB predicted, 4.40 logged; activation 1.44
  vs 0.78 (the encoder's forward transient over-estimated); KV tokens 0.36% low, the two errors partly cancelling.
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="*", type=Path, help="server logs to score (default: the kept starts)")
    ap.add_argument("--model", help="the model folder of the given logs (config.json)")
    args = ap.parse_args(argv)
    if args.logs:
        if not args.model:
            ap.error("--model DIR is needed with your own logs")
        shape: ModelShape = load_model_shape(args.model)
        rows = score(args.logs, lambda _text: (shape, Path(args.model).name))
        per = summary(rows)
        print(render(rows, per))
        return
    rows = score(kept_logs(), kept_shape)
    per = summary(rows)
    OUT.with_suffix(".json").write_text(json.dumps({
        "schema_version": 2,
        "description": "memory model vs real vLLM starts (vtune estimate --check-log); 'before': uncalibrated, "
                       "'after': calibrated on the earlier starts of the same shape, GPU and release (None for the "
                       "first, whose 'kv_tokens_error_self_calibrated' calibrates on itself: a check, not a "
                       "prediction); errors are estimated/logged - 1; 'per_release': max/median |error|",
        "command": "python benchmarks/memory_model_vs_logs.py",
        "terms": [k for k, _, _ in TERMS],
        "per_release": per,
        "starts": rows}, indent=1, default=str))
    text = render(rows, per)
    OUT.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
