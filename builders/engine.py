"""The multi-model training engine: trains many models of one architecture in lock step.

The parameters of ``M`` models are stacked into tensors with a leading model dimension. One
forward pass computes all ``M`` models on their own batches (each model has its own task, data
order, initialization and hyper-parameters), the summed loss is differentiated once, and one
vectorized optimizer step updates all models with their own learning rate, weight decay and
optimizer (SGD with momentum or Adam). Two forward kernels:

* ``cnn3`` runs its first convolution as one im2col and batched matmul for all models, and the
  others as grouped convolutions (``groups=M``) in channels-last layout: one oneDNN call per
  layer for all models;
* any other registered architecture uses ``torch.func.vmap`` over ``functional_call`` (batch-norm
  running statistics are stacked buffers, updated per model).

Heads of models with fewer classes than the widest one are zero-padded and their extra logits
masked to ``-inf``, so the padded rows get zero gradient and stay zero: models of tasks with
different numbers of classes train together, and the padding is cut off when results are returned.

The optimizer reproduces ``torch.optim.SGD(momentum=0.9)`` / ``torch.optim.Adam`` with L2 weight
decay, or ``torch.optim.AdamW`` (decoupled weight decay). Every model has its own recipe
(:class:`TrainSpec`): learning-rate schedule (:data:`SCHEDULES`), initialization scheme
(:data:`INITS`), batch augmentation (:data:`AUGMENTS`: random shifts with edge padding and/or
horizontal flips, drawn from the model's own generator), label smoothing, input normalization
(``modelset.tasks.INPUT_NORMS``) and the fraction of its task's training images it sees. The
defaults are the original recipe (cosine, torch's initialization, no augmentation or smoothing,
standardized inputs, every image) and run exactly the original operations. :func:`train_plain` is
the ordinary one-model-at-a-time loop with the same data order, initialization and recipe, used as
the reference. Models leave the stack when their last step is done, so models with fewer epochs
cost less.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

import modelset.architectures.resnet  # noqa: F401  (registers resnet_tiny for the engine)
from modelset.architectures import build_architecture, canonical_kwargs
from modelset.runtime import Runtime
from modelset.tasks import INPUT_NORMS, convert_input_norm, input_norm_affine

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
#: Learning-rate schedules: cosine decay to 0; the same after a linear warm-up over the first
#: ``WARMUP_FRACTION`` of the steps; step decay by ``STEP_GAMMA`` at ``STEP_MILESTONES`` of the
#: steps; constant.
SCHEDULES = ("cosine", "warmup_cosine", "step", "constant")
WARMUP_FRACTION = 0.1
STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1
#: Initialization of convolution and linear weights (biases then start at zero): ``default`` keeps
#: the architecture's own (torch's) initialization.
INITS = ("default", "kaiming_normal", "xavier_uniform", "orthogonal")
#: Batch augmentation: random shifts of up to ``SHIFT_PIXELS`` with edge padding (torchvision's
#: ``RandomCrop(size, padding=SHIFT_PIXELS, padding_mode="edge")``) and/or horizontal flips (p=0.5).
AUGMENTS = ("none", "shift", "flip", "shift_flip")
SHIFT_PIXELS = 2
MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
EVAL_BATCH = 1000
#: cnn3 layer options the stacked kernel implements (``modelset.architectures.cnn``).
CNN3_PLAIN_LAYERS = {"conv": "conv", "downsample": "stride"}
# Test images per model and stacked eval call: all models' activations stay cache-sized.
EVAL_IMAGES_PER_CALL = 512
# Blocks below this size come from the heap, and up to TRIM_THRESHOLD of free heap is kept
# (see _keep_freed_memory_in_process).
MMAP_THRESHOLD = 64 * 2**20
TRIM_THRESHOLD = 256 * 2**20


# Initialization seeds torch's process-wide generator: engine threads take turns.
_GLOBAL_RNG = threading.Lock()


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines one trained model (with its task's data).

    The fields after ``epochs`` default to the original recipe. ``train_fraction`` is the share of
    the task's training images the model sees (a subset drawn from its seed); ``recipe_family``
    is a label (the config's recipe family), not part of training.
    """

    model_id: str
    task_id: str
    architecture: str
    arch_kwargs: dict[str, Any]
    seed: int
    lr: float
    weight_decay: float
    batch_size: int
    optimizer: str
    epochs: int
    schedule: str = "cosine"
    init: str = "default"
    augment: str = "none"
    label_smoothing: float = 0.0
    input_norm: str = "standard"
    train_fraction: float = 1.0
    recipe_family: str = "zoo"

    def __post_init__(self) -> None:
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("init", INITS),
                              ("augment", AUGMENTS), ("input_norm", INPUT_NORMS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model {self.model_id}: {name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"model {self.model_id}: invalid hyper-parameters {self}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(
                f"model {self.model_id}: label_smoothing must be in [0, 1) and train_fraction in "
                f"(0, 1]; got {self.label_smoothing} and {self.train_fraction}"
            )

    @property
    def num_classes(self) -> int:
        return int(self.arch_kwargs["num_classes"])

    def signature(self) -> str:
        """Architecture and kwargs except ``num_classes``: models that can share one stack."""
        kw = {k: v for k, v in self.arch_kwargs.items() if k != "num_classes"}
        return f"{self.architecture}:{canonical_kwargs(kw)}"


@dataclass
class TaskTensors:
    """A task's training and test data: ``x`` ``(n, C, H, W)`` float32, ``y`` ``(n,)`` int64.

    ``x`` is standardized (``modelset.tasks.task_data``); ``dataset`` names its source data set,
    needed only by models whose ``input_norm`` is not ``"standard"``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    dataset: str = ""


@dataclass
class TrainResult:
    """A trained model: its initial and final state dicts and its measured figures."""

    spec: TrainSpec
    init: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    test_accuracy: float
    train_loss: float  # mean training loss over the last epoch
    steps: int
    chance: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def below_chance(self) -> bool:
        """True when the model is not clearly better than guessing the majority class."""
        return self.test_accuracy <= self.chance + 0.02


def init_model(spec: TrainSpec) -> torch.nn.Module:
    """The model of ``spec`` initialized from its seed and ``spec.init`` scheme (independent of
    the global RNG state)."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):  # seeds the process-wide generator
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


class _Batches:
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


@functools.cache
def _keep_freed_memory_in_process() -> None:
    """Keep freed tensor memory in the process instead of handing it back to the kernel (glibc).

    A stacked step frees and re-allocates activations of several MB each. By default glibc
    serves such blocks with ``mmap`` or trims them off the heap when freed, and faulting their
    pages back in took more than a third of a step on the CPU. Process-wide and done once; a plain
    loop running later in the same process gets the same allocator.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (mallopt(m_mmap_threshold, MMAP_THRESHOLD) and mallopt(m_trim_threshold, TRIM_THRESHOLD)):
        log.debug("mallopt was refused; keeping the default allocator")


def _chance(y_test: torch.Tensor, num_classes: int) -> float:
    counts = torch.bincount(y_test, minlength=num_classes).float()
    return float(counts.max() / counts.sum()) if counts.sum() > 0 else 1.0 / num_classes


# --------------------------------------------------------------------------------------------
# The plain reference loop
# --------------------------------------------------------------------------------------------


def train_plain(spec: TrainSpec, data: TaskTensors, device: str = "cpu") -> TrainResult:
    """Train one model the ordinary way (``nn.Module`` + ``torch.optim``): the reference.

    Same initialization, data order, optimizer, schedule, augmentation, label smoothing, input
    normalization and training subset as the engine.
    """
    model = init_model(spec).to(device)
    init = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    if spec.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=spec.lr, momentum=MOMENTUM, weight_decay=spec.weight_decay)
    else:
        adam = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW
        opt = adam(params, lr=spec.lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=spec.weight_decay)
    batches = _Batches(spec, data.x_train.shape[0])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(spec.schedule, s, batches.total))
    model.train()
    losses: list[float] = []
    for step in range(batches.total):
        idx = batches.at(step)
        xb = convert_input_norm(data.x_train[idx], data.dataset, spec.input_norm)
        if spec.augment != "none":
            xb = augment_images(xb, *batches.augmentation(step))
        xb, yb = xb.to(device), data.y_train[idx].to(device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb, label_smoothing=spec.label_smoothing)
        loss.backward()
        opt.step()
        sched.step()
        if step >= batches.total - batches.spe:
            losses.append(loss.item())
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, data.x_test.shape[0], EVAL_BATCH):
            x = convert_input_norm(data.x_test[i : i + EVAL_BATCH], data.dataset, spec.input_norm)
            pred = model(x.to(device)).argmax(1).cpu()
            correct += int((pred == data.y_test[i : i + EVAL_BATCH]).sum())
    final = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    return TrainResult(
        spec,
        init,
        final,
        correct / max(1, data.x_test.shape[0]),
        sum(losses) / max(1, len(losses)),
        batches.total,
        _chance(data.y_test, data.num_classes),
    )


# --------------------------------------------------------------------------------------------
# Stacked forward kernels
# --------------------------------------------------------------------------------------------


class _FirstConv(torch.autograd.Function):
    """The first 3×3 convolution (padding 1) of ``M`` models, each on its own images.

    ``x`` ``(M, B, C, H, W)``, ``weight`` ``(M, O, C, 3, 3)``, ``bias`` ``(M, O)`` → ``(B, M*O,
    Ho, Wo)`` in channels-last layout, the input of the grouped layers that follow. With few
    input channels oneDNN's grouped convolution spent about a fifth of a CPU training step on this
    small layer; an im2col and one batched matmul over all models, written straight into the
    grouped layout, are faster forward and backward.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int
    ) -> torch.Tensor:
        m, b, c, h, w = x.shape
        o = weight.shape[1]
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        padded = F.pad(x, (1, 1, 1, 1))
        span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
        # Rows in the (c, ky, kx) order of the weight, then a row of ones that applies the bias:
        # adding it separately would be one more pass over the layer's largest activation.
        cols = x.new_empty(m, c * 9 + 1, b, ho, wo)
        taps_of = cols[:, :-1].view(m, c, 9, b, ho, wo)
        for ky in range(3):
            for kx in range(3):
                taps = padded[..., ky : ky + span_h : stride, kx : kx + span_w : stride]
                taps_of[:, :, 3 * ky + kx] = taps.transpose(1, 2)
        cols[:, -1] = 1.0
        cols = cols.view(m, c * 9 + 1, b * ho * wo)
        weight_and_bias = torch.cat([weight.reshape(m, o, c * 9), bias.unsqueeze(2)], 2)
        out = torch.empty(b, m * o, ho, wo, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        per_model = out.permute(0, 2, 3, 1).view(b * ho * wo, m, o).transpose(0, 1)  # (M, B*Ho*Wo, O)
        # In place with beta=0 (the empty memory is ignored): one matmul per model straight into
        # the strided view; bmm(out=) into a strided view takes a slow generic path instead.
        per_model.baddbmm_(cols.mT, weight_and_bias.mT, beta=0)
        ctx.save_for_backward(cols)
        ctx.w_shape = weight.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor, None]:
        (cols,) = ctx.saved_tensors
        m, o = ctx.w_shape[:2]
        per_model = grad.permute(0, 2, 3, 1).reshape(-1, m, o).transpose(0, 1)  # (M, B*Ho*Wo, O)
        grad_wb = torch.bmm(cols, per_model)  # (M, C*9 + 1, O)
        return None, grad_wb[:, :-1].mT.reshape(ctx.w_shape), grad_wb[:, -1], None


def _forward_cnn3(
    params: Mapping[str, torch.Tensor], x: torch.Tensor, kwargs: Mapping[str, Any]
) -> torch.Tensor:
    """SmallCNN for ``M`` models at once. ``x`` ``(M, B, C, H, W)`` → logits ``(M, B, K)``."""
    m, b = x.shape[:2]
    strides = list(kwargs.get("strides", (2, 2, 1)))
    h = _FirstConv.apply(x, params["conv1.weight"], params["conv1.bias"], strides[0])
    h = torch.relu_(h)  # in place: saves a full-size activation per layer
    # Models side by side along channels: (B, M*C, H, W); groups=M keeps them independent.
    for i, stride in enumerate(strides[1:], start=2):
        w = params[f"conv{i}.weight"]
        bias = params[f"conv{i}.bias"]
        h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1), stride=stride, padding=1, groups=m)
        h = torch.relu_(h)
    feats = h.mean(dim=(2, 3)).view(b, m, -1).transpose(0, 1)  # (M, B, channels)
    return torch.baddbmm(params["head.bias"].unsqueeze(1), feats, params["head.weight"].mT)


class _Stack:
    """Stacked parameters, buffers and optimizer state of the models being trained.

    All parameters of a model are one row of ``flat`` ``(M, P)`` (heads padded to ``kmax``
    classes), so the optimizer updates every model and parameter in a few tensor operations;
    :attr:`params` gives each parameter as an ``(M, *shape)`` view of those rows.
    """

    def __init__(
        self,
        specs: list[TrainSpec],
        device: torch.device,
        inits: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        data: Mapping[str, TaskTensors] | None = None,
    ) -> None:
        self.specs = specs
        self.arch = specs[0].architecture
        self.kmax = max(s.num_classes for s in specs)
        kw = dict(specs[0].arch_kwargs, num_classes=self.kmax)
        self.kwargs = kw
        models = [init_model(s) for s in specs]
        for spec, mdl in zip(specs, models):
            if inits and spec.model_id in inits:
                _load_matching(mdl, inits[spec.model_id])
        self.inits = [{k: v.detach().clone() for k, v in mdl.state_dict().items()} for mdl in models]
        self.param_names = [n for n, _ in models[0].named_parameters()]
        self.buffer_names = [n for n, _ in models[0].named_buffers()]
        stacked = [self._stack([dict(mdl.named_parameters())[n] for mdl in models]) for n in self.param_names]
        self.param_shapes = [tuple(t.shape[1:]) for t in stacked]
        self.param_sizes = [t[0].numel() for t in stacked]
        self.flat = torch.cat([t.reshape(len(specs), -1) for t in stacked], 1).to(device).requires_grad_()
        self.buffers = {
            name: self._stack([dict(mdl.named_buffers())[name] for mdl in models]).to(device)
            for name in self.buffer_names
        }
        if self.arch != "cnn3":
            # vmap needs a template module of the padded shape; "meta" avoids allocating it, and
            # the lock keeps its initialization off another thread's seeded generator.
            with _GLOBAL_RNG, torch.device("meta"):
                self.template = build_architecture(self.arch, kw)
        self.class_mask = torch.zeros(len(specs), 1, self.kmax, device=device)
        for i, s in enumerate(specs):
            self.class_mask[i, 0, s.num_classes :] = float("-inf")
        # Optimizer state for every model; rows of the other optimizer are simply unused.
        self.momentum = torch.zeros_like(self.flat)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
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
        # Recipe knobs that cost work per step exist only when some model uses them, so a stack
        # of the original recipe runs exactly the original operations.
        self.in_scale: torch.Tensor | None = None
        self.in_shift: torch.Tensor | None = None
        if any(s.input_norm != "standard" for s in specs):
            self.in_scale, self.in_shift = _input_affines(specs, data or {}, device)
        self.smoothing: torch.Tensor | None = None
        if any(s.label_smoothing > 0 for s in specs):
            self.smoothing = torch.tensor([s.label_smoothing for s in specs], device=device)
        self.own_classes = torch.tensor([s.num_classes for s in specs], device=device)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized ``x`` ``(M, B, C, H, W)`` in each model's input normalization."""
        if self.in_scale is None:
            return x
        return x * self.in_scale + self.in_shift

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-model mean training loss ``(M,)`` of masked ``logits`` ``(M, B, K)``, ``y`` ``(M, B)``."""
        if self.smoothing is not None:
            return smoothed_cross_entropy(logits, y, self.smoothing, self.own_classes)
        m, b, k = logits.shape
        per_model = F.cross_entropy(logits.reshape(m * b, k), y.reshape(-1), reduction="none")
        return per_model.view(m, b).mean(1)

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Stack along a new dim 0, zero-padding dim 0 of head tensors to ``kmax`` classes."""
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:  # only the class dimension (dim 0) of the head may differ
            out = torch.zeros(len(tensors), self.kmax, *tensors[0].shape[1:], dtype=tensors[0].dtype)
            for i, t in enumerate(tensors):
                out[i, : t.shape[0]] = t.detach()
            return out
        return torch.stack([t.detach() for t in tensors])

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Each parameter as an ``(M, *shape)`` view of the rows of ``flat``."""
        chunks = self.flat.split(self.param_sizes, dim=1)
        return {
            name: chunk.view(chunk.shape[0], *shape)
            for name, chunk, shape in zip(self.param_names, chunks, self.param_shapes)
        }

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """``x`` ``(M, B, C, H, W)`` → masked logits ``(M, B, kmax)``."""
        if self.arch == "cnn3":
            logits = _forward_cnn3(self.params, x, self.kwargs)
        else:
            tmpl = self.template.train(train)

            def one(p: dict, bufs: dict, xb: torch.Tensor) -> torch.Tensor:
                return functional_call(tmpl, (p, bufs), (xb,))

            logits = vmap(one)(self.params, self.buffers, x)
        return logits + self.class_mask

    @torch.no_grad()
    def step(self, step_no: int, lr_factor: torch.Tensor) -> None:
        """One optimizer step (``step_no`` counts from 1) with per-model ``lr_factor`` ``(M,)``.

        SGD: ``buf = 0.9 buf + g``, ``p -= lr buf``; Adam: bias-corrected moments; both with L2
        weight decay added to the gradient, as ``torch.optim`` does. AdamW: Adam's moments of the
        bare gradient, and ``p *= 1 - lr wd`` before the update (``torch.optim.AdamW``).
        """
        b1, b2 = ADAM_BETAS
        any_adam = bool(self.is_adam.any())
        any_sgd = not bool(self.is_adam.all())
        p = self.flat
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
        """Keep only the models at positions ``keep`` (finished ones leave the stack)."""
        self.specs = [self.specs[i] for i in keep.tolist()]
        self.inits = [self.inits[i] for i in keep.tolist()]
        self.momentum, self.exp_avg = self.momentum[keep], self.exp_avg[keep]
        self.exp_avg_sq = self.exp_avg_sq[keep]
        self.buffers = {k: v[keep] for k, v in self.buffers.items()}
        self.flat = self.flat.detach()[keep].requires_grad_()
        self.class_mask = self.class_mask[keep]
        self.lr, self.wd, self.is_adam = self.lr[keep], self.wd[keep], self.is_adam[keep]
        self.own_classes = self.own_classes[keep]
        if self.wd_decoupled is not None:
            self.wd_decoupled = self.wd_decoupled[keep]
        if self.smoothing is not None:
            self.smoothing = self.smoothing[keep]
        if self.in_scale is not None:
            self.in_scale, self.in_shift = self.in_scale[keep], self.in_shift[keep]

    def subset(self, positions: list[int]) -> _Stack:
        """The models at ``positions``, detached from autograd (for evaluation and results)."""
        idx = torch.tensor(positions, device=self.flat.device)
        sub = copy.copy(self)
        sub.flat = self.flat.detach()[idx]
        sub.buffers = {k: v[idx] for k, v in self.buffers.items()}
        sub.class_mask = self.class_mask[idx]
        sub.specs = [self.specs[j] for j in positions]
        sub.inits = [self.inits[j] for j in positions]
        if self.in_scale is not None:
            sub.in_scale, sub.in_shift = self.in_scale[idx], self.in_shift[idx]
        return sub

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Model ``i``'s state dict, head cut back to its own classes, on the CPU."""
        k = self.specs[i].num_classes
        out: dict[str, torch.Tensor] = {}
        params = self.params
        for name in self.inits[i]:
            src = params[name] if name in params else self.buffers[name]
            t = src[i].detach()
            ref = self.inits[i][name]
            if t.shape != ref.shape:
                t = t[:k]
            out[name] = t.clone().cpu()
        return out


def _input_affines(
    specs: list[TrainSpec], data: Mapping[str, TaskTensors], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model ``(scale, shift)``, each ``(M, 1, C, 1, 1)``: standardized inputs → the model's."""
    scales, shifts = [], []
    for s in specs:
        d = data[s.task_id]
        if s.input_norm == "standard":
            c = d.x_train.shape[1]
            scale, shift = torch.ones(c), torch.zeros(c)
        else:
            scale, shift = input_norm_affine(d.dataset, s.input_norm)
        scales.append(scale)
        shifts.append(shift)
    m, c = len(specs), scales[0].shape[0]
    return (torch.stack(scales).view(m, 1, c, 1, 1).to(device),
            torch.stack(shifts).view(m, 1, c, 1, 1).to(device))  # fmt: skip


def _load_matching(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Start ``model`` from ``state`` where shapes agree (fine-tuning: a head of another size
    keeps its fresh seeded initialization)."""
    own = model.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v)


def _check_group(specs: list[TrainSpec], data: Mapping[str, TaskTensors]) -> None:
    if not specs:
        raise ValueError("no models to train")
    sigs = {s.signature() for s in specs}
    if len(sigs) != 1:
        raise ValueError(f"models of one engine call must share an architecture; got {sorted(sigs)}")
    first = specs[0]
    layers = {k: first.arch_kwargs.get(k, plain) for k, plain in CNN3_PLAIN_LAYERS.items()}
    if first.architecture == "cnn3" and layers != CNN3_PLAIN_LAYERS:
        # The stacked cnn3 kernel is plain strided convolutions; anything else would train silently wrong.
        raise ValueError(
            f"model {first.model_id}: the engine trains cnn3 with plain strided convolutions, not "
            f"{layers}; NSL and shape-adaptor models are trained by their variant recipes"
        )
    sizes = {s.batch_size for s in specs}
    if len(sizes) != 1:
        raise ValueError(f"models of one engine call must share a batch size; got {sorted(sizes)}")
    for s in specs:
        if s.task_id not in data:
            raise KeyError(f"model {s.model_id}: no data for task {s.task_id!r}")
        if data[s.task_id].num_classes != s.num_classes:
            raise ValueError(
                f"model {s.model_id}: num_classes {s.num_classes} but task {s.task_id} has "
                f"{data[s.task_id].num_classes}"
            )
        if s.input_norm != "standard" and not data[s.task_id].dataset:
            raise ValueError(
                f"model {s.model_id}: input_norm {s.input_norm!r} needs the data set of task "
                f"{s.task_id} (TaskTensors.dataset) to undo its standardization"
            )


def train_models(
    specs: Iterable[TrainSpec],
    data: Mapping[str, TaskTensors],
    runtime: Runtime | None = None,
    *,
    progress: bool = True,
    inits: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> list[TrainResult]:
    """Train every model of ``specs`` at once; results in the order of ``specs``.

    All specs must share an architecture (apart from ``num_classes``) and a batch size; tasks
    may differ. ``data`` maps task id → :class:`TaskTensors`. ``inits`` optionally maps a model id
    to a state dict to start from (fine-tuning).

    ``runtime`` (default: ``Runtime("cpu")``) gives the device and, on the CPU, the number of
    stacks (``runtime.n_workers``): the models are split into that many stacks,
    each trained by its own thread with single-threaded kernels: the small kernels of these models
    leave a core half idle when one call is split across threads, while separate stacks keep every
    core busy. Training is deterministic on the CPU for a given list of specs and worker count.
    """
    specs = list(specs)
    _check_group(specs, data)
    runtime = runtime if runtime is not None else Runtime("cpu")
    dev = runtime.torch_device
    if dev.type == "cpu":
        _keep_freed_memory_in_process()
    parts = split_by_steps(specs, data, runtime.n_workers)
    t0 = time.perf_counter()
    # Counts model-steps, so the time left holds while stacks shrink; the postfix counts models.
    bar = tqdm(total=sum(_steps(specs, data)), desc=f"engine {specs[0].architecture}×{len(specs)}",
               unit="model-step", unit_scale=True, disable=not progress, leave=False)  # fmt: skip
    lock, stop = threading.Lock(), threading.Event()
    finished = 0

    def advance(model_steps: int, models_done: int) -> None:
        nonlocal finished
        if stop.is_set():
            raise _Stopped
        with lock:
            bar.update(model_steps)
            if models_done:
                finished += models_done
                bar.set_postfix(models_done=f"{finished}/{len(specs)}")

    if len(parts) == 1:
        trained = [_train_stack(specs, data, dev, inits, advance)]
    else:
        with Runtime.worker_threads(1), ThreadPoolExecutor(len(parts), "engine") as pool:
            futures = [
                pool.submit(_train_stack, [specs[i] for i in part], data, dev, inits, advance)
                for part in parts
            ]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    if future.done() and future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
            except BaseException:  # a failed stack or Ctrl-C: the other stacks stop at their next step
                stop.set()
                raise
            trained = [f.result() for f in futures]
    bar.close()
    results: dict[int, TrainResult] = {}
    for part, part_results in zip(parts, trained):
        results.update(zip(part, part_results))
    log.info("trained %d %s models in %.1fs with %d worker(s)", len(specs), specs[0].architecture,
             time.perf_counter() - t0, len(parts))  # fmt: skip
    return [results[i] for i in range(len(specs))]


class _Stopped(Exception):
    """Raised in a worker thread when another stack failed or the caller was interrupted."""


def split_by_steps(specs: list[TrainSpec], data: Mapping[str, TaskTensors], parts: int) -> list[list[int]]:
    """Positions of ``specs`` in at most ``parts`` groups of about equal training steps.

    Longest first, each to the least loaded group (ties to the first): deterministic, so a build
    with a fixed worker count stacks the same models together every time.
    """
    steps = _steps(specs, data)
    groups: list[list[int]] = [[] for _ in range(min(parts, len(specs)))]
    load = [0] * len(groups)
    for i in sorted(range(len(specs)), key=lambda i: -steps[i]):
        g = load.index(min(load))
        groups[g].append(i)
        load[g] += steps[i]
    return [sorted(g) for g in groups]


def _steps(specs: list[TrainSpec], data: Mapping[str, TaskTensors]) -> list[int]:
    """Training steps of each model."""
    return [_Batches(s, data[s.task_id].x_train.shape[0]).total for s in specs]


def _train_stack(
    specs: list[TrainSpec],
    data: Mapping[str, TaskTensors],
    dev: torch.device,
    inits: Mapping[str, Mapping[str, torch.Tensor]] | None,
    advance: Callable[[int, int], None],
) -> list[TrainResult]:
    """Train ``specs`` in lock step as one stack; results in the order of ``specs``."""
    single = threading.current_thread() is not threading.main_thread()
    with Runtime.worker_threads(1) if single else contextlib.nullcontext():
        return _train_stack_here(specs, data, dev, inits, advance)


def _train_stack_here(
    specs: list[TrainSpec],
    data: Mapping[str, TaskTensors],
    dev: torch.device,
    inits: Mapping[str, Mapping[str, torch.Tensor]] | None,
    advance: Callable[[int, int], None],
) -> list[TrainResult]:
    # All tasks' training images in one tensor; a model's batch is an offset into it.
    task_ids = sorted({s.task_id for s in specs})
    offsets, xs, ys = {}, [], []
    pos = 0
    for t in task_ids:
        offsets[t] = pos
        xs.append(data[t].x_train)
        ys.append(data[t].y_train)
        pos += data[t].x_train.shape[0]
    x_all, y_all = torch.cat(xs).to(dev), torch.cat(ys).to(dev)

    stack = _Stack(specs, dev, inits, data)
    batches = [_Batches(s, data[s.task_id].x_train.shape[0]) for s in specs]
    order = list(range(len(specs)))  # positions in ``specs`` of the models still in the stack
    results: dict[int, TrainResult] = {}
    last_losses: dict[int, list[float]] = {i: [] for i in order}
    for step in range(max(b.total for b in batches)):
        idx = torch.stack([batches[i].at(step) + offsets[specs[i].task_id] for i in order]).to(dev)  # (M, B)
        xb, yb = stack.inputs(x_all[idx]), y_all[idx]  # (M, B, C, H, W), (M, B)
        augmented = [j for j, i in enumerate(order) if specs[i].augment != "none"]
        if augmented:
            xb = _augment_stack(xb, [batches[order[j]] for j in augmented], augmented, step)
        per_model = stack.loss(stack.forward(xb, train=True), yb)
        per_model.sum().backward()  # models are independent: each gets its own gradient
        factors = [lr_factor(specs[i].schedule, step, batches[i].total) for i in order]
        stack.step(step + 1, torch.tensor(factors, device=dev))
        for i, loss in zip(order, per_model.detach().tolist()):
            if step >= batches[i].total - batches[i].spe:
                last_losses[i].append(loss)
        done = [j for j, i in enumerate(order) if batches[i].total == step + 1]
        advance(len(order), len(done))
        if done:
            _finish(stack, done, order, data, results, last_losses, batches, dev)
            keep = [j for j in range(len(order)) if j not in done]
            order = [order[j] for j in keep]
            if order:
                stack.select(torch.tensor(keep, device=dev))
    return [results[i] for i in range(len(specs))]


def _augment_stack(
    xb: torch.Tensor, batches: list[_Batches], positions: list[int], step: int
) -> torch.Tensor:
    """``xb`` ``(M, B, C, H, W)`` with the models at ``positions`` augmented by their own draws."""
    draws = [b.augmentation(step) for b in batches]
    shifts = torch.cat([d[0] for d in draws])
    flips = torch.cat([d[1] for d in draws])
    m, b = xb.shape[:2]
    if len(positions) == m:
        return augment_images(xb.reshape(m * b, *xb.shape[2:]), shifts, flips).view(xb.shape)
    pos = torch.tensor(positions, device=xb.device)
    xb[pos] = augment_images(xb[pos].reshape(len(positions) * b, *xb.shape[2:]), shifts, flips).view(
        len(positions), b, *xb.shape[2:]
    )
    return xb


@torch.no_grad()
def _finish(
    stack: _Stack,
    done: list[int],
    order: list[int],
    data: Mapping[str, TaskTensors],
    results: dict[int, TrainResult],
    last_losses: dict[int, list[float]],
    batches: list[_Batches],
    dev: torch.device,
) -> None:
    """Evaluate the finished models (stack positions ``done``) and record their results."""
    sub = stack.subset(done)
    accs = evaluate_stack(sub, data, dev)
    for pos, j in enumerate(done):
        i = order[j]
        spec = stack.specs[j]
        d = data[spec.task_id]
        losses = last_losses[i]
        results[i] = TrainResult(
            spec,
            {k: v.cpu() for k, v in stack.inits[j].items()},
            sub.state_dict(pos),
            accs[pos],
            sum(losses) / max(1, len(losses)),
            batches[i].total,
            _chance(d.y_test, d.num_classes),
        )


@torch.no_grad()
def evaluate_stack(stack: _Stack, data: Mapping[str, TaskTensors], dev: torch.device) -> list[float]:
    """Test accuracy of each model of ``stack`` on its own task's test set (eval mode)."""
    correct = [0] * len(stack.specs)
    for task in sorted({s.task_id for s in stack.specs}):
        members = [j for j, s in enumerate(stack.specs) if s.task_id == task]
        sub = stack.subset(members)
        d = data[task]
        chunk = max(1, EVAL_IMAGES_PER_CALL // len(members))
        for i in range(0, d.x_test.shape[0], chunk):
            xb = d.x_test[i : i + chunk].to(dev)
            x = sub.inputs(xb.unsqueeze(0).expand(len(members), *xb.shape))
            logits = sub.forward(x, train=False)
            pred = logits.argmax(-1).cpu()  # (m, b)
            hits = (pred == d.y_test[i : i + chunk]).sum(1)
            for pos, j in enumerate(members):
                correct[j] += int(hits[pos])
    return [c / max(1, data[s.task_id].x_test.shape[0]) for c, s in zip(correct, stack.specs)]
