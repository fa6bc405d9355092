"""A stack: ``M`` models of one architecture trained in lock step.

The parameters of the models are stacked into tensors with a leading model dimension. One forward
pass (the architecture's kernel, :mod:`builders.engine.kernels`) computes all ``M`` models on their
own batches (each model has its own task, data order, initialization and recipe), the summed loss
is differentiated once, and one step of :class:`~builders.engine.optimizer.StackedOptimizer`
updates all models.

Heads of models with fewer classes than the widest one are zero-padded and their extra logits
masked to ``-inf``, so the padded rows get zero gradient and stay zero: models of tasks with
different numbers of classes train together, and the padding is cut off when results are returned.
Models leave the stack when their last step is done, so models with fewer epochs cost less.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from builders.engine.evaluation import chance, evaluate_stack
from builders.engine.kernels import kernel_for
from builders.engine.optimizer import StackedOptimizer
from builders.engine.recipe import Batches, augment_images, init_model, lr_factor, smoothed_cross_entropy
from builders.engine.spec import TaskTensors, TrainResult, TrainSpec, checkpoint_name
from modelset.tasks import input_norm_affine


class Stack:
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
        self.kernel = kernel_for(self.arch)(self.arch, kw)
        self.class_mask = torch.zeros(len(specs), 1, self.kmax, device=device)
        for i, s in enumerate(specs):
            self.class_mask[i, 0, s.num_classes :] = float("-inf")
        self.optimizer = StackedOptimizer(specs, self.flat)
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
        return self.kernel(self.params, self.buffers, x, train) + self.class_mask

    def step(self, step_no: int, lr_factor: torch.Tensor) -> None:
        """One optimizer step (``step_no`` counts from 1) with per-model ``lr_factor`` ``(M,)``."""
        self.optimizer.step(self.flat, step_no, lr_factor)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the models at positions ``keep`` (finished ones leave the stack)."""
        self.specs = [self.specs[i] for i in keep.tolist()]
        self.inits = [self.inits[i] for i in keep.tolist()]
        self.optimizer.select(keep)
        self.buffers = {k: v[keep] for k, v in self.buffers.items()}
        self.flat = self.flat.detach()[keep].requires_grad_()
        self.class_mask = self.class_mask[keep]
        self.own_classes = self.own_classes[keep]
        if self.smoothing is not None:
            self.smoothing = self.smoothing[keep]
        if self.in_scale is not None:
            self.in_scale, self.in_shift = self.in_scale[keep], self.in_shift[keep]

    def subset(self, positions: list[int]) -> Stack:
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


def train_stack(
    specs: list[TrainSpec],
    data: Mapping[str, TaskTensors],
    dev: torch.device,
    inits: Mapping[str, Mapping[str, torch.Tensor]] | None,
    advance: Callable[[int, int], None],
) -> list[TrainResult]:
    """Train ``specs`` in lock step as one stack in this thread; results in the order of ``specs``.

    ``advance(model_steps, models_done)`` is called after every step (progress, and the point
    where a stopped run raises).
    """
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

    stack = Stack(specs, dev, inits, data)
    batches = [Batches(s, data[s.task_id].x_train.shape[0]) for s in specs]
    order = list(range(len(specs)))  # positions in ``specs`` of the models still in the stack
    results: dict[int, TrainResult] = {}
    # Training loss of the epoch under way (the last epoch's is the model's train_loss).
    epoch_losses: dict[int, list[float]] = {i: [] for i in order}
    # Trajectories: the step after which each kept epoch ends, and the figures gathered so far.
    keep_at = [{e * b.spe: e for e in s.checkpoint_epochs} for s, b in zip(specs, batches)]
    kept: dict[int, dict[str, dict[str, torch.Tensor]]] = {i: {} for i in order}
    trajectory: dict[int, dict[str, dict]] = {i: {} for i in order}
    traced = [j for j, i in enumerate(order) if specs[i].checkpoint_epochs]
    if traced:
        _keep(stack, traced, order, data, dev, kept, trajectory, epoch=0, step=0, losses=None)
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
            if step % batches[i].spe == 0:
                epoch_losses[i] = []
            epoch_losses[i].append(loss)
        due: dict[int, list[int]] = {}  # epoch → stack positions whose run ends it now: one eval each
        for j, i in enumerate(order):
            if step + 1 in keep_at[i]:
                due.setdefault(keep_at[i][step + 1], []).append(j)
        for epoch, positions in due.items():
            _keep(stack, positions, order, data, dev, kept, trajectory, epoch=epoch, step=step + 1, losses=epoch_losses)
        done = [j for j, i in enumerate(order) if batches[i].total == step + 1]
        advance(len(order), len(done))
        if done:
            _finish(stack, done, order, data, results, epoch_losses, batches, dev)
            for j in done:
                i = order[j]
                if specs[i].checkpoint_epochs:
                    r = results[i]
                    r.checkpoints = kept.pop(i)
                    r.trajectory = {**trajectory.pop(i), "final": {
                        "epoch": specs[i].epochs, "step": r.steps, "test_accuracy": r.test_accuracy,
                        "train_loss": r.train_loss}}  # fmt: skip
            keep = [j for j in range(len(order)) if j not in done]
            order = [order[j] for j in keep]
            if order:
                stack.select(torch.tensor(keep, device=dev))
    return [results[i] for i in range(len(specs))]


def _augment_stack(
    xb: torch.Tensor, batches: list[Batches], positions: list[int], step: int
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
def _keep(
    stack: Stack,
    positions: list[int],
    order: list[int],
    data: Mapping[str, TaskTensors],
    dev: torch.device,
    kept: dict[int, dict[str, dict[str, torch.Tensor]]],
    trajectory: dict[int, dict[str, dict]],
    epoch: int,
    step: int,
    losses: dict[int, list[float]] | None,
) -> None:
    """Keep the parameters of the models at stack ``positions`` after ``epoch`` (0: their
    initialization) with their test accuracy and the epoch's mean training loss."""
    sub = stack.subset(positions)
    accs = evaluate_stack(sub, data, dev)
    for pos, j in enumerate(positions):
        i = order[j]
        name = "init" if epoch == 0 else checkpoint_name(epoch)
        if epoch:
            kept[i][name] = sub.state_dict(pos)
        epoch_loss = losses[i] if losses is not None else []
        trajectory[i][name] = {"epoch": epoch, "step": step, "test_accuracy": accs[pos],
                               "train_loss": sum(epoch_loss) / len(epoch_loss) if epoch_loss else None}  # fmt: skip


@torch.no_grad()
def _finish(
    stack: Stack,
    done: list[int],
    order: list[int],
    data: Mapping[str, TaskTensors],
    results: dict[int, TrainResult],
    epoch_losses: dict[int, list[float]],
    batches: list[Batches],
    dev: torch.device,
) -> None:
    """Evaluate the finished models (stack positions ``done``) and record their results."""
    sub = stack.subset(done)
    accs = evaluate_stack(sub, data, dev)
    for pos, j in enumerate(done):
        i = order[j]
        spec = stack.specs[j]
        d = data[spec.task_id]
        losses = epoch_losses[i]
        results[i] = TrainResult(
            spec,
            {k: v.cpu() for k, v in stack.inits[j].items()},
            sub.state_dict(pos),
            accs[pos],
            sum(losses) / max(1, len(losses)),
            batches[i].total,
            chance(d.y_test, d.num_classes),
        )
