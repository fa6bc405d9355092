"""The leaderboard: a pure function of the result files.

``render(results_dir, out_dir)`` reads every result file and writes ``leaderboard.csv`` (one row per
method: for each track's primary metrics the mean over held-out tasks, its 95 % bootstrap interval
and the p-value against the column's best method), ``leaderboard.md`` (the main table, LPS against
the best weight-only baseline, method cards, per-track details) and a self-contained
``leaderboard.html`` (the same tables and the plots as base64 PNGs with inline CSS: it opens
without network). Nothing is recomputed from the model set, so re-running one method re-renders
without touching the others.

Statistics: the unit is the task (independent across folds, since every task is held out once);
a unit's value is averaged over the folds that score it. Intervals are percentile bootstraps over
units; "not significantly different from the best" is a two-sided Wilcoxon signed-rank test over
the units both methods were scored on, at p ≥ 0.05.
"""

from __future__ import annotations

import html
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _plots, metrics
from benchmarks.results import Result, load_results
from benchmarks.tracks import TrackError, TrackMeta, get_track, list_tracks
from modelset._atomic import write_text_atomic

log = logging.getLogger(__name__)

#: Below this test-retest reliability a ground truth is flagged as not reproducible.
RELIABLE = 0.5


@dataclass(frozen=True)
class Cell:
    """One method × metric: the mean over units (held-out tasks, pooled over folds) with its 95 %
    bootstrap interval, the per-unit values behind it, or why there is none."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    status: str  # "ok", "n/a", "failed", "missing"
    unit: str = "task"
    units: tuple[tuple[str, float], ...] = ()

    def text(self, digits: int = 3) -> str:
        if self.status != "ok" or self.mean is None:
            return {"n/a": "n/a", "failed": "failed"}.get(self.status, "—")
        if self.low is not None and self.high is not None and self.n > 1:
            return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return f"{self.mean:.{digits}f}"

    def values(self) -> dict[str, float]:
        return dict(self.units)


def _meta(results: list[Result], track: str) -> TrackMeta | None:
    """How ``track`` is shown: its registered metadata, else (a track this code does not know)
    the metadata its result files recorded, without labels, plots or a place of its own."""
    if track in list_tracks():
        return get_track(track).meta
    recorded = next((r.track_meta for r in results if r.track == track), None)
    if recorded is None:
        return None
    try:
        return TrackMeta(**{**recorded, "order": math.inf})
    except (TypeError, TrackError):
        return None


def _track_rank(track: str) -> tuple[float, str]:
    """Leaderboard place of ``track``: its declared order, then its name; unknown tracks last."""
    meta = get_track(track).meta if track in list_tracks() else None
    return (meta.order if meta is not None else math.inf, track)


def _columns(results: list[Result]) -> list[tuple[str, str]]:
    """(track, metric) of every primary metric, tracks in leaderboard order."""
    primary: dict[str, list[str]] = {}
    for r in results:
        primary.setdefault(r.track, list(r.track_meta.get("primary", [])))
    return [(t, m) for t in sorted(primary, key=_track_rank) for m in primary[t]]


def unit_values(rs: list[Result], metric: str) -> tuple[str, dict[str, float]]:
    """Per-unit values of ``metric`` over the ok results ``rs`` of one method and track: each
    unit's values averaged over the folds that score it. A result without per-unit values counts
    as one unit (its fold)."""
    pooled: dict[str, list[float]] = defaultdict(list)
    kind = "task"
    for r in rs:
        if r.status != "ok":
            continue
        per = r.curves.get("per_unit") or {}
        column = (per.get("metrics") or {}).get(metric)
        if column is not None and len(column) == len(per.get("ids", [])):
            kind = str(per.get("unit", "task"))
            for uid, v in zip(per["ids"], column):
                if v is not None and math.isfinite(float(v)):
                    pooled[str(uid)].append(float(v))
        elif r.metrics.get(metric) is not None:
            kind = "fold"
            pooled[f"fold{r.fold}"].append(float(r.metrics[metric]))
    return kind, {u: float(np.mean(v)) for u, v in sorted(pooled.items())}


def _cell(rs: list[Result], metric: str) -> Cell:
    kind, units = unit_values(rs, metric)
    if units:
        mean, low, high = metrics.bootstrap_ci(list(units.values()))
        finite = [x if math.isfinite(x) else None for x in (low, high)]
        return Cell(mean, finite[0], finite[1], len(units), "ok", kind, tuple(units.items()))
    if any(r.status == "ok" for r in rs):  # ran, but the metric is undefined (a constant scorer's τ)
        return Cell(None, None, None, 0, "ok")
    statuses = {r.status for r in rs}
    if "failed" in statuses:
        return Cell(None, None, None, 0, "failed")
    if statuses == {"not_applicable"}:
        return Cell(None, None, None, 0, "n/a")
    return Cell(None, None, None, 0, "missing")


def _methods(results: list[Result]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        out.setdefault(r.method, r.method_meta)
    return out


#: Row order, columns and cells of the main table, as :func:`table` returns them.
Board = tuple[list[str], list[tuple[str, str]], dict[tuple[str, str, str], Cell]]


def table(results: list[Result]) -> Board:
    """Row order (methods), columns and cells ``(method, track, metric) -> Cell`` of the main table.

    Methods are sorted by their mean rank over the columns they have; controls last.
    """
    columns = _columns(results)
    grouped: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        grouped[(r.method, r.track)].append(r)
    metas = _methods(results)
    cells = {(m, t, k): _cell(grouped.get((m, t), []), k) for m in metas for t, k in columns}
    ranks: dict[str, list[float]] = defaultdict(list)
    for t, k in columns:
        lower = any(k in r.track_meta.get("lower_is_better", []) for r in results if r.track == t)
        vals = {m: cells[(m, t, k)].mean for m in metas if cells[(m, t, k)].mean is not None}
        if not vals:
            continue
        order = sorted(vals, key=lambda m: vals[m] if lower else -vals[m])
        for i, m in enumerate(order):
            ranks[m].append(i)
    methods = sorted(
        metas,
        key=lambda m: (_is_control(metas[m]), np.mean(ranks[m]) if ranks[m] else math.inf, m),
    )
    return methods, columns, cells


def _is_control(meta: dict[str, Any]) -> bool:
    return bool(meta.get("control") or meta.get("privileged"))


def _lower(results: list[Result], track: str, metric: str) -> bool:
    return any(metric in r.track_meta.get("lower_is_better", []) for r in results if r.track == track)


def _paired(a: Cell, b: Cell) -> tuple[np.ndarray, np.ndarray]:
    """Values of the units both cells have, aligned."""
    va, vb = a.values(), b.values()
    common = sorted(set(va) & set(vb))
    return np.asarray([va[u] for u in common]), np.asarray([vb[u] for u in common])


def significance(methods: list[str], columns: list[tuple[str, str]], cells: dict, results: list[Result]) -> dict[tuple[str, str, str], float]:
    """Per column, the best non-control method (p = 1.0) and every other non-control method's
    p-value against it: Wilcoxon signed-rank test over the units both were scored on."""
    metas = _methods(results)
    out: dict[tuple[str, str, str], float] = {}
    for t, k in columns:
        lower = _lower(results, t, k)
        vals = {m: cells[(m, t, k)].mean for m in methods if cells[(m, t, k)].mean is not None and not _is_control(metas[m])}
        if not vals:
            continue
        best = min(vals, key=vals.get) if lower else max(vals, key=vals.get)
        for m in vals:
            if m == best:
                out[(m, t, k)] = 1.0
                continue
            a, b = _paired(cells[(best, t, k)], cells[(m, t, k)])
            out[(m, t, k)] = metrics.paired_test(a, b) if len(a) >= 2 else float("nan")
    return out


def _best(methods: list[str], columns: list[tuple[str, str]], cells: dict, results: list[Result]) -> set[tuple[str, str, str]]:
    """The best cell per column among non-control methods and every cell not significantly
    different from it (paired test, p ≥ 0.05): bold in the tables."""
    alpha = 1 - metrics.CONFIDENCE
    return {key for key, p in significance(methods, columns, cells, results).items() if not (p < alpha)}


def access(meta: dict[str, Any]) -> str:
    """How a method reaches a model: ``weights`` (parameters only), ``forward`` (its outputs on
    inputs the method makes, no task data) or ``data`` (task data); results written before the
    field existed say it through ``needs_data``."""
    return str(meta.get("access") or ("data" if meta.get("needs_data") else "weights"))


def weight_only(meta: dict[str, Any]) -> bool:
    """A baseline that reads parameters only: not a control, not a proposed method."""
    return not _is_control(meta) and access(meta) == "weights" and not meta.get("proposed")


def proposed_method(results: list[Result]) -> str | None:
    """The method the board is about: the first (by name) whose metadata says ``proposed``."""
    names = sorted(m for m, meta in _methods(results).items() if meta.get("proposed"))
    return names[0] if names else None


def lps_versus_baseline(results: list[Result], method: str | None = None, board: Board | None = None) -> list[dict[str, Any]]:
    """Per track (first primary metric): ``method`` (default: :func:`proposed_method`) minus the
    best weight-only baseline, with the 95 % bootstrap interval of the paired difference over units
    and the Wilcoxon p-value. ``board``: the main table already computed from ``results``."""
    methods, columns, cells = board or table(results)
    metas = _methods(results)
    method = method or proposed_method(results)
    out = []
    seen = set()
    for t, k in columns:
        if t in seen or (method, t, k) not in cells or cells[(method, t, k)].mean is None:
            continue
        seen.add(t)
        lower = _lower(results, t, k)
        rivals = {m: cells[(m, t, k)].mean for m in methods if m != method and weight_only(metas[m]) and cells[(m, t, k)].mean is not None}
        if not rivals:
            continue
        rival = min(rivals, key=rivals.get) if lower else max(rivals, key=rivals.get)
        a, b = _paired(cells[(method, t, k)], cells[(rival, t, k)])
        if len(a) == 0:
            continue
        diff, low, high = metrics.bootstrap_ci(a - b)
        out.append({"track": t, "metric": k, "method": method, "baseline": rival, "difference": diff, "low": low, "high": high,
                    "p_value": metrics.paired_test(a, b), "units": len(a), "unit": cells[(method, t, k)].unit,
                    "lower_is_better": lower})
    return out


def _reliability_metric(results: list[Result], track: str) -> str:
    meta = _meta(results, track)
    return meta.reliability if meta is not None else ""


def reliability(results: list[Result]) -> dict[str, float]:
    """Per track, the test-retest reliability of its ground truth, where the track declares a
    metric for it (``TrackMeta.reliability``) and records it."""
    metric = {t: _reliability_metric(results, t) for t in {r.track for r in results}}
    out = {}
    for r in results:
        v = r.metrics.get(metric[r.track]) if r.status == "ok" and metric[r.track] else None
        if v is not None:
            out.setdefault(r.track, float(v))
    return out


def leaderboard_frame(results: list[Result], board: Board | None = None) -> pd.DataFrame:
    """The CSV table: one row per method, ``{track}.{metric}.mean/.low/.high/.n/.p/.status``
    columns plus metadata (``.p``: paired test against the column's best method)."""
    methods, columns, cells = board = board or table(results)
    metas = _methods(results)
    pvalues = significance(methods, columns, cells, results)
    rows = []
    for m in methods:
        row: dict[str, Any] = {
            "method": m,
            "learned": bool(metas[m].get("learned")),
            "needs_data": bool(metas[m].get("needs_data")),
            "access": access(metas[m]),
            "privileged": bool(metas[m].get("privileged")),
            "control": _is_control(metas[m]),
            "folds": len({r.fold for r in results if r.method == m}),
        }
        for t, k in columns:
            c = cells[(m, t, k)]
            row[f"{t}.{k}.mean"] = c.mean
            row[f"{t}.{k}.low"] = c.low
            row[f"{t}.{k}.high"] = c.high
            row[f"{t}.{k}.n"] = c.n
            row[f"{t}.{k}.p"] = pvalues.get((m, t, k))
            row[f"{t}.{k}.status"] = c.status
        rows.append(row)
    return pd.DataFrame(rows)


def _header(t: str, k: str, reliable: dict[str, float] | None = None, results: list[Result] | None = None) -> str:
    meta = _meta(results or [], t)
    label = meta.label(k) if meta is not None else f"{t}.{k}"
    value = (reliable or {}).get(t)
    if value is not None and value < RELIABLE:
        label += " (ground truth not reproducible)"
    return label


def _notes(results: list[Result], board: Board) -> list[str]:
    """Sentences under the main table: ground-truth reliability and LPS against the baselines."""
    lines = []
    for track, value in sorted(reliability(results).items(), key=lambda x: _track_rank(x[0])):
        verdict = "reproducible" if value >= RELIABLE else f"below {RELIABLE}: not reproducible, read the column with care"
        lines.append(f"Ground truth of `{track}`: test–retest reliability {value:.3f} (Spearman–Brown over two independent halves; {verdict}).")
    for row in lps_versus_baseline(results, board=board):
        better = "lower is better" if row["lower_is_better"] else "higher is better"
        lines.append(
            f"{row['method']} − {row['baseline']} on `{row['track']}` {row['metric']} ({better}): {row['difference']:+.3f} "
            f"[{row['low']:+.3f}, {row['high']:+.3f}], Wilcoxon p = {row['p_value']:.3g} over {row['units']} {row['unit']}s."
        )
    return lines


def _not_applicable(results: list[Result]) -> dict[str, str]:
    out = {}
    for r in results:
        if r.status == "not_applicable":
            out.setdefault(r.track, r.reason)
    return out


def _details(results: list[Result]) -> dict[str, pd.DataFrame]:
    """Per track: methods × every reported metric (mean [95 % interval] text)."""
    out = {}
    for track in sorted({r.track for r in results}, key=_track_rank):
        rs = [r for r in results if r.track == track and r.status == "ok"]
        if not rs:
            continue
        hidden = _reliability_metric(results, track)  # noted under the main table instead
        metric_names = sorted({k for r in rs for k in r.metrics if k != hidden})
        rows = {}
        for m in sorted({r.method for r in rs}):
            mine = [r for r in rs if r.method == m]
            rows[m] = {k: _cell(mine, k).text() for k in metric_names}
        out[track] = pd.DataFrame.from_dict(rows, orient="index")
    return out


def markdown(results: list[Result], board: Board | None = None) -> str:
    """The leaderboard as Markdown: main table, notes, method cards, per-track details."""
    methods, columns, cells = board = board or table(results)
    best = _best(methods, columns, cells, results)
    metas = _methods(results)
    zoo = results[0].zoo if results else {}
    folds = sorted({r.fold for r in results})
    reliable = reliability(results)
    controls = [m for m in methods if metas[m].get("control")]
    by_model = bool(results) and all(not r.split.get("heldout_tasks") and r.split.get("heldout_model_ids") for r in results)
    if by_model:  # a set with too few tasks for task folds (an imported zoo): its models are held out
        protocol, unit_text = "model folds", "held-out units (a task's held-out models in one fold)"
        held_out = "every model is held out in exactly one fold"
    else:
        protocol, unit_text = "task folds", "held-out tasks"
        held_out = "every task is held out in exactly one fold"
    lines = [
        "# ModelSet leaderboard",
        "",
        f"Model set **{zoo.get('name', '?')}** ({zoo.get('models', '?')} models, SHA256SUMS digest "
        f"`{str(zoo.get('sha256sums_sha256', ''))[:12]}`), {protocol} {folds}, from {len(results)} result files. "
        f"Each cell: mean over {unit_text} [95 % bootstrap interval]; {held_out} and learned methods are fit on "
        "that fold's training models only. Bold: the best non-control "
        "method of the column and every method not significantly different from it (two-sided Wilcoxon "
        f"signed-rank test over tasks, p ≥ 0.05). Controls ({', '.join(controls) or 'none'}) are listed "
        "last; † marks methods that read the task labels. Access: `weights` reads parameters only, `forward` "
        "runs the models on inputs the method makes itself (weights through forward passes, no task data), "
        "`data` runs them on task data.",
        "",
    ]
    header = ["method", "learned", "access"] + [_header(t, k, reliable, results) for t, k in columns]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|")
    for m in methods:
        meta = metas[m]
        name = f"{m} †" if meta.get("privileged") else m
        row = [name, "yes" if meta.get("learned") else "no", access(meta)]
        for t, k in columns:
            text = cells[(m, t, k)].text()
            row.append(f"**{text}**" if (m, t, k) in best else text)
        lines.append("| " + " | ".join(row) + " |")
    notes = _notes(results, board)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    na = _not_applicable(results)
    if na:
        lines += ["", "Tracks not applicable to this model set:", ""]
        lines += [f"- `{t}`: {reason}" for t, reason in sorted(na.items(), key=lambda x: _track_rank(x[0]))]
    failed = sorted({(r.method, r.track) for r in results if r.status == "failed"})
    if failed:
        lines += ["", "Failed (re-run `python -m benchmarks run` to retry): " + ", ".join(f"{m}/{t}" for m, t in failed)]
    lines += ["", "## Methods", "", "| method | learned | access | invariances | reference | fit s (mean) |", "|---|---|---|---|---|---:|"]
    for m in methods:
        meta = metas[m]
        fits = [r.timing.get("fit_seconds", 0.0) for r in results if r.method == m]
        lines.append(
            f"| {m} | {'yes' if meta.get('learned') else 'no'} | {access(meta)} | "
            f"{', '.join(meta.get('invariances', [])) or '—'} | {meta.get('reference', '')} | {np.mean(fits) if fits else 0:.1f} |"
        )
    for track, frame in _details(results).items():
        desc = next((r.track_meta.get("description", "") for r in results if r.track == track), "")
        lines += ["", f"## {track}", "", desc, "", frame.to_markdown() if _has_tabulate() else _plain_md(frame)]
    return "\n".join(lines) + "\n"


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _plain_md(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    out = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for idx, row in frame.iterrows():
        out.append(f"| {idx} | " + " | ".join(str(v) for v in row.tolist()) + " |")
    return "\n".join(out)


def figures(results: list[Result]) -> list[tuple[str, str, str]]:
    """``(title, caption, base64 PNG)`` of every plot the tracks declare (``TrackMeta.plots``) and
    their result files support, tracks in leaderboard order."""
    out = []
    for track in sorted({r.track for r in results}, key=_track_rank):
        meta = _meta(results, track)
        mine = [r for r in results if r.track == track]
        for plot in meta.plots if meta is not None else ():
            figure = _plots.FIGURES.get(plot.kind)(mine, plot)
            if figure is not None:
                out.append(figure)
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #ddd;padding:.3em .6em}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}td.best{font-weight:bold;background:#eef7ee}
tr.control td{color:#777}figure{margin:1.2em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%;border:1px solid #eee}.note{font-size:.85em;color:#555}
"""


def html_page(results: list[Result], board: Board | None = None) -> str:
    """The self-contained HTML leaderboard (inline CSS, base64 PNG plots, no scripts)."""
    methods, columns, cells = board = board or table(results)
    best = _best(methods, columns, cells, results)
    metas = _methods(results)
    zoo = results[0].zoo if results else {}
    reliable = reliability(results)
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ModelSet leaderboard</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ModelSet leaderboard</h1>",
        f"<p class='note'>Model set <b>{esc(str(zoo.get('name', '?')))}</b> ({esc(str(zoo.get('models', '?')))} models), "
        f"task folds {sorted({r.fold for r in results})}, {len(results)} result files, the newest from "
        f"{esc(max(r.created for r in results))}. Each cell: mean over held-out tasks [95 % bootstrap interval]. "
        "Bold: the best non-control method and every method not significantly different from it "
        "(two-sided Wilcoxon signed-rank test over tasks, p ≥ 0.05); controls (grey) are listed last. "
        "† reads the task labels.</p>",
        "<h2>Main table</h2><table><tr><th>method</th><th>learned</th><th>access</th>",
    ]
    parts += [f"<th>{esc(_header(t, k, reliable, results))}</th>" for t, k in columns]
    parts.append("</tr>")
    for m in methods:
        meta = metas[m]
        cls = " class='control'" if _is_control(meta) else ""
        parts.append(f"<tr{cls}><td>{esc(m)}{' †' if meta.get('privileged') else ''}</td>"
                     f"<td>{'yes' if meta.get('learned') else 'no'}</td><td>{esc(access(meta))}</td>")
        for t, k in columns:
            klass = "num best" if (m, t, k) in best else "num"
            parts.append(f"<td class='{klass}'>{esc(cells[(m, t, k)].text())}</td>")
        parts.append("</tr>")
    parts.append("</table>")
    notes = _notes(results, board)
    if notes:
        parts.append("<ul class='note'>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    na = _not_applicable(results)
    if na:
        parts.append("<p class='note'>Not applicable to this model set: " + "; ".join(
            f"<code>{esc(t)}</code>: {esc(reason)}" for t, reason in sorted(na.items(), key=lambda x: _track_rank(x[0]))) + "</p>")
    for title, caption, png in figures(results):
        parts.append(f"<h2>{esc(title)}</h2><figure><img alt='{esc(title)}' src='data:image/png;base64,{png}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("<h2>Methods</h2><table><tr><th>method</th><th>learned</th><th>access</th><th>invariances</th><th>reference</th></tr>")
    for m in methods:
        meta = metas[m]
        parts.append(f"<tr><td>{esc(m)}</td><td>{'yes' if meta.get('learned') else 'no'}</td>"
                     f"<td>{esc(access(meta))}</td><td>{esc(', '.join(meta.get('invariances', [])) or '—')}</td>"
                     f"<td>{esc(meta.get('reference', ''))}</td></tr>")
    parts.append("</table>")
    for track, frame in _details(results).items():
        parts.append(f"<h2>{esc(track)}: all metrics</h2>")
        parts.append(frame.to_html(classes="details", border=0, na_rep="—"))
    parts.append("</body></html>")
    return "\n".join(parts)


def render(
    results_dir: str | os.PathLike, out_dir: str | os.PathLike, methods: list[str] | None = None
) -> dict[str, Path]:
    """Write ``leaderboard.csv``, ``leaderboard.md`` and ``leaderboard.html`` into ``out_dir``
    from the result files of ``results_dir`` alone (only ``methods``' if given); returns their paths."""
    results = load_results(results_dir)
    if methods:
        results = [r for r in results if r.method in set(methods)]
    if not results:
        raise FileNotFoundError(f"{results_dir}: no result files (run `python -m benchmarks run` first)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "leaderboard.csv", "md": out / "leaderboard.md", "html": out / "leaderboard.html"}
    board = table(results)  # bootstrap intervals for every cell: computed once for all three files
    write_text_atomic(paths["csv"], leaderboard_frame(results, board).to_csv(index=False))
    write_text_atomic(paths["md"], markdown(results, board))
    write_text_atomic(paths["html"], html_page(results, board))
    log.info("leaderboard of %d result files written to %s", len(results), out)
    return paths
