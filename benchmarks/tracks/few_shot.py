"""Track: flexible few-shot (Ren et al. 2020, "Flexible Few-Shot Learning with Contextual
Similarity"). Each episode first draws a grouping context — task, input domain, variant family or
architecture — then N classes of that context and K support plus up to Q query models per class,
from the models not fit on. A prototype classifier on the method's frozen embeddings (mean of
unit-norm support embeddings, cosine to each prototype; mean support similarity for methods
without embeddings) labels the queries. Accuracy with a 95 % interval over episodes, overall and
per context. Episodes depend on the split and seed only, so all methods see the same ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._registry import Track, TrackMeta, register_track
from lps.splits import Split
from modelset.reader import ModelSet

CONTEXTS = ("task", "domain", "variant", "architecture")


def context_labels(ms: ModelSet, ids: list[str]) -> dict[str, np.ndarray]:
    """For each grouping context available in the set, the label ``(n,)`` of each model."""
    table = ms.metadata.loc[ids]
    out = {"task": table["task"].astype(str).to_numpy()}
    if "domain" in ms.tasks.columns:
        domain = ms.tasks["domain"].astype(str)
        out["domain"] = np.array([domain.get(t, "?") for t in out["task"]])
    if "variant" in table:
        out["variant"] = table["variant"].astype(str).to_numpy()
    out["architecture"] = (table["architecture"].astype(str) + ":" + table["arch_kwargs"].astype(str)).to_numpy()
    return out


def draw_episodes(
    labels: dict[str, np.ndarray], n_way: int, k_shot: int, n_query: int, n_episodes: int, seed: int
) -> list[dict[str, Any]]:
    """Episodes ``{context, support (N, K), query (M,), query_label (M,)}`` of model positions.

    A context is eligible when at least two of its classes have ``k_shot + 1`` models.
    """
    rng = np.random.default_rng(seed)
    eligible = {}
    for context in CONTEXTS:
        if context not in labels:
            continue
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
        episodes.append(
            {"context": context, "support": np.stack(support), "query": np.array(query), "query_label": np.array(query_label)}
        )
    return episodes


@register_track
class FewShot(Track):
    meta = TrackMeta(
        name="few_shot",
        description="N-way K-shot episodes with a per-episode grouping context; prototype classifier accuracy ± 95% CI",
        primary=("accuracy",),
        reference="Ren et al. 2020, Flexible Few-Shot Learning with Contextual Similarity (arXiv 2012.05895)",
        config={"n_way": 5, "k_shot": 1, "n_query": 5, "episodes": 300},
    )

    def _pool(self, ms: ModelSet, split: Split) -> list[str]:
        train = set(split.train_ids)
        return sorted(str(m) for m in ms.metadata.index if m not in train)

    def _episodes(self, ms: ModelSet, split: Split) -> tuple[list[str], list[dict[str, Any]]]:
        pool = self._pool(ms, split)
        c = self.config
        labels = context_labels(ms, pool)
        episodes = draw_episodes(labels, c["n_way"], c["k_shot"], c["n_query"], c["episodes"], split.seed)
        return pool, episodes

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        if not self._episodes(ms, split)[1]:
            return f"no context has 2 classes with {self.config['k_shot'] + 1} models outside training"
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        pool, episodes = self._episodes(ms, split)
        if method.has_embedding():
            emb = method.embed(ms, pool).numpy().astype(np.float64)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            sim = None
        else:
            sim = method.similarity(ms, pool, pool).numpy().astype(np.float64)
        accuracies, contexts = [], []
        for ep in episodes:
            if sim is None:
                protos = emb[ep["support"]].mean(axis=1)
                protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
                scores = emb[ep["query"]] @ protos.T
            else:
                scores = np.stack([sim[np.ix_(ep["query"], s)].mean(axis=1) for s in ep["support"]], axis=1)
            # Ties (e.g. a constant scorer) are broken at random, not towards class 0.
            scores = scores + 1e-9 * np.random.default_rng(0).random(scores.shape)
            accuracies.append(metrics.accuracy(scores.argmax(axis=1), ep["query_label"]))
            contexts.append(ep["context"])
        mean, half = metrics.mean_ci95(accuracies)
        found: dict[str, float] = {"accuracy": mean, "ci95": half, "episodes": len(episodes)}
        per_context = {}
        for context in sorted(set(contexts)):
            vals = [a for a, c in zip(accuracies, contexts) if c == context]
            m, h = metrics.mean_ci95(vals)
            found[f"accuracy_{context}"] = m
            per_context[context] = {"accuracy": m, "ci95": h, "episodes": len(vals)}
        chance = float(np.mean([1.0 / len(ep["support"]) for ep in episodes]))
        found["chance_accuracy"] = chance
        return found, {"per_context": per_context}
