"""The reference: one model at a time, the ordinary way (``nn.Module`` + ``torch.optim``).

The stacked engine is tested against this loop; both take a model's initialization, data order
and augmentation from :mod:`builders.engine.recipe`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from builders.engine.evaluation import chance, evaluate_model
from builders.engine.recipe import Batches, augment_images, init_model, lr_factor
from builders.engine.spec import (
    ADAM_BETAS,
    ADAM_EPS,
    MOMENTUM,
    TaskTensors,
    TrainResult,
    TrainSpec,
    checkpoint_name,
)
from modelset.tasks import convert_input_norm


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
    batches = Batches(spec, data.x_train.shape[0])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(spec.schedule, s, batches.total))
    trajectory: dict[str, dict] = {}
    kept: dict[str, dict[str, torch.Tensor]] = {}
    if spec.checkpoint_epochs:
        trajectory["init"] = {"epoch": 0, "step": 0, "test_accuracy": evaluate_model(model, spec, data, device),
                              "train_loss": None}  # fmt: skip
    keep_at = {e * batches.spe: e for e in spec.checkpoint_epochs}
    epoch_losses: list[float] = []  # the epoch under way; the last epoch's is the train_loss
    model.train()
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
        if step % batches.spe == 0:
            epoch_losses = []
        epoch_losses.append(loss.item())
        if step + 1 in keep_at:
            name = checkpoint_name(keep_at[step + 1])
            kept[name] = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            trajectory[name] = {"epoch": keep_at[step + 1], "step": step + 1,
                                "test_accuracy": evaluate_model(model, spec, data, device),
                                "train_loss": sum(epoch_losses) / len(epoch_losses)}  # fmt: skip
            model.train()
    accuracy = evaluate_model(model, spec, data, device)
    final = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    result = TrainResult(
        spec,
        init,
        final,
        accuracy,
        sum(epoch_losses) / max(1, len(epoch_losses)),
        batches.total,
        chance(data.y_test, data.num_classes),
    )
    if spec.checkpoint_epochs:
        result.checkpoints = kept
        result.trajectory = {**trajectory, "final": {"epoch": spec.epochs, "step": batches.total,
                                                     "test_accuracy": accuracy, "train_loss": result.train_loss}}  # fmt: skip
    return result
