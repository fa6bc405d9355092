"""Track: flexible few-shot (Ren, Liao, Fetaya, Zemel, "Flexible Few-Shot Learning with Contextual
Similarity", 2020).

The models outside training can be grouped in several ways that cut across each other; each
episode first draws one such *context*, then ``n_way`` of its classes with ``k_shot`` support and
up to ``n_query`` query models each. Contexts:

- ``label_set``: the task's class tuple (tasks of one label set differ in input domain);
- ``domain``: the task's input domain (tasks of one domain differ in label set);
- ``variant``: the variant family (``base``, ``str``, ``nsl_full``, ...), across tasks and domains.

The support set is the only hint of which context applies: with one shot it cannot tell (a
support model carries every attribute at once), with five shots the shared attribute shows. Both
are scored (``k_shots``, default 1 and 5). A prototype classifier on the method's frozen
embeddings (mean of unit-norm support embeddings, cosine to each prototype; mean support
similarity for methods without embeddings) labels the queries; ties break at random.

Per context and shot: accuracy, its chance (mean over episodes of ``1 / ways``) and its oracle
(the same classifier on the context's one-hot ground-truth attribute, on the same episodes). The
headline ``flex_score`` normalises each query's correctness by its episode's chance and oracle,
``(correct - chance) / (oracle - chance)``, averages it per (context, shot) cell, then over cells:
0 at chance, 1 at the oracle in every context, and it rises with accuracy in any context — a
method right about one grouping but blind to another is not pulled below chance by the other.

Units (``curves["per_unit"]``): the task each query model belongs to (held-out models of seen tasks
and models of held-out tasks); a unit's ``flex_score`` and ``accuracy`` are computed from its own
queries, and the aggregates are the means over units. Episodes depend on the split and seed only,
so every method sees the same ones.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._registry import Plot, Track, TrackMeta, register_track, test_ids
from lps.splits import Split
from modelset.reader import ModelSet

CONTEXTS = ("label_set", "domain", "variant")


def context_labels(ms: ModelSet, ids: list[str]) -> dict[str, np.ndarray]:
    """For each grouping context the set can give, the label ``(n,)`` of each model in ``ids``."""
    table = ms.metadata.loc[ids]
    task = table["task"].astype(str).to_numpy()
    out: dict[str, np.ndarray] = {}
    tasks = ms.tasks
    if "classes" in tasks.columns:
        label_set = {str(t): str(tuple(int(c) for c in (json.loads(v) if isinstance(v, str) else v)))
                     for t, v in tasks["classes"].items()}
        out["label_set"] = np.array([label_set.get(t, "?") for t in task])
    if "domain" in tasks.columns:
        domain = tasks["domain"].astype(str)
        if "domain_kwargs" in tasks.columns:
            domain = domain + ":" + tasks["domain_kwargs"].astype(str)
        out["domain"] = np.array([domain.get(t, "?") for t in task])
    if "variant" in table.columns:
        out["variant"] = table["variant"].astype(str).to_numpy()
    return out


def draw_episodes(
    labels: dict[str, np.ndarray], n_way: int, k_shot: int, n_query: int, n_episodes: int, seed: int
) -> list[dict[str, Any]]:
    """Episodes ``{context, support (N, K), query (M,), query_label (M,)}`` of model positions.

    A context takes part when at least two of its classes have ``k_shot + 1`` models; contexts are
    drawn uniformly among those. Contexts are the keys of ``labels`` (any names).
    """
    rng = np.random.default_rng(seed)
    eligible = {}
    for context in sorted(labels):
        values, counts = np.unique(labels[context], return_counts=True)
        classes = values[counts >= k_shot + 1]
        if len(classes) >= 2:
            eligible[context] = classes
    episodes = []
    names = sorted(eligible)
    for _ in range(n_episodes if names else 0):
        context = names[rng.integers(len(names))]
        classes = rng.choice(eligible[context], size=min(n_way, len(eligible[context])), replace=False)
        support, query, query_label = [], [], []
        for c, cls in enumerate(classes):
            members = rng.permutation(np.flatnonzero(labels[context] == cls))
            support.append(members[:k_shot])
            q = members[k_shot : k_shot + n_query]
            query.extend(q.tolist())
            query_label.extend([c] * len(q))
        episodes.append({"context": context, "support": np.stack(support), "query": np.array(query),
                         "query_label": np.array(query_label)})
    return episodes


def prototype_predict(ep: dict[str, Any], emb: np.ndarray | None, sim: np.ndarray | None) -> np.ndarray:
    """Predicted class ``(M,)`` of an episode's queries: cosine to unit-norm prototypes of ``emb``
    ``(n, d)`` (rows unit-norm), or mean similarity to the supports in ``sim`` ``(n, n)``."""
    if emb is not None:
        protos = emb[ep["support"]].mean(axis=1)
        protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
        scores = emb[ep["query"]] @ protos.T
    else:
        scores = np.stack([sim[np.ix_(ep["query"], s)].mean(axis=1) for s in ep["support"]], axis=1)
    # Ties (e.g. a constant scorer) are broken at random, not towards class 0.
    scores = scores + 1e-9 * np.random.default_rng(0).random(scores.shape)
    return scores.argmax(axis=1)


def one_hot(labels: np.ndarray) -> np.ndarray:
    """Unit-norm one-hot rows ``(n, classes)`` of ``labels`` ``(n,)``: the context's oracle embedding."""
    _, inverse = np.unique(labels, return_inverse=True)
    out = np.zeros((len(labels), inverse.max() + 1))
    out[np.arange(len(labels)), inverse] = 1.0
    return out


@register_track
class FewShot(Track):
    meta = TrackMeta(
        name="few_shot",
        description="flexible few-shot: cross-cutting contexts (label set, domain, variant), 1- and 5-shot "
                    "episodes; accuracy per context with chance and oracle; flex_score normalised per context",
        primary=("flex_score", "accuracy"),
        reference="Ren, Liao, Fetaya, Zemel 2020, Flexible Few-Shot Learning with Contextual Similarity (arXiv 2012.05895)",
        config={"n_way": 5, "k_shots": [1, 5], "n_query": 5, "episodes": 300},
        labels={"flex_score": "few-shot score", "accuracy": "few-shot acc"},
        order=60,
        plots=(Plot("few_shot_bars", "Flexible few-shot", "Episode accuracy by grouping context with 95% intervals."),),
    )

    def _pool(self, ms: ModelSet, split: Split) -> list[str]:
        return sorted(set(test_ids(split)))

    def _episodes(self, ms: ModelSet, split: Split) -> tuple[list[str], dict[str, np.ndarray], list[tuple[int, dict]]]:
        pool = self._pool(ms, split)
        c = self.config
        labels = context_labels(ms, pool)
        episodes = []
        for k in c["k_shots"]:
            eps = draw_episodes(labels, c["n_way"], int(k), c["n_query"], c["episodes"], split.seed * 101 + int(k))
            episodes += [(int(k), ep) for ep in eps]
        return pool, labels, episodes

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        if not self._episodes(ms, split)[2]:
            return f"no context has 2 classes with {min(self.config['k_shots']) + 1} models outside training"
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        pool, labels, episodes = self._episodes(ms, split)
        emb = sim = None
        if method.has_embedding():
            emb = method.embed(ms, pool).numpy().astype(np.float64)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        else:
            sim = method.similarity(ms, pool, pool).numpy().astype(np.float64)
        oracles = {context: one_hot(values) for context, values in labels.items()}
        query_task = ms.metadata.loc[pool, "task"].astype(str).to_numpy()
        # Per (context, shot) cell: episode accuracies, chances, oracle accuracies; per query: unit,
        # correctness and the episode's chance and oracle.
        cells: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        queries: list[tuple[str, tuple[str, int], float, float, float]] = []
        for k, ep in episodes:
            cell = (ep["context"], k)
            correct = (prototype_predict(ep, emb, sim) == ep["query_label"]).astype(float)
            oracle_correct = (prototype_predict(ep, oracles[ep["context"]], None) == ep["query_label"]).astype(float)
            chance = 1.0 / len(ep["support"])
            oracle = float(oracle_correct.mean())
            cells[cell]["accuracy"].append(float(correct.mean()))
            cells[cell]["chance"].append(chance)
            cells[cell]["oracle"].append(oracle)
            for q, ok in zip(ep["query"], correct):
                queries.append((query_task[q], cell, float(ok), chance, oracle))
        found: dict[str, float] = {"episodes": len(episodes)}
        per_context: dict[str, dict[str, float]] = {}
        for (context, k), vals in sorted(cells.items()):
            m, h = metrics.mean_ci95(vals["accuracy"])
            chance, oracle = float(np.mean(vals["chance"])), float(np.mean(vals["oracle"]))
            norm = (m - chance) / (oracle - chance) if oracle > chance else float("nan")
            name = f"{context}_{k}shot"
            found[f"accuracy_{name}"] = m
            found[f"chance_{name}"] = chance
            found[f"oracle_{name}"] = oracle
            found[f"normalised_{name}"] = norm
            per_context[name] = {"accuracy": m, "ci95": h, "chance": chance, "oracle": oracle,
                                 "normalised": norm, "episodes": len(vals["accuracy"])}
        # Per unit: normalised correctness averaged per cell, then over the unit's cells.
        units = sorted({u for u, *_ in queries})
        unit_flex, unit_acc, unit_chance = [], [], []
        for unit in units:
            mine = [q for q in queries if q[0] == unit]
            by_cell: dict[tuple[str, int], list[float]] = defaultdict(list)
            for _, cell, ok, chance, oracle in mine:
                if oracle > chance:
                    by_cell[cell].append((ok - chance) / (oracle - chance))
            unit_flex.append(float(np.mean([np.mean(v) for v in by_cell.values()])) if by_cell else float("nan"))
            unit_acc.append(float(np.mean([q[2] for q in mine])))
            unit_chance.append(float(np.mean([q[3] for q in mine])))
        flex = np.array(unit_flex)
        found["flex_score"] = float(np.nanmean(flex)) if np.isfinite(flex).any() else float("nan")
        found["flex_score_ci95"] = metrics.mean_ci95(flex[np.isfinite(flex)])[1] if np.isfinite(flex).any() else float("nan")
        found["accuracy"] = float(np.mean(unit_acc))
        found["chance_accuracy"] = float(np.mean(unit_chance))
        for k in self.config["k_shots"]:
            cell_norms = [v["normalised"] for name, v in per_context.items() if name.endswith(f"_{int(k)}shot")]
            cell_norms = [v for v in cell_norms if np.isfinite(v)]
            found[f"flex_score_{int(k)}shot"] = float(np.mean(cell_norms)) if cell_norms else float("nan")
        per_unit = {
            "unit": "task",
            "unit_note": "the task of each query model (held-out models of seen tasks, models of held-out tasks)",
            "ids": units,
            "metrics": {"flex_score": [None if not np.isfinite(v) else v for v in unit_flex],
                        "accuracy": unit_acc},
        }
        return found, {"per_context": per_context, "per_unit": per_unit}
