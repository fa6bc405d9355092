"""Scores that mean something: LPS similarity calibrated into the probability of a shared task.

A cosine between two embeddings says little by itself (an untrained network can score 0.8). The
task folds give pairs whose answer is known and that no LPS was fit on: for each fold, every model
of its held-out tasks queries every other model of the set, scored by that fold's LPS. An isotonic
regression (scikit-learn) maps the score to the observed frequency that the two models solve the
same task — and, where the task table records them, the same label set and the same input domain.
``lps search`` shows these probabilities beside each hit and says when the best hit is unlikely.

Honesty check: the calibration error is measured across folds (fit on the other folds' pairs,
scored on the held-out fold's), as the expected calibration error over equal-count bins
(scikit-learn's ``calibration_curve``) and the Brier score.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelset._atomic import write_json_atomic
from modelset._untrusted import read_json
from modelset.errors import ModelSetError

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
#: The questions a hit's probability answers, and the task-table column each compares.
QUESTIONS = {"same_task": None, "same_labels": "classes", "same_domain": "domain"}
BINS = 15
#: Below this probability of sharing the query's task, the best hit is "no good match".
GOOD_MATCH = 0.5


@dataclass(frozen=True)
class Calibration:
    """Per question, an increasing piecewise-linear map ``score -> probability`` (isotonic fit)."""

    curves: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]]
    report: Mapping[str, Any]

    def probability(self, question: str, scores: np.ndarray) -> np.ndarray:
        """Probabilities ``(n,)`` for cosine ``scores`` ``(n,)``."""
        x, y = self.curves[question]
        return np.interp(np.asarray(scores, dtype=np.float64), x, y)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / CALIBRATION_FILE
        doc = {"curves": {q: {"score": list(x), "probability": list(y)} for q, (x, y) in self.curves.items()},
               "report": dict(self.report)}  # fmt: skip
        write_json_atomic(path, doc)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Calibration:
        path = Path(folder) / CALIBRATION_FILE
        doc = read_json(path, "the LPS calibration", ModelSetError)
        try:
            curves = {}
            for q, c in doc["curves"].items():
                x = tuple(float(v) for v in c["score"])
                y = tuple(float(v) for v in c["probability"])
                if q not in QUESTIONS or not x or len(x) != len(y) or list(x) != sorted(x):
                    raise ValueError(f"curve {q!r} is not an increasing score → probability map")
                if not all(0.0 <= v <= 1.0 for v in y):
                    raise ValueError(f"curve {q!r} has probabilities outside [0, 1]")
                curves[q] = (x, y)
            return cls(curves, dict(doc.get("report") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelSetError(f"{path}: not an LPS calibration ({exc}); run `python -m lps calibrate` again") from exc


def _labels(ms, question: str, a: Sequence[str], b: Sequence[str]) -> np.ndarray | None:
    """``(len(a), len(b))`` booleans: do the two models share the question's attribute?"""
    task = ms.metadata["task"].astype(str)
    ta, tb = task.loc[list(a)].to_numpy(), task.loc[list(b)].to_numpy()
    column = QUESTIONS[question]
    if column is None:
        return ta[:, None] == tb[None, :]
    if column not in ms.tasks.columns:
        return None
    value = ms.tasks[column].map(lambda v: json.dumps(v.tolist() if hasattr(v, "tolist") else v, sort_keys=True))
    va, vb = value.reindex(ta).to_numpy(), value.reindex(tb).to_numpy()
    return va[:, None] == vb[None, :]


def held_out_pairs(ms, split, scorer) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scores ``(n,)`` of every (held-out-task model, other model) pair of one fold under its LPS,
    and the answer of each question for those pairs."""
    queries = list(split.heldout_task_ids)
    zoo = list(ms.metadata.index)
    emb_q = scorer.embed(queries, ms=ms)
    emb_z = scorer.embed(zoo, ms=ms)
    scores = (emb_q @ emb_z.T).numpy().astype(np.float64)
    not_self = np.asarray(queries)[:, None] != np.asarray(zoo)[None, :]
    answers = {}
    for q in QUESTIONS:
        lab = _labels(ms, q, queries, zoo)
        if lab is not None:
            answers[q] = lab[not_self]
    return scores[not_self], answers


def expected_calibration_error(truth: np.ndarray, probability: np.ndarray, bins: int = BINS) -> float:
    """Mean gap between predicted and observed frequency over equal-count bins (scikit-learn's
    ``calibration_curve`` with ``strategy="quantile"``, so each bin weighs the same)."""
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(truth, np.clip(probability, 0, 1), n_bins=bins, strategy="quantile")
    return float(np.mean(np.abs(observed - predicted)))


def _fit(scores: np.ndarray, truth: np.ndarray):
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(scores, truth)


def fit_calibration(ms, folds: Sequence[tuple[Any, Any]]) -> Calibration:
    """Fit the calibration from ``folds`` = ``[(split, fold_lps), ...]`` and measure its error
    across folds. Raises ``ModelSetError`` with fewer than 2 folds."""
    from sklearn.metrics import brier_score_loss

    if len(folds) < 2:
        raise ModelSetError("calibration needs at least 2 task folds (it is checked across folds)")
    per_fold = [held_out_pairs(ms, split, scorer) for split, scorer in folds]
    questions = [q for q in QUESTIONS if all(q in answers for _, answers in per_fold)]
    curves, report = {}, {"folds": len(folds), "bins": BINS, "questions": {}}
    for q in questions:
        eces, briers = [], []
        for i in range(len(per_fold)):  # fit on the other folds, score on this one
            x = np.concatenate([s for j, (s, _) in enumerate(per_fold) if j != i])
            y = np.concatenate([a[q] for j, (_, a) in enumerate(per_fold) if j != i]).astype(float)
            model = _fit(x, y)
            held_x, held_y = per_fold[i][0], per_fold[i][1][q].astype(float)
            prob = model.predict(held_x)
            eces.append(expected_calibration_error(held_y, prob))
            briers.append(float(brier_score_loss(held_y, np.clip(prob, 0, 1))))
        x = np.concatenate([s for s, _ in per_fold])
        y = np.concatenate([a[q] for _, a in per_fold]).astype(float)
        model = _fit(x, y)
        curves[q] = (tuple(float(v) for v in model.X_thresholds_), tuple(float(v) for v in model.y_thresholds_))
        report["questions"][q] = {
            "pairs": int(y.size), "base_rate": round(float(y.mean()), 6),
            "ece_across_folds": round(float(np.mean(eces)), 6), "brier_across_folds": round(float(np.mean(briers)), 6),
            "brier_of_base_rate": round(float(np.mean((y - y.mean()) ** 2)), 6),
        }  # fmt: skip
        log.info("calibration of %s: ECE %.4f, Brier %.4f over %d pairs", q, np.mean(eces), np.mean(briers), y.size)
    return Calibration(curves, report)
