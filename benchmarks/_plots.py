"""Matplotlib figures of the leaderboard, each returned as a base64 PNG so the HTML page needs no
other file and no network. Every drawing function takes plain data read from result files.

``FIGURES`` holds the figure kinds a track may declare (``TrackMeta.plots``): each reads one
track's result files (the curves its kind names) and returns ``(title, caption, png)``, or None
when the files hold nothing to draw."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from modelset.registry import Registry  # noqa: E402

if TYPE_CHECKING:
    from benchmarks.results import Result
    from benchmarks.tracks import Plot

_STYLE = {"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9}


def _encode(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _styles(names: list[str]) -> dict[str, dict[str, Any]]:
    cmap = plt.get_cmap("tab20")
    return {n: {"color": cmap(i % 20), "linestyle": "-" if i < 10 else "--"} for i, n in enumerate(names)}


def roc_curves(curves: dict[str, dict[str, list[float]]], aucs: dict[str, float | None]) -> str:
    """One ROC curve per method: ``curves[method] = {"fpr": [...], "tpr": [...]}``."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        styles = _styles(sorted(curves))
        for name in sorted(curves):
            auc = aucs.get(name)
            label = f"{name} ({auc:.3f})" if auc is not None else name
            ax.plot(curves[name]["fpr"], curves[name]["tpr"], label=label, **styles[name])
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Pair verification ROC (held-out models)")
        ax.legend(fontsize=7, loc="lower right")
        return _encode(fig)


def cmc_curves(curves: dict[str, dict[str, list[float]]]) -> str:
    """One CMC curve per method: ``curves[method] = {"rank": [...], "hit_rate": [...]}``."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        styles = _styles(sorted(curves))
        for name in sorted(curves):
            ax.plot(curves[name]["rank"], curves[name]["hit_rate"], marker="o", ms=3, label=name, **styles[name])
        ax.set(xlabel="rank k", ylabel="queries with a match in top k", title="Retrieval CMC (held-out tasks)", ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="lower right")
        return _encode(fig)


def task_matrices(tasks: list[str], truth: dict[str, list[list[float]]], methods: dict[str, list[list[float]]]) -> str:
    """Ground-truth relation matrices first, then each method's task × task similarity."""
    panels = [(f"truth: {k}", np.asarray(v)) for k, v in sorted(truth.items())]
    panels += [(k, np.asarray(v)) for k, v in sorted(methods.items())]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (title, matrix) in zip(axes.flat, panels):
            ax.axis("on")
            im = ax.imshow(matrix, cmap="viridis")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(f"Task × task similarity ({len(tasks)} tasks)", fontsize=10)
        return _encode(fig)


def embedding_map(method: str, points: dict[str, list]) -> str:
    """2-D PCA map ``points = {"x", "y", "task"}`` coloured by task."""
    tasks = np.asarray(points["task"])
    names = sorted(set(tasks.tolist()))
    cmap = plt.get_cmap("tab20")
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6, 5))
        x, y = np.asarray(points["x"]), np.asarray(points["y"])
        for i, t in enumerate(names):
            sel = tasks == t
            ax.scatter(x[sel], y[sel], s=18, color=cmap(i % 20), label=t, alpha=0.85)
        ax.set(title=f"{method}: embeddings of test models (PCA), coloured by task", xlabel="PC 1", ylabel="PC 2")
        if len(names) <= 24:
            ax.legend(fontsize=6, ncol=2, loc="best", markerscale=0.8)
        return _encode(fig)


def tradeoff(points: dict[str, dict[str, list[float]]]) -> str:
    """Accuracy against FLOPs per variant family: each model a dot, each family's mean a cross."""
    cmap = plt.get_cmap("tab10")
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for i, family in enumerate(sorted(points)):
            f = np.asarray(points[family]["flops"], dtype=float) / 1e6
            a = np.asarray(points[family]["accuracy"], dtype=float)
            color = "black" if family == "base" else cmap(i % 10)
            ax.scatter(f, a, s=10, alpha=0.35, color=color)
            ax.scatter([f.mean()], [a.mean()], s=90, marker="X", color=color, edgecolor="white", label=f"{family} (n={len(f)})")
        ax.set(xlabel="MFLOPs per input", ylabel="test accuracy", title="Variants: accuracy vs FLOPs")
        ax.legend(fontsize=7, loc="best")
        return _encode(fig)


def few_shot_bars(per_method: dict[str, dict[str, tuple[float, float]]]) -> str:
    """Few-shot accuracy per method and context with 95 % intervals."""
    methods = sorted(per_method)
    contexts = sorted({c for v in per_method.values() for c in v})
    width = 0.8 / max(1, len(contexts))
    cmap = plt.get_cmap("Set2")
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(methods) + 2), 4))
        for j, context in enumerate(contexts):
            means = [per_method[m].get(context, (np.nan, np.nan))[0] for m in methods]
            errs = [per_method[m].get(context, (np.nan, np.nan))[1] for m in methods]
            xs = np.arange(len(methods)) + j * width
            ax.bar(xs, means, width, yerr=np.nan_to_num(errs), label=context, color=cmap(j), capsize=2)
        ax.set_xticks(np.arange(len(methods)) + width * (len(contexts) - 1) / 2)
        ax.set_xticklabels(methods, rotation=35, ha="right")
        ax.set(ylabel="episode accuracy", title="Flexible few-shot accuracy by grouping context (95% CI)", ylim=(0, 1.05))
        ax.legend(fontsize=7)
        return _encode(fig)


# -- figure kinds: one track's result files -> (title, caption, png) ---------------------------
Figure = tuple[str, str, str]
FIGURES: Registry[Callable[[list[Result], Plot], Figure | None]] = Registry("leaderboard figure kind")


def _first_fold(results: list[Result]) -> dict[str, Result]:
    """Per method, its ok result with the lowest fold (curves are shown for one fold)."""
    out: dict[str, Result] = {}
    for r in sorted(results, key=lambda r: r.fold):
        if r.status == "ok":
            out.setdefault(r.method, r)
    return out


@FIGURES.register("roc")
def _roc(results: list[Result], plot: Plot) -> Figure | None:
    """ROC curves (``curves["roc"]``), the legend showing ``plot.metric`` of each method."""
    first = _first_fold(results)
    if not first:
        return None
    curves = {m: r.curves["roc"] for m, r in first.items() if r.curves.get("roc")}
    scores = {m: r.metrics.get(plot.metric) for m, r in first.items()}
    fold = min(r.fold for r in first.values())
    return plot.title.format(fold=fold), plot.caption.format(fold=fold), roc_curves(curves, scores)


@FIGURES.register("cmc")
def _cmc(results: list[Result], plot: Plot) -> Figure | None:
    """CMC curves (``curves["cmc"]``)."""
    first = _first_fold(results)
    if not first:
        return None
    curves = {m: r.curves["cmc"] for m, r in first.items() if r.curves.get("cmc")}
    fold = min(r.fold for r in first.values())
    return plot.title.format(fold=fold), plot.caption.format(fold=fold), cmc_curves(curves)


@FIGURES.register("embedding_map")
def _embedding_map(results: list[Result], plot: Plot) -> Figure | None:
    """The 2-D embedding map (``curves["map2d"]``) of one method: the first of ``plot.prefer``
    that has one, else the first learned method by name."""
    first = _first_fold(results)
    chosen = next((m for m in plot.prefer if m in first and first[m].curves.get("map2d")), None)
    if chosen is None:
        chosen = next((m for m, r in sorted(first.items()) if r.method_meta.get("learned") and r.curves.get("map2d")), None)
    if chosen is None:
        return None
    fold = first[chosen].fold
    return (plot.title.format(fold=fold, method=chosen), plot.caption.format(fold=fold, method=chosen),
            embedding_map(chosen, first[chosen].curves["map2d"]))


@FIGURES.register("task_matrices")
def _task_matrices(results: list[Result], plot: Plot) -> Figure | None:
    """Ground-truth relation matrices (``curves["truth"]``) beside each method's (``curves["matrix"]``)."""
    first = _first_fold(results)
    if not first:
        return None
    any_r = next(iter(first.values()))
    matrices = {m: r.curves["matrix"] for m, r in first.items() if r.curves.get("matrix")}
    fold = min(r.fold for r in first.values())
    return (plot.title.format(fold=fold), plot.caption.format(fold=fold),
            task_matrices(any_r.curves.get("tasks", []), any_r.curves.get("truth", {}), matrices))


@FIGURES.register("tradeoff")
def _tradeoff(results: list[Result], plot: Plot) -> Figure | None:
    """Accuracy against FLOPs (``curves["tradeoff"]``: the model table, the same in every file)."""
    found = next((r for r in results if r.status == "ok" and r.curves.get("tradeoff")), None)
    if found is None:
        return None
    return plot.title.format(fold=found.fold), plot.caption.format(fold=found.fold), tradeoff(found.curves["tradeoff"])


@FIGURES.register("few_shot_bars")
def _few_shot(results: list[Result], plot: Plot) -> Figure | None:
    """Accuracy per grouping context with its interval (``curves["per_context"]``)."""
    first = _first_fold(results)
    if not first:
        return None
    per = {m: {c: (v["accuracy"], v["ci95"]) for c, v in r.curves.get("per_context", {}).items()} for m, r in first.items()}
    fold = min(r.fold for r in first.values())
    return plot.title.format(fold=fold), plot.caption.format(fold=fold), few_shot_bars(per)
