"""Transfer-affinity ground truth: scratch and fine-tune runs differ only in their initial weights,
each pair is measured by independent replicates, and the matrix's reliability is computed right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from builders.build import RELIABILITY_FIELD, load_config
from builders.engine import TaskTensors
from builders.tasks import get_task_set
from builders.transfer import (
    TransferConfig,
    head_keys,
    plan_transfer,
    reliability,
    summarize,
    transfer_affinity,
)
from modelset.architectures import build_architecture, canonical_kwargs

REPO = Path(__file__).resolve().parents[1]


def _sources(tasks, per_task: int, arch: str, kwargs: dict) -> dict:
    out = {}
    for i, t in enumerate(tasks):
        for r in range(per_task):
            torch.manual_seed(100 * i + r)
            net = build_architecture(arch, dict(kwargs, num_classes=t.num_classes))
            out.setdefault(t.task_id, []).append((f"{t.task_id}-m{r}", arch, dict(kwargs, num_classes=t.num_classes), net.state_dict()))
    return out


@pytest.mark.parametrize("config", ["modelset500.yaml", "mini.yaml"])
def test_scratch_and_fine_tune_runs_share_the_sources_signature(config: str) -> None:
    cfg = load_config(REPO / "configs" / config)
    fam = next(f for f in cfg.families if f.architecture == "cnn3")
    kwargs = dict(fam.arch_kwargs)
    tasks = get_task_set(cfg.tasks)[:5]
    tc = TransferConfig(seeds=2)
    specs, inits = plan_transfer(tasks, _sources(tasks, 2, "cnn3", kwargs), tc, seed=3)
    source_sig = f"cnn3:{canonical_kwargs(kwargs)}"
    assert {s.signature() for s in specs} == {source_sig}  # scratch included: same strides as sources
    assert len(specs) == len(tasks) * 2 * 2 * (1 + len(tasks))  # targets × replicates × seeds × runs
    by_id = {s.model_id: s for s in specs}
    for s in specs:
        if not s.model_id.startswith("ft|"):
            continue
        _, src, tgt, mid, r, run = s.model_id.split("|")
        scratch = by_id[f"scratch|{tgt}|{r}|{run}"]
        # a fine-tune differs from its scratch twin only by its initial weights
        assert scratch.signature() == s.signature() and scratch.arch_kwargs == s.arch_kwargs
        assert (scratch.seed, scratch.lr, scratch.weight_decay, scratch.batch_size, scratch.optimizer,
                scratch.epochs) == (s.seed, s.lr, s.weight_decay, s.batch_size, s.optimizer, s.epochs)  # fmt: skip
        assert mid == f"{src}-m{r}" and not set(inits[s.model_id]) & {"head.weight", "head.bias"}
    # replicates and seeds are independent runs: distinct seeds per (target, replicate, run)
    scratch_seeds = [s.seed for s in specs if s.model_id.startswith("scratch|")]
    assert len(set(scratch_seeds)) == len(scratch_seeds)


def test_fine_tune_starts_from_the_source_body_with_a_fresh_head() -> None:
    kwargs = {"strides": [2, 2, 2]}
    assert head_keys("cnn3", canonical_kwargs(kwargs)) == {"head.weight", "head.bias"}
    tasks = get_task_set("fashion4")
    sources = _sources(tasks, 1, "cnn3", kwargs)
    _, inits = plan_transfer(tasks, sources, TransferConfig(), seed=0)
    init = inits["ft|t00|t02|t00-m0|0|0"]
    assert set(init) == {f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    assert torch.equal(init["conv2.weight"], sources["t00"][0][3]["conv2.weight"])


def test_sources_of_two_signatures_are_refused() -> None:
    tasks = get_task_set("fashion4")[:2]
    sources = _sources(tasks[:1], 1, "cnn3", {"strides": [2, 2, 2]})
    sources.update(_sources(tasks[1:], 1, "cnn3", {"strides": [2, 2, 1]}))
    with pytest.raises(ValueError, match="share one architecture"):
        plan_transfer(tasks, sources, TransferConfig())
    with pytest.raises(ValueError, match="unknown tasks"):
        plan_transfer(tasks, {"t99": sources["t00"]}, TransferConfig())


def _matrix(values: list[float], n: int = 3) -> pd.DataFrame:
    m = np.full((n, n), 9.0)  # the diagonal never counts
    m[~np.eye(n, dtype=bool)] = values
    ids = [f"t{i}" for i in range(n)]
    return pd.DataFrame(m, index=ids, columns=ids)


def test_reliability_by_hand() -> None:
    # one swapped pair of six: rho = 1 - 6 * 2 / (6 * 35) = 0.942857
    rel = reliability(_matrix([1, 2, 3, 4, 5, 6]), _matrix([1, 2, 3, 4, 6, 5]))
    assert rel["n_pairs"] == 6
    assert rel["spearman_halves"] == pytest.approx(1 - 12 / 210)
    assert rel["spearman_brown"] == pytest.approx(2 * (1 - 12 / 210) / (2 - 12 / 210))
    assert reliability(_matrix([1, 2, 3, 4, 5, 6]), _matrix([6, 5, 4, 3, 2, 1]))["spearman_halves"] == pytest.approx(-1)
    # a pair missing in one half is skipped
    rel = reliability(_matrix([1, 2, 3, 4, 5, np.nan]), _matrix([1, 2, 3, 5, 4, 0]))
    assert rel["n_pairs"] == 5 and rel["spearman_halves"] == pytest.approx(0.9)
    flat = reliability(_matrix([1, 2, 3, 4, 5, 6]), _matrix([2] * 6))
    assert flat["spearman_halves"] is None and flat["spearman_brown"] is None
    with pytest.raises(ValueError, match="same tasks"):
        reliability(_matrix([1, 2, 3, 4, 5, 6]), _matrix([1] * 12, n=4))


def test_reliability_tracks_noise_on_a_synthetic_relation() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(12, 12))
    ids = [f"t{i}" for i in range(12)]
    def half(noise: float) -> pd.DataFrame:
        return pd.DataFrame(truth + noise * rng.normal(size=truth.shape), index=ids, columns=ids)

    a, b = half(0.3), half(0.3)
    off = ~np.eye(12, dtype=bool)
    rel = reliability(a, b)
    assert rel["spearman_halves"] == pytest.approx(spearmanr(a.values[off], b.values[off]).statistic)
    assert rel["n_pairs"] == 132 and 0.8 < rel["spearman_halves"] < rel["spearman_brown"] < 1
    noisy = reliability(half(3.0), half(3.0))
    assert noisy["spearman_halves"] < rel["spearman_halves"] - 0.3  # noisier halves agree less
    assert -1 <= noisy["spearman_within_target"] <= 1


def test_summarize_averages_replicates_against_their_own_scratch() -> None:
    tasks = get_task_set("fashion4")
    ids = [t.task_id for t in tasks]
    rng = np.random.default_rng(1)
    acc, expected = {}, [pd.DataFrame(0.0, index=ids, columns=ids) for _ in range(2)]
    for r in range(2):
        for tgt in ids:
            base = float(rng.uniform(0.4, 0.6))
            acc[f"scratch|{tgt}|{r}|0"] = base
            for src in ids:
                ft = float(rng.uniform(0.3, 0.9))
                acc[f"ft|{src}|{tgt}|{src}-m{r}|{r}|0"] = ft
                expected[r].loc[src, tgt] = ft - base
    res = summarize(tasks, acc)
    np.testing.assert_allclose(res.replicates[0].values, expected[0].values)
    np.testing.assert_allclose(res.affinity.values, (expected[0].values + expected[1].values) / 2)
    np.testing.assert_allclose(res.scratch[ids[0]], (acc[f"scratch|{ids[0]}|0|0"] + acc[f"scratch|{ids[0]}|1|0"]) / 2)
    assert res.reliability == reliability(res.replicates[0], res.replicates[1])
    one = summarize(tasks, {k: v for k, v in acc.items() if k.split("|")[-2] == "0"})
    assert one.reliability is None and len(one.replicates) == 1


def test_transfer_affinity_runs_every_pair_on_synthetic_data() -> None:
    tasks = get_task_set("fashion4")[:3]
    gen = torch.Generator().manual_seed(0)

    def split(t, n: int) -> tuple[torch.Tensor, torch.Tensor]:  # learnable: brightness tells the class
        y = torch.randint(0, t.num_classes, (n,), generator=gen)
        return y.view(-1, 1, 1, 1) + torch.randn(n, 1, 28, 28, generator=gen), y

    data = {t.task_id: TaskTensors(*split(t, 64), *split(t, 64), t.num_classes) for t in tasks}
    tc = TransferConfig(budget=64, epochs=1, batch_size=32, chunk=10)
    res = transfer_affinity(tasks, data, _sources(tasks, 2, "cnn3", {"strides": [2, 2, 2]}), tc, progress=False)
    assert res.affinity.shape == (3, 3) and np.isfinite(res.affinity.values).all()
    assert len(res.replicates) == 2 and res.reliability is not None and res.reliability["n_pairs"] == 6
    assert ((res.scratch >= 0) & (res.scratch <= 1)).all()


def test_mini_set_reports_its_transfer_reliability(mini_set) -> None:
    header = json.loads((Path(mini_set.root) / "modelset.json").read_text())
    rel = header[RELIABILITY_FIELD]["transfer_affinity"]
    n = len(mini_set.tasks)
    assert rel["n_pairs"] == n * (n - 1)
    rho = rel["spearman_halves"]
    assert -1 <= rho <= 1 and rel["spearman_brown"] == pytest.approx(2 * rho / (1 + rho))
    assert rel["description"]
    card = (Path(mini_set.root) / "README.md").read_text()
    assert card.count("Reliability (test-retest") == 1 and f"Spearman ρ = {rho:.3f}" in card
