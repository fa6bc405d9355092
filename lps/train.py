"""Fit an LPS network on the models of training tasks only.

Two modes:

- ``"pairs"`` (the LPS paper): balanced pairs (positive, hard negative, easy negative per anchor,
  ``lps.pairs``), binary cross-entropy on ``scale · cos + offset``, with optional graded targets
  from a relation matrix. Features are computed once; training only runs the small network.
- ``"contrastive"`` (Ren et al. 2020, flexible few-shot pretraining): each batch of models is
  augmented twice in weight space (``lps.augment``); an instance term (NT-Xent: each model's two
  views match each other against the batch) is combined with a class term (supervised contrastive:
  views of models of the same task match). Features of the augmented views are recomputed per step.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import modelset.weights
from lps._bank import FeatureBank, bank_from_groups, bank_from_modelset
from lps.augment import Augmentation, augment
from lps.features import compute_features
from lps.model import LPS, LPSNet
from lps.pairs import PairSampler
from lps.weights import WeightSpace, load_spaces
from modelset._atomic import replace_folder
from modelset.errors import ModelSetError

log = logging.getLogger(__name__)

MODES = ("pairs", "contrastive")


def resolve_train_ids(ms, train_tasks: Sequence[str] | None, train_ids: Sequence[str] | None) -> list[str]:
    """Training model ids: ``train_ids`` if given (checked against ``train_tasks``), else every
    model of ``train_tasks``."""
    table = ms.metadata
    if train_ids is not None:
        ids = list(train_ids)
        missing = [m for m in ids if m not in table.index]
        if missing:
            raise ModelSetError(f"training ids {missing[:5]} are not in {ms.root}")
        if train_tasks is not None:
            outside = sorted(set(table.loc[ids, "task"].astype(str)) - {str(t) for t in train_tasks})
            if outside:
                raise ModelSetError(
                    f"training ids include models of tasks {outside} that are not training tasks"
                )
        return ids
    if train_tasks is None:
        log.warning(
            "lps.train: no train_tasks given; fitting on every model of %s (no held-out tasks)", ms.root
        )
        return list(table.index)
    unknown = sorted({str(t) for t in train_tasks} - set(table["task"].astype(str)))
    if unknown:
        raise ModelSetError(f"training tasks {unknown} have no models in {ms.root}")
    return list(table.index[table["task"].astype(str).isin([str(t) for t in train_tasks])])


def train(
    ms,
    train_tasks: Sequence[str] | None = None,
    train_ids: Sequence[str] | None = None,
    mode: str = "pairs",
    seed: int = 0,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    dim: int = 64,
    proj: int = 8,
    hidden: int = 256,
    hardness: str | None = "label_jaccard",
    graded: str | None = None,
    temperature: float = 0.1,
    class_weight: float = 1.0,
    augmentation: Augmentation | None = None,
    checkpoint: str = "final",
    progress: bool = False,
) -> LPS:
    """Train LPS on ``ms``'s models of ``train_tasks`` (or exactly ``train_ids``); returns the scorer.

    ``hardness`` / ``graded`` name relation matrices of ``ms`` (ignored when the set lacks them)
    that pick hard negatives and give graded pair targets. Deterministic for a given seed.
    """
    if mode not in MODES:
        raise ModelSetError(f"unknown LPS training mode {mode!r}; choose one of {MODES}")
    torch.manual_seed(seed)
    ids = resolve_train_ids(ms, train_tasks, train_ids)
    tasks = ms.metadata.loc[ids, "task"].astype(str).tolist()
    start = time.perf_counter()
    bank = bank_from_modelset(ms, ids, checkpoint, progress=progress)
    net = LPSNet(bank.schema(), dim=dim, proj=proj, hidden=hidden)
    net.fit_normaliser(bank)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(ids) / batch_size)))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    relations = ms.relations
    config: dict[str, Any] = {
        "mode": mode,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "train_models": len(ids),
        "train_tasks": sorted(set(tasks)),
        "modelset": ms.name,
    }
    if mode == "pairs":
        sampler = PairSampler(
            tasks,
            hardness=relations.get(hardness) if hardness else None,
            graded=relations.get(graded) if graded else None,
            seed=seed,
        )
        config.update(
            hardness=hardness if hardness in relations else None,
            graded=graded if graded in relations else None,
        )
        _train_pairs(net, bank, sampler, optimizer, schedule, epochs, batch_size, seed, progress)
    else:
        aug = augmentation or Augmentation()
        config.update(temperature=temperature, class_weight=class_weight, augmentation=aug.__dict__)
        spaces = load_spaces(ms, ids, checkpoint)
        _train_contrastive(
            net,
            spaces,
            len(ids),
            tasks,
            aug,
            optimizer,
            schedule,
            epochs,
            batch_size,
            temperature,
            class_weight,
            seed,
            progress,
        )
    config["train_seconds"] = round(time.perf_counter() - start, 2)
    log.info(
        "LPS (%s, seed %d) trained on %d models in %.1f s", mode, seed, len(ids), config["train_seconds"]
    )
    return LPS(net.eval(), config)


def _train_pairs(
    net: LPSNet,
    bank: FeatureBank,
    sampler: PairSampler,
    optimizer: torch.optim.Optimizer,
    schedule,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool,
) -> None:
    rng = np.random.default_rng(seed)
    n = len(bank)
    embeddings: torch.Tensor | None = None
    for epoch in tqdm(range(epochs), desc="LPS pairs", disable=not progress):
        # After a first epoch, mine hard negatives with the network's own current embeddings.
        if epoch > 0:
            net.eval()
            with torch.no_grad():
                embeddings = net(bank)
        net.train()
        order = rng.permutation(n)
        for s in range(0, n, batch_size):
            pairs = sampler.sample(order[s : s + batch_size], embeddings=embeddings)
            used, inverse = torch.unique(torch.cat([pairs.first, pairs.second]), return_inverse=True)
            z = net(bank.subset(used))
            a, b = z[inverse[: len(pairs.first)]], z[inverse[len(pairs.first) :]]
            losses = F.binary_cross_entropy_with_logits(net.pair_logits(a, b), pairs.target, reduction="none")
            # Positives, hard and easy negatives weigh the same whatever their counts.
            loss = torch.stack([losses[pairs.kind == k].mean() for k in pairs.kind.unique()]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def _views(
    spaces: list[tuple[np.ndarray, WeightSpace]], batch: np.ndarray, aug: Augmentation, gen: torch.Generator
) -> tuple[FeatureBank, np.ndarray]:
    """Features of one augmented view of the models at ``batch``; returns (bank, their positions)."""
    groups, order = [], []
    for positions, space in spaces:
        local = np.flatnonzero(np.isin(positions, batch))
        if not len(local):
            continue
        view = augment(space.select(torch.as_tensor(local)), aug, gen)
        groups.append((range(len(order), len(order) + len(local)), compute_features(view)))
        order.extend(positions[local].tolist())
    return bank_from_groups(groups, len(order)), np.asarray(order)


def _train_contrastive(
    net: LPSNet,
    spaces: list[tuple[np.ndarray, WeightSpace]],
    n: int,
    tasks: Sequence[str],
    aug: Augmentation,
    optimizer: torch.optim.Optimizer,
    schedule,
    epochs: int,
    batch_size: int,
    temperature: float,
    class_weight: float,
    seed: int,
    progress: bool,
) -> None:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    labels_all = torch.as_tensor(np.unique(np.asarray(tasks), return_inverse=True)[1])
    schema = net.schema
    for _ in tqdm(range(epochs), desc="LPS contrastive", disable=not progress):
        net.train()
        order = rng.permutation(n)
        for s in range(0, n, batch_size):
            batch = order[s : s + batch_size]
            if len(batch) < 2:
                continue
            first, pos = _views(spaces, batch, aug, gen)
            second, pos2 = _views(spaces, batch, aug, gen)
            assert np.array_equal(pos, pos2)  # both views list models in the same order
            z = torch.cat([net(first.conform(schema)), net(second.conform(schema))])
            labels = labels_all[torch.as_tensor(pos)].repeat(2)
            instance = torch.arange(len(pos)).repeat(2)
            loss = supervised_contrastive(z, instance, temperature)
            if class_weight > 0:
                loss = loss + class_weight * supervised_contrastive(z, labels, temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def supervised_contrastive(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SupCon loss (Khosla et al. 2020) of unit embeddings ``z`` ``(M, dim)`` with labels ``(M,)``.

    The one contrastive loss of the project: LPS's contrastive mode and the learned baselines
    (``benchmarks.methods._train``) both train with it. With one label per model (its index) and
    two views each this is NT-Xent (SimCLR); with task labels it pulls together all models of a
    task. Anchors without a positive are skipped; with none at all the loss is a zero that keeps
    the graph. Returns a scalar.
    """
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(self_mask, -1e9)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positive.sum(1)
    has = counts > 0
    if not has.any():
        return logits.sum() * 0.0
    mean_log_prob = (log_prob * positive).sum(1)[has] / counts[has]
    return -mean_log_prob.mean()


def zoo_digest(ms) -> str:
    """SHA256 of the set's SHA256SUMS file: changes whenever any file of the set changes."""
    from modelset.schema import CHECKSUMS_FILE

    path = ms.root / CHECKSUMS_FILE
    if not path.is_file():
        raise ModelSetError(f"{path}: missing; finish or verify the model set before training on it")
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: The modules whose code decides what a training run produces (search, CLI and calibration do not).
TRAINING_MODULES = ("_bank.py", "augment.py", "features.py", "model.py", "pairs.py", "train.py", "weights.py")


def _code_digest() -> str:
    """SHA256 over the training code's source: a checkpoint trained by other LPS code is not reused."""
    digest = hashlib.sha256()
    for name in TRAINING_MODULES:
        digest.update(name.encode() + b"\0" + (Path(__file__).parent / name).read_bytes())
    # The weight space LPS reads lives in modelset (lps/weights.py re-exports it).
    digest.update(b"modelset/weights.py\0" + Path(modelset.weights.__file__).read_bytes())
    return digest.hexdigest()


def train_cached(
    ms,
    train_ids: Sequence[str],
    cache_dir: str | os.PathLike,
    mode: str = "pairs",
    seed: int = 0,
    label: str | None = None,
    **kwargs: Any,
) -> LPS:
    """:func:`train`, or the checkpoint a previous call with the same inputs saved in ``cache_dir``.

    The key covers the set's content (its SHA256SUMS digest), the training ids, the mode, the
    seed, every keyword and the LPS source code, so a checkpoint is reused only for exactly the same fit: ``make lps``
    trains one per fold and the benchmark's LPS methods load them instead of training again.
    ``label`` names the checkpoint's folder (default ``fold{seed}``).
    """
    defaults = {
        name: p.default for name, p in inspect.signature(train).parameters.items() if p.default is not inspect.Parameter.empty
    }
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ModelSetError(f"LPS training: unknown options {unknown}; known {sorted(defaults)}")
    # Every option at its effective value, so that spelling out a default does not change the key.
    config = {k: v for k, v in {**defaults, **kwargs}.items() if k not in ("train_tasks", "train_ids", "mode", "seed", "progress")}
    payload = {"zoo": zoo_digest(ms), "ids": sorted(map(str, train_ids)), "mode": mode, "seed": int(seed),
               "config": config, "code": _code_digest()}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"{mode}-{label or f'fold{int(seed)}'}-{key}"
    if (folder / "lps.json").exists():
        try:
            scorer = LPS.load(folder)
        except ModelSetError as exc:
            log.warning("retraining: cached LPS at %s cannot be used (%s)", folder, exc)
        else:
            if scorer.config.get("cache_key") == key:
                log.info("loaded LPS (%s, fold %d) from %s", mode, seed, folder)
                return scorer
    scorer = train(ms, train_ids=list(train_ids), mode=mode, seed=seed, **kwargs)
    scorer.config["cache_key"] = key
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    scorer.save(tmp)
    replace_folder(tmp, folder)
    log.info("saved LPS (%s, fold %d) to %s", mode, seed, folder)
    return scorer


class _CallableModule(types.ModuleType):
    """Lets ``lps.train(ms, ...)`` call :func:`train` while ``lps.train.train`` and
    ``from lps.train import ...`` keep naming this module's contents (the package API needs both)."""

    def __call__(self, *args: Any, **kwargs: Any) -> LPS:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
