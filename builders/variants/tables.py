"""Comparison tables of the variant families, a pure function of a model set's metadata table.

The comparisons are the ones recipes declare (``RecipeMeta.comparison``), each a method against
the baseline its paper beats; the built-in four:

- ``str_vs_gmp``: STR vs GMP at matched sparsity (each GMP model is trained to the sparsity its
  STR twin reached; rows grouped by STR's ``s_init`` level);
- ``channel_sim_vs_l1``: channel-similarity vs L1-norm filter pruning at identical channel counts,
  hence identical FLOPs (grouped by keep ratio);
- ``shape_adaptor_vs_fixed_stride``: learned resizing vs the human-designed strides;
- ``nsl_vs_conv``: static full/diagonal and dynamic (full, diagonal) NSL vs the plain
  convolution network.

For each (comparison, level, variant): number of models, parents and tasks, accuracy mean ± std,
mean sparsity, FLOPs (dense and sparsity-aware) and parameters — of the method and, on the
baseline's row, of its twin — and the paired accuracy difference to the baseline twin (same parent,
seed and level, via ``match_id``): its mean over parents (a parent's seeds averaged first), a 95 %
bootstrap interval over parents (``scipy.stats.bootstrap``, BCa, 9,999 resamples, fixed seed) and
the two-sided p-value of a Wilcoxon signed-rank test on the per-parent differences
(``scipy.stats.wilcoxon``). ``claims_table`` sets each paper's claim beside the measurement;
recipes that learn a per-model vector (``RecipeMeta.learned``) get its mean ± std per position.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from builders.variants._registry import Comparison, LearnedVector, comparisons, learned_vectors
from modelset._atomic import atomic_path, write_text_atomic
from modelset.errors import unknown_name

log = logging.getLogger(__name__)

#: Bootstrap resamples and seed of the intervals (fixed: tables are a pure function of the set).
N_RESAMPLES = 9_999
BOOTSTRAP_SEED = 0

SUMMARY_COLUMNS = [
    "comparison", "level", "variant", "n_models", "n_parents", "n_tasks", "accuracy_mean",
    "accuracy_std", "delta_vs_baseline_mean", "delta_vs_baseline_std", "delta_ci95_low",
    "delta_ci95_high", "wilcoxon_p", "sparsity_mean", "flops_mean", "flops_sparse_mean",
    "n_params_mean",
]


def paired_stats(deltas: np.ndarray) -> tuple[float, float, float]:
    """95 % bootstrap interval (BCa) of the mean of per-parent differences ``(n,)`` and the
    Wilcoxon signed-rank p-value; NaN where undefined (fewer than 2 parents, all equal)."""
    deltas = np.asarray(deltas, dtype=float)
    deltas = deltas[np.isfinite(deltas)]
    if len(deltas) < 2:
        return np.nan, np.nan, np.nan
    if np.ptp(deltas) == 0:
        low = high = float(deltas[0])
    else:
        res = stats.bootstrap((deltas,), np.mean, confidence_level=0.95, n_resamples=N_RESAMPLES,
                              method="BCa", random_state=np.random.default_rng(BOOTSTRAP_SEED))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerate on tiny samples
            res = stats.bootstrap((deltas,), np.mean, confidence_level=0.95, n_resamples=N_RESAMPLES,
                                  method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED))
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    p = float(stats.wilcoxon(deltas).pvalue) if np.any(deltas != 0) else np.nan
    return low, high, p


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series(np.nan, index=df.index)


def _comparison(family: str) -> Comparison:
    known = {c.family: c for c in comparisons()}
    if family not in known:
        raise unknown_name("variant comparison", family, sorted(known))
    return known[family]


def comparison_table(metadata: pd.DataFrame, comparison: str | Comparison) -> pd.DataFrame:
    """One comparison's summary rows (``SUMMARY_COLUMNS``), by family name or declared form;
    empty if the set has none of it."""
    spec = comparison if isinstance(comparison, Comparison) else _comparison(comparison)
    comparison, methods, baseline = spec.family, spec.methods, spec.baseline
    if "family" not in metadata.columns:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    rows = metadata[(metadata["family"] == comparison) & metadata["variant"].isin((*methods, baseline))].copy()
    if rows.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    rows["level"] = _col(rows, "level").fillna("").astype(str)
    base_acc = rows[rows["variant"] == baseline].groupby("match_id")["test_accuracy"].mean()
    rows["delta"] = rows["test_accuracy"] - rows["match_id"].map(base_acc)
    out = []
    order = {v: i for i, v in enumerate((*methods, baseline))}
    parent_col = "parent_id" if "parent_id" in rows.columns else "task"
    for (level, variant), group in rows.groupby(["level", "variant"], sort=True):
        acc = group["test_accuracy"].astype(float)
        delta = group["delta"].astype(float) if variant != baseline else pd.Series(dtype=float)
        per_parent = delta.groupby(group[parent_col]).mean().to_numpy() if len(delta) else np.array([])
        low, high, p = paired_stats(per_parent)
        out.append({
            "comparison": comparison,
            "level": level,
            "variant": variant,
            "n_models": len(group),
            "n_parents": group[parent_col].nunique(),
            "n_tasks": group["task"].nunique(),
            "accuracy_mean": acc.mean(),
            "accuracy_std": acc.std(ddof=1) if len(acc) > 1 else 0.0,
            "delta_vs_baseline_mean": delta.mean() if delta.notna().any() else np.nan,
            "delta_vs_baseline_std": delta.std(ddof=1) if delta.notna().sum() > 1 else np.nan,
            "delta_ci95_low": low,
            "delta_ci95_high": high,
            "wilcoxon_p": p,
            "sparsity_mean": _col(group, "sparsity").astype(float).mean(),
            "flops_mean": _col(group, "flops").astype(float).mean(),
            "flops_sparse_mean": _col(group, "flops_sparse").astype(float).mean(),
            "n_params_mean": _col(group, "n_params").astype(float).mean(),
            "_order": order.get(variant, 99),
        })
    table = pd.DataFrame(out).sort_values(["level", "_order"]).drop(columns="_order")
    return table.reset_index(drop=True)[SUMMARY_COLUMNS]


def claims_table(metadata: pd.DataFrame) -> pd.DataFrame:
    """Each paper's claim beside the paired measurement, one row per (comparison, level, method).

    ``verdict``: ``"method better"`` when the 95 % interval of the paired difference lies above 0
    and the Wilcoxon test agrees (p < 0.05), ``"baseline better"`` when both say the opposite,
    ``"no difference detected"`` otherwise (the interval spans 0, or the two disagree).
    """
    out = []
    for spec in comparisons():
        if not spec.claim:
            continue
        comparison, claim = spec.family, spec.claim
        table = comparison_table(metadata, spec)
        for row in table[table["variant"].isin(spec.claim_variants)].itertuples(index=False):
            low, high = row.delta_ci95_low, row.delta_ci95_high
            significant = bool(row.wilcoxon_p < 0.05)  # False for NaN
            verdict = ("–" if np.isnan(low) else "method better" if low > 0 and significant
                       else "baseline better" if high < 0 and significant else "no difference detected")
            out.append({"comparison": comparison, "claim": claim, "level": row.level,
                        "variant": row.variant, "n_parents": row.n_parents,
                        "sparsity_mean": row.sparsity_mean, "delta_mean": row.delta_vs_baseline_mean,
                        "ci95": "–" if np.isnan(low) else f"[{low:+.4f}, {high:+.4f}]",
                        "wilcoxon_p": row.wilcoxon_p, "verdict": verdict})
    return pd.DataFrame(out, columns=["comparison", "claim", "level", "variant", "n_parents",
                                      "sparsity_mean", "delta_mean", "ci95", "wilcoxon_p", "verdict"])


def learned_summary(metadata: pd.DataFrame, spec: LearnedVector) -> pd.DataFrame:
    """A declared learned vector (e.g. shape adaptors' scales): mean ± std per position over the
    models of its variant; empty if the set has none."""
    if "variant" not in metadata.columns or spec.column not in metadata.columns:
        return pd.DataFrame()
    rows = metadata[metadata["variant"] == spec.variant]
    if rows.empty:
        return pd.DataFrame()
    values = np.array([json.loads(s) for s in rows[spec.column]], dtype=float)  # (models, positions)
    return pd.DataFrame({
        spec.item: [f"{spec.prefix}{i}" for i in range(values.shape[1])],
        f"{spec.value}_mean": values.mean(0),
        f"{spec.value}_std": values.std(0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1]),
    })


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if np.isnan(value):
            return "–"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table, accuracy shown as mean ± std."""
    if table.empty:
        return "_no models of this family in the set_\n"
    shown = table.copy()
    if "accuracy_mean" in shown.columns:
        shown.insert(shown.columns.get_loc("accuracy_mean"), "accuracy",
                     [f"{m:.4f} ± {s:.4f}" for m, s in zip(shown["accuracy_mean"], shown["accuracy_std"])])
        shown["Δ vs baseline"] = [
            "–" if np.isnan(m) else f"{m:+.4f} ± {0.0 if np.isnan(s) else s:.4f}"
            for m, s in zip(shown["delta_vs_baseline_mean"], shown["delta_vs_baseline_std"])
        ]
        shown["Δ 95% CI"] = [
            "–" if np.isnan(lo) else f"[{lo:+.4f}, {hi:+.4f}]"
            for lo, hi in zip(shown["delta_ci95_low"], shown["delta_ci95_high"])
        ]
        shown = shown.drop(columns=["accuracy_mean", "accuracy_std", "delta_vs_baseline_mean",
                                    "delta_vs_baseline_std", "delta_ci95_low", "delta_ci95_high",
                                    "comparison"])
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def plot_accuracy_vs_flops(metadata: pd.DataFrame, path: Path) -> None:
    """Scatter of test accuracy against sparsity-aware FLOPs (log scale), one colour per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for spec in comparisons() for v in spec.variants]
    rows = metadata[metadata["variant"].isin(variants)] if "variant" in metadata.columns else metadata.iloc[:0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    flops_col = "flops_sparse" if "flops_sparse" in rows.columns else "flops"
    for variant, group in rows.groupby("variant"):
        ax.scatter(group[flops_col].astype(float), group["test_accuracy"].astype(float), s=14,
                   alpha=0.7, label=f"{variant} (n={len(group)})")
    if "variant" in metadata.columns and (metadata["variant"] == "base").any() and flops_col in metadata.columns:
        base = metadata[metadata["variant"] == "base"]
        if base[flops_col].notna().any():
            ax.scatter(base[flops_col].astype(float), base["test_accuracy"].astype(float), s=30,
                       marker="x", color="black", label="base (parents)")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per example (sparsity-aware, counted)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Variants: accuracy vs FLOPs")
    ax.grid(alpha=0.3)
    if len(rows):
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_tables(metadata: pd.DataFrame, out: str | Path) -> dict[str, Path]:
    """Write every comparison as CSV, all of them as one Markdown file, and the plot.

    Returns ``{name: path}`` of the files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    sections = ["# Variant families: each method against its paper's baseline\n",
                "Accuracy is mean ± std over tasks, parents and seeds; Δ is the paired difference to "
                "the baseline twin of the same parent and seed (mean ± std), with a 95 % bootstrap "
                "interval over parents and a Wilcoxon signed-rank p-value. Method and twin share "
                "optimiser, schedule, data and steps; FLOPs and parameters of both are in the rows.\n"]
    claims = claims_table(metadata)
    _write_csv(claims, out / "claims.csv")
    written["claims"] = out / "claims.csv"
    sections += ["\n## The papers' claims, paired over parents\n",
                 to_markdown(claims) if len(claims) else "_no paired comparisons in the set_\n"]
    for spec in comparisons():
        table = comparison_table(metadata, spec)
        path = out / f"{spec.family}.csv"
        _write_csv(table, path)
        written[spec.family] = path
        sections += [f"\n## {spec.title}\n", to_markdown(table)]
    for vector in learned_vectors():
        summary = learned_summary(metadata, vector)
        if not summary.empty:
            path = out / f"{vector.name}.csv"
            _write_csv(summary, path)
            written[vector.name] = path
            sections += [f"\n## {vector.title}\n", to_markdown(summary)]
    md = out / "variants.md"
    write_text_atomic(md, "".join(s if s.endswith("\n") else s + "\n" for s in sections))
    written["markdown"] = md
    plot = out / "accuracy_vs_flops.png"
    plot_accuracy_vs_flops(metadata, plot)
    written["plot"] = plot
    log.info("variant tables written to %s", out)
    return written
