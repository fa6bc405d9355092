"""The loop shared by the learned baselines: the supervised contrastive loss of LPS
(``lps.train.supervised_contrastive``, Khosla et al. 2020) on models of the training tasks, so
every learned baseline is fit the same way as LPS's contrastive mode and differs only in its
encoder."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def fit_contrastive(
    encoder: torch.nn.Module,
    encode: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    labels: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 1e-4,
    temperature: float = 0.1,
) -> list[float]:
    """Train ``encoder`` for ``steps`` Adam steps; ``encode(index (b,)) -> (b, d)`` embeds a batch
    of the ``n`` training models. Batches draw whole tasks so every anchor has positives.
    Returns the loss per step."""
    from lps.train import supervised_contrastive  # lps is imported only when a method is fit

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    encoder.train()
    for _ in range(steps):
        index = torch.randperm(n, generator=generator)[: min(batch_size, n)]
        loss = supervised_contrastive(F.normalize(encode(index), dim=1), labels[index], temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    encoder.eval()
    log.debug("contrastive fit: loss %.4f -> %.4f over %d steps", losses[0], losses[-1], steps)
    return losses


def task_labels(tasks: list[str]) -> torch.Tensor:
    """Task names ``(n,)`` as integer labels in sorted-name order."""
    lookup = {t: i for i, t in enumerate(sorted(set(tasks)))}
    return torch.tensor([lookup[t] for t in tasks], dtype=torch.long)
