"""A model's recipe as both training loops carry it out: its seeded initialization, data order and
training subset, learning-rate schedule, batch augmentation and label-smoothed loss.

The stacked engine (:mod:`builders.engine.stack`) and the reference loop
(:mod:`builders.engine.plain`) draw from the same functions, so a model gets the same initial
weights, batches and augmentation in both."""

from __future__ import annotations

import functools
import math
import threading

import torch

from builders.engine.spec import (
    INITS,
    SCHEDULES,
    SHIFT_PIXELS,
    STEP_GAMMA,
    STEP_MILESTONES,
    WARMUP_FRACTION,
    TrainSpec,
)
from modelset.architectures import build_architecture

#: Initialization seeds torch's process-wide generator: engine threads take turns.
GLOBAL_RNG_LOCK = threading.Lock()


def init_model(spec: TrainSpec) -> torch.nn.Module:
    """The model of ``spec`` initialized from its seed and ``spec.init`` scheme (independent of
    the global RNG state)."""
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):  # seeds the process-wide generator
        torch.manual_seed(spec.seed)
        model = build_architecture(spec.architecture, spec.arch_kwargs)
        apply_init(model, spec.init)
        return model


@torch.no_grad()
def apply_init(model: torch.nn.Module, scheme: str) -> None:
    """Re-initialize every convolution and linear weight of ``model`` by ``scheme`` (one of
    :data:`INITS`, drawing from torch's global generator) and zero their biases, as
    ``model.apply(init_fn)`` does in a plain training script; ``"default"`` changes nothing.
    Normalization layers keep their own initialization."""
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")
    if scheme == "default":
        return
    for module in model.modules():
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        if scheme == "kaiming_normal":
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif scheme == "xavier_uniform":
            torch.nn.init.xavier_uniform_(module.weight)
        else:
            _orthogonal_(module.weight)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)


def _orthogonal_(weight: torch.Tensor) -> None:
    """``torch.nn.init.orthogonal_`` (Saxe et al. 2014), with the QR in float64: LAPACK's float32
    result depends on how many threads it ran on, and a model's init must not (a build's worker
    threads and the reference loop must draw the same bits); float64 differences vanish when the
    result is rounded to float32."""
    rows = weight.shape[0]
    flat = torch.randn(rows, weight.numel() // rows, dtype=torch.float64)
    wide = rows < flat.shape[1]
    q, r = torch.linalg.qr(flat.T if wide else flat)
    q = q * torch.sign(torch.diagonal(r))
    if wide:
        q = q.T
    weight.copy_(q.reshape(weight.shape).to(weight.dtype))


def data_generator(spec: TrainSpec) -> torch.Generator:
    """The generator of a model's data order: its own stream, derived from its seed."""
    return torch.Generator().manual_seed((spec.seed * 1_000_003 + 7919) % (2**63))


def _side_generator(spec: TrainSpec, salt: int) -> torch.Generator:
    """Another stream of the model's seed (training subset, augmentation), so that turning a
    knob on leaves its data order untouched."""
    return torch.Generator().manual_seed((spec.seed * 1_000_003 + salt) % (2**63))


def train_images(spec: TrainSpec, n: int) -> int:
    """Training images a model sees of its task's ``n``: ``round(train_fraction * n)``, at least 1."""
    return n if spec.train_fraction >= 1.0 else max(1, round(spec.train_fraction * n))


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of ``total`` under ``schedule``."""
    if schedule == "cosine":
        return cosine_factor(step, total)
    if schedule == "warmup_cosine":
        warm = max(1, math.ceil(WARMUP_FRACTION * total))
        if step < warm:
            return (step + 1) / warm
        return cosine_factor(step - warm, total - warm)
    if schedule == "step":
        return STEP_GAMMA ** sum(step >= int(m * total) for m in STEP_MILESTONES)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped, as in the plain loop)."""
    return max(1, n // batch_size)


def cosine_factor(step: int, total: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of ``total``: cosine decay from 1 to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


class Batches:
    """A model's batch indices (into its task's ``n`` training images) and augmentation draws,
    epoch by epoch, in the order shared by the engine and plain loop."""

    def __init__(self, spec: TrainSpec, n: int) -> None:
        self.gen = data_generator(spec)
        self.subset: torch.Tensor | None = None
        if spec.train_fraction < 1.0:
            # A seeded random subset, in data set order (not the first images: those are the
            # same for every model of the task).
            pick = torch.randperm(n, generator=_side_generator(spec, 15_485_863))
            self.subset = pick[: train_images(spec, n)].sort().values
            n = self.subset.numel()
        self.n = n
        self.bs = min(spec.batch_size, n)
        self.spe = steps_per_epoch(n, self.bs)
        self.total = self.spe * spec.epochs
        self.perm = torch.empty(0, dtype=torch.int64)
        self.augment = spec.augment
        self.aug_gen = _side_generator(spec, 104_729) if spec.augment != "none" else None
        self.shifts = self.flips = torch.empty(0)

    def at(self, step: int) -> torch.Tensor:
        b = step % self.spe
        if b == 0:
            self.perm = torch.randperm(self.n, generator=self.gen)
            if self.aug_gen is not None:  # one draw per epoch: cheaper than one per step
                count = self.spe * self.bs
                if "shift" in self.augment:
                    self.shifts = torch.randint(
                        -SHIFT_PIXELS, SHIFT_PIXELS + 1, (count, 2), generator=self.aug_gen
                    )
                if "flip" in self.augment:
                    self.flips = torch.randint(0, 2, (count,), generator=self.aug_gen).bool()
        idx = self.perm[b * self.bs : (b + 1) * self.bs]
        return idx if self.subset is None else self.subset[idx]

    def augmentation(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's ``(shifts (B, 2), flips (B,))`` (zeros and False where the recipe has
        none); call after :meth:`at` for the same step."""
        b = step % self.spe
        sl = slice(b * self.bs, (b + 1) * self.bs)
        shifts = self.shifts[sl] if "shift" in self.augment else torch.zeros(self.bs, 2, dtype=torch.int64)
        flips = self.flips[sl] if "flip" in self.augment else torch.zeros(self.bs, dtype=torch.bool)
        return shifts, flips


def augment_images(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Shift and flip each image: ``x`` ``(N, C, H, W)``, ``shifts`` ``(N, 2)`` (rows, columns)
    in ``[-SHIFT_PIXELS, SHIFT_PIXELS]``, ``flips`` ``(N,)`` bool → ``(N, C, H, W)``.

    Output pixel ``(i, j)`` is input pixel ``(i + dy, j + dx)`` clamped to the image (edge
    padding), then mirrored left-right where ``flips``: torchvision's ``RandomCrop`` with
    ``padding_mode="edge"`` followed by ``RandomHorizontalFlip``. Pixels are only copied, so the
    result does not depend on the input normalization.
    """
    n, c, h, w = x.shape
    span = 2 * SHIFT_PIXELS + 1
    shifts, flips = shifts.to(x.device), flips.to(x.device)
    code = ((shifts[:, 0] + SHIFT_PIXELS) * span + shifts[:, 1] + SHIFT_PIXELS) * 2 + flips.long()
    # One row of source pixels per (shift, flip): a lookup, not index arithmetic per image.
    pixels = _pixel_maps(h, w, x.device).index_select(0, code)  # (N, H*W)
    return x.reshape(n, c, h * w).gather(2, pixels.unsqueeze(1).expand(n, c, h * w)).view(n, c, h, w)


@functools.lru_cache(maxsize=8)
def _pixel_maps(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Source pixel of every output pixel for each (row shift, column shift, flip), in the order
    of ``augment_images``'s codes: ``(span * span * 2, H * W)`` int64."""
    p = SHIFT_PIXELS
    rows = (torch.arange(h).view(1, h, 1) + torch.arange(-p, p + 1).view(-1, 1, 1)).clamp(0, h - 1)
    cols = (torch.arange(w).view(1, 1, w) + torch.arange(-p, p + 1).view(-1, 1, 1)).clamp(0, w - 1)
    cols = torch.stack([cols, cols.flip(-1)], 1)  # (span, 2, 1, W): unflipped, flipped
    maps = rows.view(-1, 1, 1, h, 1) * w + cols.unsqueeze(0)  # (span, span, 2, H, W)
    return maps.reshape(-1, h * w).to(device)


def smoothed_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor, num_classes: torch.Tensor
) -> torch.Tensor:
    """Per-model mean cross-entropy with label smoothing, as ``F.cross_entropy(label_smoothing=)``.

    ``logits`` ``(M, B, K)`` with ``-inf`` beyond each model's own ``num_classes`` ``(M,)``, ``y``
    ``(M, B)``, ``smoothing`` ``(M,)`` → ``(M,)``: ``(1 - ε) · NLL + ε · mean over the model's own
    classes of ``-log p``.
    """
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (M, B)
    own = torch.arange(logits.shape[-1], device=logits.device) < num_classes.view(-1, 1, 1)
    uniform = -torch.where(own, logp, torch.zeros_like(logp)).sum(-1) / num_classes.unsqueeze(1)
    eps = smoothing.unsqueeze(1)
    return ((1.0 - eps) * nll + eps * uniform).mean(1)
