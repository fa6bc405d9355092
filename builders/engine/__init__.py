"""The multi-model training engine: trains many models of one architecture in lock step.

The parameters of ``M`` models are stacked with a leading model dimension; one forward pass
computes all of them on their own batches, the summed loss is differentiated once, and one
vectorized optimizer step updates every model with its own recipe (:class:`TrainSpec`): optimizer
(:data:`OPTIMIZERS`), learning-rate schedule (:data:`SCHEDULES`), initialization (:data:`INITS`),
batch augmentation (:data:`AUGMENTS`), label smoothing, input normalization
(``modelset.tasks.INPUT_NORMS``) and the fraction of its task's training images it sees. The
defaults are the original recipe and run exactly the original operations.

Modules, one job each:

* :mod:`~builders.engine.spec`: what goes in and comes out (:class:`TrainSpec`,
  :class:`TaskTensors`, :class:`TrainResult`) and the recipe's choices;
* :mod:`~builders.engine.recipe`: a recipe carried out, shared by both loops (initialization,
  data order, schedule, augmentation, label-smoothed loss);
* :mod:`~builders.engine.plain`: :func:`train_plain`, the ordinary one-model loop, the reference;
* :mod:`~builders.engine.stack`: a stack of models trained in lock step;
* :mod:`~builders.engine.kernels`: stacked forward kernels by architecture (cnn3's own, ``vmap``
  for the rest);
* :mod:`~builders.engine.optimizer`: SGD / Adam / AdamW for a whole stack in one step;
* :mod:`~builders.engine.evaluation`: test accuracy of a stack or a model, and chance;
* :mod:`~builders.engine.memory`: the process's allocator setting for stacked training;
* :mod:`~builders.engine.parallel`: :func:`train_models`, stacks split over worker threads.
"""

from __future__ import annotations

from builders.engine.evaluation import EVAL_BATCH, EVAL_IMAGES_PER_CALL, evaluate_stack
from builders.engine.kernels import CNN3_PLAIN_LAYERS
from builders.engine.memory import MMAP_THRESHOLD, TRIM_THRESHOLD
from builders.engine.parallel import split_by_steps, train_models
from builders.engine.plain import train_plain
from builders.engine.recipe import (
    apply_init,
    augment_images,
    cosine_factor,
    data_generator,
    init_model,
    lr_factor,
    smoothed_cross_entropy,
    steps_per_epoch,
    train_images,
)
from builders.engine.spec import (
    ADAM_BETAS,
    ADAM_EPS,
    AUGMENTS,
    INITS,
    MOMENTUM,
    OPTIMIZERS,
    SCHEDULES,
    SHIFT_PIXELS,
    STEP_GAMMA,
    STEP_MILESTONES,
    WARMUP_FRACTION,
    TaskTensors,
    TrainResult,
    TrainSpec,
    checkpoint_name,
)

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "AUGMENTS",
    "CNN3_PLAIN_LAYERS",
    "EVAL_BATCH",
    "EVAL_IMAGES_PER_CALL",
    "INITS",
    "MMAP_THRESHOLD",
    "MOMENTUM",
    "OPTIMIZERS",
    "SCHEDULES",
    "SHIFT_PIXELS",
    "STEP_GAMMA",
    "STEP_MILESTONES",
    "TRIM_THRESHOLD",
    "WARMUP_FRACTION",
    "TaskTensors",
    "TrainResult",
    "TrainSpec",
    "apply_init",
    "augment_images",
    "checkpoint_name",
    "cosine_factor",
    "data_generator",
    "evaluate_stack",
    "init_model",
    "lr_factor",
    "smoothed_cross_entropy",
    "split_by_steps",
    "steps_per_epoch",
    "train_images",
    "train_models",
    "train_plain",
]
