"""Test accuracy of trained models: a stack of models on their own tasks, one model alone, and
the chance level a model must clear."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from builders.engine.spec import TaskTensors, TrainSpec
from modelset.tasks import convert_input_norm

if TYPE_CHECKING:
    from builders.engine.stack import Stack

#: Test images per forward pass of one model (the reference loop).
EVAL_BATCH = 1000
# Test images per model and stacked eval call: all models' activations stay cache-sized.
EVAL_IMAGES_PER_CALL = 512


@torch.no_grad()
def evaluate_stack(stack: Stack, data: Mapping[str, TaskTensors], dev: torch.device) -> list[float]:
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


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, spec: TrainSpec, data: TaskTensors, device: str = "cpu") -> float:
    """Test accuracy of one ``model`` (put in eval mode) on ``data``'s test set, in ``spec``'s
    input normalization."""
    model.eval()
    correct = 0
    for i in range(0, data.x_test.shape[0], EVAL_BATCH):
        x = convert_input_norm(data.x_test[i : i + EVAL_BATCH], data.dataset, spec.input_norm)
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == data.y_test[i : i + EVAL_BATCH]).sum())
    return correct / max(1, data.x_test.shape[0])


def chance(y_test: torch.Tensor, num_classes: int) -> float:
    """Accuracy of always guessing the majority class of ``y_test`` ``(n,)``."""
    counts = torch.bincount(y_test, minlength=num_classes).float()
    return float(counts.max() / counts.sum()) if counts.sum() > 0 else 1.0 / num_classes
