"""``vtune report``: a Markdown report with pandas tables and plots of a study.

Written to ``studies/<name>/report.md`` with PNG plots beside it: the
optimization history, the Pareto front (several objectives), parameter
importances, and the tuned configuration against the enqueued baselines with
ratios, the re-measurement spread, how many launches the memory model saved,
how many trials early stopping cut short, and where the wall time went.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from vtune.study._baselines import is_off_space
from vtune.study._selection import best_trials, config_measurements, is_feasible, mean_result, mean_values, pick_trial
from vtune.study._settings import load_settings
from vtune.study._storage import make_storage

__all__ = ["study_frame", "write_report"]


def study_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with its state, objective values, result and timings."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        res = t.user_attrs.get("result") or {}
        tim = t.user_attrs.get("timings") or {}
        pred = t.user_attrs.get("prediction") or {}
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "baseline": t.user_attrs.get("baseline") or "",
            "value": t.values[0] if t.values else math.nan,
            "feasible": is_feasible(t) if t.state == TrialState.COMPLETE else None,
            "goodput_rps": res.get("goodput_requests_per_second", math.nan),
            "throughput_tps": res.get("output_tokens_per_second", math.nan),
            "ttft_p99_ms": (res.get("ttft_ms") or {}).get("p99", math.nan),
            "itl_p90_ms": (res.get("itl_ms") or {}).get("p90", math.nan),
            "pruned_by": t.user_attrs.get("pruned_by") or "",
            "reused": bool(t.user_attrs.get("reused_from")),
            "failure": (t.user_attrs.get("failure") or {}).get("kind") or "",
            "engine_start_s": tim.get("engine_start_s", math.nan),
            "load_s": tim.get("load_s", math.nan),
            "overhead_s": tim.get("overhead_s", math.nan),
            "total_s": tim.get("total_s", math.nan),
            "pred_kv_tokens": pred.get("kv_cache_tokens", math.nan),
            "kv_tokens_error": t.user_attrs.get("kv_tokens_error", math.nan),
            "gpu_seconds_saved": t.user_attrs.get("gpu_seconds_saved", 0.0),
            "flags": t.user_attrs.get("flags") or "",
            **{f"param:{k}": v for k, v in t.params.items()},
        })
    return pd.DataFrame(rows)


def _md(df: pd.DataFrame, floatfmt: str = "{:.2f}") -> str:
    """A Markdown table without optional dependencies."""
    if df.empty:
        return "(none)\n"
    cols = list(df.columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else floatfmt.format(v)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _save(fig: Any, path: Path) -> str:
    """Lays out, writes and closes a figure; returns its file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _plots(study: optuna.Study, df: pd.DataFrame, out: Path, names: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    done = df[df.state == "COMPLETE"]
    if not done.empty:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.scatter(done.trial, done.value, label=names[0], color="tab:blue")
        if len(study.directions) == 1:
            best = done.value.cummax() if study.direction.name == "MAXIMIZE" else done.value.cummin()
            ax.step(done.trial, best, where="post", color="tab:orange", label="best so far")
        pruned = df[df.state == "PRUNED"]
        for n in pruned.trial:
            ax.axvline(n, color="lightgray", lw=0.8)
        ax.set_xlabel("trial (gray: pruned)")
        ax.set_ylabel(names[0])
        ax.legend()
        made.append(_save(fig, out / "history.png"))
    if len(study.directions) == 2 and not done.empty:
        front = {t.number for t in best_trials(study)}
        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([t.values[0] for t in trials], [t.values[1] for t in trials], color="lightgray", label="trials")
        f = sorted((t for t in trials if t.number in front), key=lambda t: t.values[0])
        ax.plot([t.values[0] for t in f], [t.values[1] for t in f], "o-", color="tab:red", label="Pareto front")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.legend()
        made.append(_save(fig, out / "pareto.png"))
    try:
        if len(study.directions) == 1 and len(done) >= 3:
            imp = optuna.importance.get_param_importances(_in_space_copy(study))
            if imp:
                fig, ax = plt.subplots(figsize=(6, 3))
                ax.barh(list(imp)[::-1], list(imp.values())[::-1], color="tab:green")
                ax.set_xlabel("importance (fANOVA)")
                made.append(_save(fig, out / "importances.png"))
    except Exception:  # importances need variation in the params: skip when there is none
        pass
    return made


def _in_space_copy(study: optuna.Study) -> optuna.Study:
    """The study without its off-space baselines (an in-memory copy; the study itself if it has none).

    Their parameters hold values outside the space, recorded with widened distributions, which
    would drop those dimensions from the importances.
    """
    trials = study.get_trials(deepcopy=False)
    if not any(is_off_space(t) for t in trials):
        return study
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials([t for t in trials if t.state.is_finished() and not is_off_space(t)])
    return copy


def write_report(name: str, *, storage_url: str, studies_dir: Path, configs_dir: Path) -> Path:
    """Writes ``studies/<name>/report.md`` (and its plots) and returns its path."""
    study = optuna.load_study(study_name=name, storage=make_storage(storage_url, heartbeat=False))
    settings = load_settings(study, studies_dir=studies_dir, configs_dir=configs_dir)
    out = settings.study_dir
    out.mkdir(parents=True, exist_ok=True)
    df = study_frame(study)
    names = [o.name for o in settings.objectives]
    plots = _plots(study, df, out, names)
    best = pick_trial(study, settings)
    slos = ", ".join(f"{k} p{v.percentile:g} <= {v.max_ms:g} ms" for k, v in settings.workload.slo.items())
    lines = [f"# vtune study `{name}`\n",
             f"- model: `{settings.model}`\n- workload: {settings.workload.name} "
             f"({settings.workload.load.kind}, {settings.workload.prompt_tokens.mean} prompt / "
             f"{settings.workload.output_tokens.mean} output tokens)\n"
             f"- hardware: {settings.target.describe()}\n- objectives: {', '.join(names)} "
             f"(SLOs as constraints: {slos})\n"
             f"- storage: `{storage_url}`\n"]
    counts = df.state.value_counts().to_dict() if not df.empty else {}
    before = int((df.pruned_by.isin(["memory_model", "invalid_config"])).sum()) if not df.empty else 0
    early = int((df.pruned_by == "early_stopping").sum()) if not df.empty else 0
    launched = df[~df.engine_start_s.isna()] if not df.empty else df
    lines.append("\n## Summary\n")
    lines.append(f"- trials: {len(df)} ({', '.join(f'{v} {k.lower()}' for k, v in counts.items())})\n"
                 f"- engine launches: {len(launched)}; launches saved by the memory model: {before}; trials answered "
                 f"from two earlier measurements of the same config (no launch): "
                 f"{int(df.reused.sum()) if not df.empty else 0}\n"
                 f"- trials stopped early by the pruner: {early} "
                 f"({df.gpu_seconds_saved.sum() if not df.empty else 0:.0f} GPU-seconds of load saved)\n")
    if not launched.empty:
        tot = launched.total_s.sum()
        start, load = launched.engine_start_s.sum(), launched.load_s.sum()
        lines.append(f"- wall time of launched trials: {tot:.0f} s = engine start {start:.0f} s "
                     f"({100 * start / tot:.0f}%) + load {load:.0f} s ({100 * load / tot:.0f}%) + vtune overhead "
                     f"{tot - start - load:.0f} s ({100 * (tot - start - load) / tot:.0f}%); engine start of the first "
                     f"launch {launched.engine_start_s.iloc[0]:.0f} s, median of later ones "
                     f"{launched.engine_start_s.iloc[1:].median() if len(launched) > 1 else math.nan:.0f} s\n")
        err = launched.kv_tokens_error.dropna()
        if not err.empty:
            lines.append(f"- memory model, KV tokens predicted vs reported: median error "
                         f"{100 * err.abs().median():.2f}%, max {100 * err.abs().max():.2f}%\n")
    if best is not None:
        lines.append("\n## Best configuration\n")
        group = config_measurements(study.get_trials(deepcopy=False), best)
        if len(group) > 1:  # ranked by the mean of its measurements: say so, with their spread
            lines.append(f"Trial {best.number}, a configuration measured {len(group)} times (trials "
                         f"{', '.join(str(t.number) for t in group)}): " + ", ".join(
                             f"{n} = {m:.3f} mean ({min(float(t.values[i]) for t in group):.3f} to "
                             f"{max(float(t.values[i]) for t in group):.3f})"
                             for i, (n, m) in enumerate(zip(names, mean_values(group), strict=False))) + "\n\n")
        else:
            lines.append(f"Trial {best.number}: " + ", ".join(f"{n} = {v:.3f}" for n, v in zip(
                names, best.values, strict=False)) + "\n\n")
        lines.append(f"```\n{best.user_attrs.get('flags')}\n```\n")
        lines.append(f"Exported as `{configs_dir / name}.yaml` (for `vllm serve --config`), `.flags` and `.env`.\n")
        lines.append(_baselines_section(study, group))
    rem = study.user_attrs.get("remeasurements") or {}
    if rem:
        lines.append("\n## Re-measurements of the best configurations (noise)\n")
        rows = [{"trial": int(k), "first": v[0], "again": v[1], "spread %": 100 * abs(v[1] - v[0]) / max(1e-9, v[0])}
                for k, v in rem.items()]
        lines.append(_md(pd.DataFrame(rows)))
    for plot in plots:
        lines.append(f"\n![{plot}]({plot})\n")
    lines.append("\n## Trials\n")
    cols = ["trial", "state", "baseline", "value", "goodput_rps", "throughput_tps", "ttft_p99_ms", "itl_p90_ms",
            "pruned_by", "failure", "engine_start_s", "load_s", "flags"]
    lines.append(_md(df[cols] if not df.empty else df))
    path = out / "report.md"
    path.write_text("".join(lines))
    df.to_csv(out / "trials.csv", index=False)
    return path


def _baselines_section(study: optuna.Study, tuned: list[FrozenTrial]) -> str:
    """Baselines against the best configuration's measurements (``tuned``), each side as its mean."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    best_g, best_tp = (mean_result(tuned, "goodput_requests_per_second"),
                       mean_result(tuned, "output_tokens_per_second"))
    for t in trials:
        name = t.user_attrs.get("baseline")
        if not name or name.startswith("enqueued"):
            continue
        same = config_measurements(trials, t) if t.user_attrs.get("result") else [t]
        g, tp = mean_result(same, "goodput_requests_per_second"), mean_result(same, "output_tokens_per_second")
        state = t.state.name.lower() if t.state != TrialState.COMPLETE else "measured"
        if t.user_attrs.get("pruned_by"):
            state = f"pruned ({t.user_attrs['pruned_by']})"
        if (t.user_attrs.get("failure") or {}).get("kind"):
            state = f"failed ({t.user_attrs['failure']['kind']})"
        rows.append({
            "baseline": name, "trial": t.number, "measurements": len(same), "state": state,
            "goodput rps": g if g is not None else math.nan, "throughput tok/s": tp if tp is not None else math.nan,
            "tuned/baseline goodput": (best_g / g) if g and best_g is not None else math.nan,
            "tuned/baseline throughput": (best_tp / tp) if tp and best_tp is not None else math.nan,
            "sampler": ("kept out (off the space: " + ", ".join(sorted(t.user_attrs["off_space"])) + ")"
                        if is_off_space(t) else "learns from it"),
        })
    return (f"\n### Tuned vs baselines\n\nEach side is the mean over its configuration's measurements "
            f"(tuned: {len(tuned)}). A baseline off the search space (a value the space does not offer) is "
            f"recorded with the values it ran with and kept out of the sampler's history.\n\n"
            + _md(pd.DataFrame(rows)))
