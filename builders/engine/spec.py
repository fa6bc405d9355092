"""What the engine is given and what it returns: a model's recipe (:class:`TrainSpec`), a task's
data (:class:`TaskTensors`), a trained model (:class:`TrainResult`), and the recipe's choices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from modelset.architectures import canonical_kwargs
from modelset.tasks import INPUT_NORMS

OPTIMIZERS = ("sgd", "adam", "adamw")
MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
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


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines one trained model (with its task's data).

    The fields after ``epochs`` default to the original recipe. ``train_fraction`` is the share of
    the task's training images the model sees (a subset drawn from its seed); ``recipe_family``
    is a label (the config's recipe family), not part of training. ``checkpoint_epochs`` lists the
    epochs (``1 <= e < epochs``) after which the parameters are also kept, as checkpoints named
    ``epoch_{e}`` beside ``init`` and ``final`` (a training trajectory; training is unchanged).
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
    checkpoint_epochs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint_epochs", tuple(self.checkpoint_epochs))
        bad = [e for e in self.checkpoint_epochs if type(e) is not int or not 1 <= e < self.epochs]
        if bad or len(set(self.checkpoint_epochs)) != len(self.checkpoint_epochs):
            raise ValueError(
                f"model {self.model_id}: checkpoint_epochs must be distinct epochs from 1 to "
                f"{self.epochs - 1} (the last epoch is the final checkpoint), got {self.checkpoint_epochs}"
            )
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


@dataclass(frozen=True)
class TaskTensors:
    """A task's training and test data: ``x_*`` ``(n, C, H, W)`` float32, ``y_*`` ``(n,)`` int64.

    ``x`` is standardized (``modelset.tasks.task_data``); ``dataset`` names its source data set,
    needed only by models whose ``input_norm`` is not ``"standard"``. The engine, the transfer
    protocol and the variant recipes all take this one type.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    dataset: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one image."""
        return tuple(self.x_train.shape[1:])

    def train_subset(self, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` training examples drawn without replacement with ``seed`` (all if ``n`` is None)."""
        if n is None or n >= len(self.y_train):
            return self.x_train, self.y_train
        idx = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(seed))[:n]
        return self.x_train[idx], self.y_train[idx]


def checkpoint_name(epoch: int) -> str:
    """The name of the checkpoint kept after ``epoch`` (``spec.checkpoint_epochs``)."""
    return f"epoch_{epoch}"


@dataclass
class TrainResult:
    """A trained model: its initial and final state dicts and its measured figures.

    With ``spec.checkpoint_epochs``, ``checkpoints`` holds the state dict kept after each of those
    epochs (by :func:`checkpoint_name`) and ``trajectory`` the figures of every checkpoint,
    ``init`` and ``final`` included: ``{name: {"epoch", "step", "test_accuracy", "train_loss"}}``
    (``train_loss``: the mean over that epoch; ``None`` for ``init``). Both are empty otherwise.
    """

    spec: TrainSpec
    init: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    test_accuracy: float
    train_loss: float  # mean training loss over the last epoch
    steps: int
    chance: float
    extra: dict[str, Any] = field(default_factory=dict)
    checkpoints: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    trajectory: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def below_chance(self) -> bool:
        """True when the model is not clearly better than guessing the majority class."""
        return self.test_accuracy <= self.chance + 0.02
