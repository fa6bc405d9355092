"""The loss and loop shared by the learned baselines: a supervised contrastive objective
(Khosla et al. 2020) on models of the training tasks, so every learned baseline is fit the
same way and differs only in its encoder."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss of embeddings ``z`` ``(n, d)`` with class ``labels`` ``(n,)``:
    each model is pulled towards the other models of its task and pushed from the rest."""
    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(eye, -1e9)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    has_pos = positive.any(dim=1)
    per_anchor = -(log_prob * positive).sum(dim=1)[has_pos] / positive.sum(dim=1)[has_pos]
    return per_anchor.mean() if has_pos.any() else logits.sum() * 0.0


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
) -> list[float]:
    """Train ``encoder`` for ``steps`` Adam steps; ``encode(index (b,)) -> (b, d)`` embeds a batch
    of the ``n`` training models. Batches draw whole tasks so every anchor has positives.
    Returns the loss per step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    encoder.train()
    for _ in range(steps):
        index = torch.randperm(n, generator=generator)[: min(batch_size, n)]
        loss = supcon_loss(encode(index), labels[index])
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
