"""One optimizer step for every model of a stack at once, each with its own optimizer, learning
rate and weight decay.

It reproduces ``torch.optim.SGD(momentum=0.9)`` / ``torch.optim.Adam`` with L2 weight decay, or
``torch.optim.AdamW`` (decoupled weight decay), on the rows of a stack's ``(M, P)`` parameter
matrix: a few tensor operations per step whatever the number of models."""

from __future__ import annotations

import torch

from builders.engine.spec import ADAM_BETAS, ADAM_EPS, MOMENTUM, TrainSpec


class StackedOptimizer:
    """Optimizer state of ``M`` models whose parameters are the rows of an ``(M, P)`` matrix.

    Every model has state for both optimizers; rows of the one it does not use are simply unused.
    """

    def __init__(self, specs: list[TrainSpec], flat: torch.Tensor) -> None:
        device = flat.device
        self.momentum = torch.zeros_like(flat)
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.lr = torch.tensor([s.lr for s in specs], device=device)
        # L2 weight decay goes into the gradient; AdamW's decoupled decay shrinks the parameters.
        self.wd = torch.tensor(
            [0.0 if s.optimizer == "adamw" else s.weight_decay for s in specs], device=device
        )
        self.wd_decoupled: torch.Tensor | None = None
        if any(s.optimizer == "adamw" for s in specs):
            decoupled = [s.weight_decay if s.optimizer == "adamw" else 0.0 for s in specs]
            self.wd_decoupled = torch.tensor(decoupled, device=device)
        self.is_adam = torch.tensor([s.optimizer in ("adam", "adamw") for s in specs], device=device)

    @torch.no_grad()
    def step(self, p: torch.Tensor, step_no: int, lr_factor: torch.Tensor) -> None:
        """Update ``p`` ``(M, P)`` in place from ``p.grad`` and clear the gradient; ``step_no``
        counts from 1, ``lr_factor`` ``(M,)`` is each model's schedule factor.

        SGD: ``buf = 0.9 buf + g``, ``p -= lr buf``; Adam: bias-corrected moments; both with L2
        weight decay added to the gradient, as ``torch.optim`` does. AdamW: Adam's moments of the
        bare gradient, and ``p *= 1 - lr wd`` before the update (``torch.optim.AdamW``).
        """
        b1, b2 = ADAM_BETAS
        any_adam = bool(self.is_adam.any())
        any_sgd = not bool(self.is_adam.all())
        g = p.grad + self.wd.unsqueeze(1) * p
        upd = g
        if any_sgd:
            upd = self.momentum.mul_(MOMENTUM).add_(g)
        if any_adam:
            m1, m2 = self.exp_avg, self.exp_avg_sq
            m1.mul_(b1).add_(g, alpha=1 - b1)
            m2.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (m2 / (1 - b2**step_no)).sqrt_().add_(ADAM_EPS)
            adam_upd = (m1 / (1 - b1**step_no)).div_(denom)
            upd = torch.where(self.is_adam.unsqueeze(1), adam_upd, upd) if any_sgd else adam_upd
        lr = self.lr * lr_factor
        if self.wd_decoupled is not None:  # AdamW: p ← p (1 - lr wd) - lr update
            p.mul_((1.0 - lr * self.wd_decoupled).unsqueeze(1))
        p.sub_(lr.unsqueeze(1) * upd)
        p.grad = None

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the models at positions ``keep``."""
        self.momentum, self.exp_avg = self.momentum[keep], self.exp_avg[keep]
        self.exp_avg_sq = self.exp_avg_sq[keep]
        self.lr, self.wd, self.is_adam = self.lr[keep], self.wd[keep], self.is_adam[keep]
        if self.wd_decoupled is not None:
            self.wd_decoupled = self.wd_decoupled[keep]
