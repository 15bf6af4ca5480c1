"""``vtune report``: a Markdown report with pandas tables and plots of a study.

Written to ``studies/<name>/report.md`` with PNG plots beside it: the
optimization history, the Pareto front (several objectives), parameter
importances, and the tuned configuration against the enqueued baselines with
ratios, the re-measurement spread, how many launches the memory model saved,
how many trials early stopping cut short, and where the wall time went.

A study whose trials measured capacity (trial user attribute ``capacity``: a
:class:`~vtune.loads._capacity.CapacityResult` with every probe) also gets, from
those probes alone (nothing is measured again):

* ``capacity_curves.png``: latency against request rate of each measured
  configuration (the best ones and the baselines), one line per measurement
  through its probes, the capacity point starred, the SLO limit drawn;
* the capacity table: per configuration (the mean of its measurements) its
  streams, requests/s and output tokens/s at capacity, per GPU, and its ratio
  to each baseline;
* with a target rate (study user attribute ``target_rate_rps``): how many
  servers and GPUs each configuration needs for it, and which needs the fewest.

(One module of about 570 lines: the report's sections share the study frame, the
configuration grouping and the plot conventions: units on every axis, rates from
zero, whole-number trial axes.)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from vtune._errors import VtuneError
from vtune.loads._capacity import CapacityResult, Probe, gpus_for_rate, replicas_for_rate
from vtune.study._baselines import is_off_space
from vtune.study._selection import (
    best_trials,
    config_groups,
    config_key,
    config_measurements,
    is_feasible,
    mean_result,
    mean_values,
    pick_trial,
)
from vtune.study._settings import load_settings
from vtune.study._storage import make_storage

__all__ = ["CapacityConfiguration", "capacity_configurations", "study_frame", "write_report"]

#: Configurations drawn on the capacity curves besides the baselines (the best ones by capacity).
CURVES_TOP = 6
#: Latency metrics drawn on the capacity curves: (probe attribute, SLO name, label).
_CURVE_METRICS = (("ttft_ms", "ttft_ms", "TTFT"), ("itl_ms", "itl_ms", "ITL"))


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)


def study_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with its state, objective values, result and timings."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        res = t.user_attrs.get("result") or {}
        tim = t.user_attrs.get("timings") or {}
        pred = t.user_attrs.get("prediction") or {}
        cap = t.user_attrs.get("capacity") or {}
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
            "prefix_cache_hit_rate": _nan_if_none(res.get("prefix_cache_hit_rate")),
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
            "num_gpus": t.user_attrs.get("num_gpus") or _layout_gpus(t.user_attrs.get("config") or {}),
            "capacity_streams": cap.get("capacity_streams", math.nan),
            "capacity_rps": cap.get("requests_per_second", math.nan),
            "capacity_tps": cap.get("output_tokens_per_second", math.nan),
            "probes": len(cap.get("probes") or []) if cap else math.nan,
            "flags": t.user_attrs.get("flags") or "",
            **{f"param:{k}": v for k, v in t.params.items()},
        })
    df = pd.DataFrame(rows)
    for col in ("capacity_streams", "probes", "num_gpus"):  # counts: whole numbers, empty where not measured
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def _md(df: pd.DataFrame, floatfmt: str = "{:.2f}") -> str:
    """A Markdown table without optional dependencies."""
    if df.empty:
        return "(none)\n"
    cols = list(df.columns)

    def cell(v: Any) -> str:
        if v is pd.NA:
            return ""
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


def _axis_label(name: str, unit: str) -> str:
    """``capacity (req/s)``."""
    return f"{name} ({unit})" if unit else name


def _plots(study: optuna.Study, df: pd.DataFrame, out: Path, names: list[str], units: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

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
        ax.set_xlabel("trial number (gray: pruned)")
        ax.set_ylabel(_axis_label(names[0], units[0]))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        top = float(done.value.max())
        ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)  # from zero, with room above the best point
        ax.legend(loc="lower right")
        made.append(_save(fig, out / "history.png"))
    if len(study.directions) == 2 and not done.empty:
        front = {t.number for t in best_trials(study)}
        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([t.values[0] for t in trials], [t.values[1] for t in trials], color="lightgray", label="trials")
        f = sorted((t for t in trials if t.number in front), key=lambda t: t.values[0])
        ax.plot([t.values[0] for t in f], [t.values[1] for t in f], "o-", color="tab:red", label="Pareto front")
        ax.set_xlabel(_axis_label(names[0], units[0]))
        ax.set_ylabel(_axis_label(names[1], units[1]))
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend()
        made.append(_save(fig, out / "pareto.png"))
    try:
        if len(study.directions) == 1 and len(done) >= 3:
            imp = optuna.importance.get_param_importances(_in_space_copy(study))
            if imp:
                fig, ax = plt.subplots(figsize=(6, 3))
                ax.barh(list(imp)[::-1], list(imp.values())[::-1], color="tab:green")
                ax.set_xlabel("importance (fANOVA: share of the objective's variance, 0-1)")
                ax.set_xlim(left=0)
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
    units = [o.unit for o in settings.objectives]
    plots = _plots(study, df, out, names, units)
    best = pick_trial(study, settings)
    confs = capacity_configurations(study)
    if confs:
        curves = _capacity_curves(confs, settings.workload.slo, out, best)
        plots = ([curves] if curves else []) + plots
    slos = ", ".join(f"{k} p{v.percentile:g} <= {v.max_ms:g} ms" for k, v in settings.workload.slo.items())
    lines = [f"# vtune study `{name}`\n",
             f"- model: `{settings.model}`\n- workload: {settings.workload.name} "
             f"({settings.workload.load.kind}, {settings.workload.prompt_tokens.mean} prompt / "
             f"{settings.workload.output_tokens.mean} output tokens)\n"
             f"- hardware: {settings.target.describe()}\n- objectives: {', '.join(names)} "
             + (f"(capacity: the highest load meeting the SLOs {slos})\n" if confs else
                f"(SLOs as constraints: {slos})\n")
             + f"- storage: `{storage_url}`\n"]
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
            lines.append(f"Trial {best.number}: " + ", ".join(f"{n} = {v:.3f} {u}" for n, v, u in zip(
                names, best.values, units, strict=False)) + "\n\n")
        lines.append(f"```\n{best.user_attrs.get('flags')}\n```\n")
        lines.append(f"Exported as `{configs_dir / name}.yaml` (for `vllm serve --config`), `.flags` and `.env`.\n")
        if not confs:  # a capacity study compares capacities (below), not the fixed-load goodput
            lines.append(_baselines_section(study, group))
    if confs:
        lines.append(_capacity_section(study, confs, best, names[0]))
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
            "prefix_cache_hit_rate", "pruned_by", "failure", "engine_start_s", "load_s", "flags"]
    if confs:
        cols[4:4] = ["capacity_streams", "capacity_rps", "capacity_tps", "probes", "num_gpus"]
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
    enqueued = []
    for t in trials:
        name = t.user_attrs.get("baseline")
        if not name:
            continue
        if name.startswith("enqueued"):  # the user's own configurations (--enqueue): say which they are
            enqueued.append(f"- {name} (trial {t.number}): `{t.user_attrs.get('flags')}`\n")
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
            + _md(pd.DataFrame(rows)) + ("\nThe configurations given with `--enqueue`:\n\n" + "".join(enqueued)
                                         if enqueued else ""))


# ----------------------------------------------------------------------------- capacity


def _layout_gpus(config: dict[str, Any]) -> int:
    """GPUs (CPU-engine ranks) of a configuration's layout from its plain data: TP x PP x DP."""
    return (int(config.get("tensor_parallel_size") or 1) * int(config.get("pipeline_parallel_size") or 1)
            * int(config.get("data_parallel_size") or 1))


@dataclass(frozen=True)
class CapacityConfiguration:
    """One configuration's capacity measurements (completed trials carrying ``capacity``).

    Attributes:
        key: Its flags line.
        label: Its baseline's name, else ``trial N`` (its first measurement).
        trials: The measurements, in trial order.
        results: Each measurement's capacity result (probes included).
        num_gpus: GPUs (CPU-engine ranks) one server of it uses.
    """

    key: str
    label: str
    trials: tuple[FrozenTrial, ...]
    results: tuple[CapacityResult, ...]
    num_gpus: int

    @property
    def baseline(self) -> str:
        """The baseline's name if the configuration is one (else empty)."""
        return next((str(t.user_attrs["baseline"]) for t in self.trials if t.user_attrs.get("baseline")), "")

    @property
    def requests_per_second(self) -> float:
        """Mean requests/s at capacity over the measurements."""
        return sum(r.requests_per_second for r in self.results) / len(self.results)

    @property
    def output_tokens_per_second(self) -> float:
        """Mean output tokens/s at capacity."""
        return sum(r.output_tokens_per_second for r in self.results) / len(self.results)

    @property
    def streams(self) -> float:
        """Mean capacity in concurrent streams."""
        return sum(r.capacity_streams for r in self.results) / len(self.results)

    def mean_result(self) -> CapacityResult:
        """The latest measurement with the means in place of its rates and streams (for the GPU count)."""
        return dataclasses.replace(self.results[-1], requests_per_second=self.requests_per_second,
                                   output_tokens_per_second=self.output_tokens_per_second,
                                   capacity_streams=round(self.streams))

    def value(self, objective: str) -> float:
        """The mean of what the study ranks: per GPU for ``capacity_per_gpu``, else requests/s."""
        return self.requests_per_second / self.num_gpus if objective == "capacity_per_gpu" \
            else self.requests_per_second


def capacity_configurations(study: optuna.Study) -> list[CapacityConfiguration]:
    """The configurations whose completed trials carry a capacity result, in order of first measurement.

    Trials answered from earlier measurements (no launch) and trials stopped early are left
    out: only a finished search is a measurement of capacity. A result that cannot be read
    (another layout version) is skipped.
    """
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if isinstance(t.user_attrs.get("capacity"), dict)]
    out = []
    for key, group in config_groups(trials).items():
        kept, results = [], []
        for t in group:
            try:
                results.append(CapacityResult.from_dict(t.user_attrs["capacity"]))
            except VtuneError:
                continue
            kept.append(t)
        if not kept:
            continue
        first = kept[0]
        gpus = first.user_attrs.get("num_gpus") or _layout_gpus(first.user_attrs.get("config") or {})
        label = next((str(t.user_attrs["baseline"]) for t in kept if t.user_attrs.get("baseline")),
                     f"trial {first.number}")
        out.append(CapacityConfiguration(key, label, tuple(kept), tuple(results), max(1, int(gpus))))
    return out


def _probe_latency(probe: Probe, attr: str, slo_name: str, slo: Any) -> float | None:
    """A probe's latency as the SLO judges it (at the SLO's percentile), else its p90."""
    if getattr(slo, slo_name, None) is not None and slo_name in probe.slo_observed_ms:
        return probe.slo_observed_ms[slo_name]
    value = getattr(probe, attr).p90
    return None if value is None or not math.isfinite(value) else float(value)


def _curve_configs(confs: list[CapacityConfiguration], best_key: str | None) -> list[CapacityConfiguration]:
    """What the curves show: the best configuration, the baselines and the others with the highest capacity."""
    ranked = sorted(confs, key=lambda c: -c.requests_per_second)
    chosen = [c for c in ranked if c.key == best_key or c.baseline]
    chosen += [c for c in ranked if c not in chosen][: max(0, CURVES_TOP - len(chosen))]
    return sorted(chosen, key=lambda c: -c.requests_per_second)


def _capacity_curves(confs: list[CapacityConfiguration], slo: Any, out: Path, best: FrozenTrial | None) -> str | None:
    """``capacity_curves.png``: latency against request rate from every probe (None: no probe to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_key = config_key(best) if best is not None else None
    shown = _curve_configs(confs, best_key)
    if not any(r.probes for c in shown for r in c.results):
        return None
    fig, axes = plt.subplots(1, len(_CURVE_METRICS), figsize=(6.5 * len(_CURVE_METRICS), 4.6), squeeze=False)
    colors = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-."]
    for ax, (attr, slo_name, label) in zip(axes[0], _CURVE_METRICS, strict=True):
        target = getattr(slo, slo_name, None)
        pct = f"p{target.percentile:g}" if target is not None else "p90"
        limit = float(target.max_ms) if target is not None else None
        ys_all: list[float] = []
        for i, conf in enumerate(shown):
            color = colors(i % 10)
            name = (conf.label + (" (best)" if conf.key == best_key else "")
                    + f", {conf.num_gpus} GPU{'s' if conf.num_gpus != 1 else ''}"
                    + (f", {len(conf.results)} measurements" if len(conf.results) > 1 else ""))
            for j, res in enumerate(conf.results):
                pts = [(p.requests_per_second, y, p.slo_met) for p in sorted(res.probes, key=lambda q: q.streams)
                       if (y := _probe_latency(p, attr, slo_name, slo)) is not None]
                if not pts:
                    continue
                ys_all += [y for _, y, _ in pts]
                ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], styles[j % len(styles)], color=color, lw=1.4,
                        label=name if j == 0 else None)
                for ok, marker, size in ((True, "o", 22), (False, "x", 30)):
                    ax.scatter([x for x, _, met in pts if met is ok], [y for _, y, met in pts if met is ok],
                               color=color, marker=marker, s=size, zorder=3)
                at = res.capacity_probe
                y_at = _probe_latency(at, attr, slo_name, slo) if at is not None else None
                if at is not None and y_at is not None:
                    ax.scatter([at.requests_per_second], [y_at], marker="*", s=190, color=color, edgecolors="black",
                               linewidths=0.8, zorder=4)
        if limit is not None:
            ax.axhline(limit, color="red", ls="--", lw=1.2, label=f"SLO: {label} {pct} <= {limit:g} ms")
        top = max(ys_all, default=1.0)
        if limit is not None:
            top = min(max(top, limit), 4 * limit)  # the SLO line always shows; far-off probes are clipped
            clipped = sum(y > top * 1.08 for y in ys_all)
            if clipped:
                ax.text(0.99, 0.98, f"{clipped} probe(s) above the top edge", transform=ax.transAxes, ha="right",
                        va="top", fontsize=8, color="gray")
        ax.set_ylim(0, top * 1.08)
        ax.set_xlim(left=0)
        ax.set_xlabel("requests/s served (each probe: closed-loop streams)")
        ax.set_ylabel(f"{label} {pct} (ms)")
        ax.set_title(f"{label} against load (o: met the SLOs, x: failed, *: capacity)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out / "capacity_curves.png")


def _rate_answer(conf: CapacityConfiguration, rate_rps: float) -> tuple[int | None, int | None]:
    """(servers, GPUs) of ``conf`` for ``rate_rps`` requests/s by its mean capacity; (None, None): it cannot."""
    mean = conf.mean_result()
    try:
        return replicas_for_rate(mean, rate_rps), gpus_for_rate(mean, rate_rps, conf.num_gpus)
    except VtuneError:
        return None, None


def _capacity_section(study: optuna.Study, confs: list[CapacityConfiguration], best: FrozenTrial | None,
                      objective: str) -> str:
    """The capacity table against the baselines and, with a target rate, the fewest-GPUs answer."""
    best_key = config_key(best) if best is not None else None
    rate = study.user_attrs.get("target_rate_rps")
    rate = float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None
    baselines = [c for c in confs if c.baseline]
    per_gpu = objective == "capacity_per_gpu"
    rows = []
    for conf in sorted(confs, key=lambda c: -c.value(objective)):
        vals = [r.requests_per_second for r in conf.results]
        row: dict[str, Any] = {
            "configuration": conf.label + (" (best)" if conf.key == best_key else ""),
            "trials": ", ".join(str(t.number) for t in conf.trials),
            "GPUs": conf.num_gpus, "streams": conf.streams, "req/s": conf.requests_per_second,
            "req/s range": f"{min(vals):.2f}-{max(vals):.2f}" if len(vals) > 1 else "",
            "out tok/s": conf.output_tokens_per_second,
            "req/s per GPU": conf.requests_per_second / conf.num_gpus,
            "out tok/s per GPU": conf.output_tokens_per_second / conf.num_gpus,
        }
        for base in baselines:
            ref = base.value(objective)
            row[f"x {base.baseline}"] = conf.value(objective) / ref if ref > 0 else math.nan
        if rate is not None:
            servers, gpus = _rate_answer(conf, rate)
            row[f"GPUs for {rate:g} req/s"] = f"{gpus} ({servers} x {conf.num_gpus})" if gpus is not None \
                else "cannot (capacity 0)"
        row["flags"] = conf.key
        rows.append(row)
    text = ("\n## Capacity\n\nThe highest load each configuration served within the SLOs "
            "(the capacity search's highest passing probe), as the mean of its measurements; "
            f"ratios compare {'requests/s per GPU' if per_gpu else 'requests/s at capacity'} with each baseline's "
            "mean. Trials stopped early or answered from earlier measurements are not measurements.\n\n")
    text += _md(pd.DataFrame(rows))
    missing = _unmeasured_baselines(study, {c.baseline for c in baselines})
    if missing:
        text += "\nBaselines without a capacity: " + "; ".join(missing) + ".\n"
    if rate is not None:
        text += _target_rate_lines(confs, rate, best_key)
    return text


def _unmeasured_baselines(study: optuna.Study, measured: set[str]) -> list[str]:
    """``vllm-defaults (trial 2): failed (out_of_memory)`` for baselines that measured no capacity."""
    out = []
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("baseline")
        if not name or name in measured:
            continue
        state = t.state.name.lower()
        if t.user_attrs.get("pruned_by"):
            state = f"pruned ({t.user_attrs['pruned_by']})"
        if (t.user_attrs.get("failure") or {}).get("kind"):
            state = f"failed ({t.user_attrs['failure']['kind']})"
        out.append(f"{name} (trial {t.number}): {state}")
    return out


def _target_rate_lines(confs: list[CapacityConfiguration], rate: float, best_key: str | None) -> str:
    """``R req/s needs N x <config> = G GPUs`` for the best configuration, each baseline and the fewest GPUs."""
    def line(conf: CapacityConfiguration, what: str) -> str:
        servers, gpus = _rate_answer(conf, rate)
        if servers is None:
            return (f"- {what}: {rate:g} req/s cannot be served by `{conf.key}` (it met the SLOs at no load)\n")
        return (f"- {what}: {rate:g} req/s needs {servers} x `{conf.key}` = {gpus} GPU{'s' if gpus != 1 else ''} "
                f"({conf.requests_per_second:.2f} req/s per server, {conf.num_gpus} GPU"
                f"{'s' if conf.num_gpus != 1 else ''} each)\n")

    text = f"\n### Serving {rate:g} req/s within the SLOs\n\n"
    answers = [(g, -c.requests_per_second / c.num_gpus, i, c) for i, c in enumerate(confs)
               if (g := _rate_answer(c, rate)[1]) is not None]
    best = next((c for c in confs if c.key == best_key), None)
    if best is not None:
        text += line(best, f"best ({best.label})")
    if answers:
        fewest = min(answers)[3]
        if fewest is not best:
            text += line(fewest, f"fewest GPUs ({fewest.label})")
    for conf in confs:
        if conf.baseline and conf is not best:
            text += line(conf, f"baseline {conf.baseline}")
    return text
