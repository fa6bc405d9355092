"""Learned probes (Kahana et al. 2024, "Deep Linear Probe Generators for Weight Space Learning").

A deep linear generator (learned latent codes through linear layers without activations) makes
``n_probes`` input images; every model runs on them (its own architecture rebuilt from the set,
its weights passed in with ``torch.func.functional_call``, batched over the models of one
architecture signature with ``torch.func.vmap``), and its logits, centred over the classes and
zero-padded to the widest head of the set, concatenated over the probes, are the representation.
A small MLP maps it to the embedding. Generator and head are trained end to end with the shared
supervised contrastive loss on training-task models; the models' weights stay fixed.

No task data is read: the models are accessed through forward passes on the method's own inputs
(``MethodMeta.access == "forward"``). A probe has the input shape of the model's task (its data
set's channels and image size; a data set the set does not describe gets the model's
``in_channels`` and 28 × 28), one generator per input shape. Probes are made in the data set's
standardised space and converted to each model's ``input_norm`` as the other probe methods do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from benchmarks.methods._registry import MethodError, MethodMeta, SimilarityMethod, register_method
from benchmarks.methods._train import fit_contrastive, task_labels
from modelset.architectures import build_architecture, decode_kwargs
from modelset.datasets import DATASETS
from modelset.reader import ModelSet
from modelset.tasks import input_norm_affine

log = logging.getLogger(__name__)

DEFAULT_SIZE = 28  # image side for models of a data set the set does not describe (synthetic sets)


@dataclass
class _Group:
    """Models of one architecture signature and one input shape: their weights ``{key: (b, ...)}``,
    the input affine ``scale``/``shift`` ``(b, C)`` of each model's ``input_norm``, and where the
    models are in the id list (``positions`` ``(b,)``)."""

    architecture: str
    arch_kwargs: str
    shape: tuple[int, int, int]
    positions: torch.Tensor
    params: dict[str, torch.Tensor]
    scale: torch.Tensor
    shift: torch.Tensor


class ProbeGenerator(nn.Module):
    """Deep linear generator: latent codes ``(n, latent)`` → probes ``(n, C, H, W)``."""

    def __init__(self, n_probes: int, latent: int, hidden: int, depth: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape
        self.codes = nn.Parameter(torch.randn(n_probes, latent))
        dims = [latent] + [hidden] * (depth - 1) + [shape[0] * shape[1] * shape[2]]
        # No activations between the layers: a deep linear map, which Kahana et al. found to
        # regularise the probes better than a deep non-linear generator or free inputs.
        self.net = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])

    def forward(self) -> torch.Tensor:
        return self.net(self.codes).view(-1, *self.shape)


class ProbeGenEncoder(nn.Module):
    """Generators (one per input shape) and the head ``(n_probes * k_max) → dim``."""

    def __init__(self, shapes: list[tuple[int, int, int]], k_max: int, config: dict) -> None:
        super().__init__()
        n, latent, hidden = int(config["n_probes"]), int(config["latent"]), int(config["hidden"])
        self.generators = nn.ModuleDict(
            {_shape_key(s): ProbeGenerator(n, latent, hidden, int(config["depth"]), s) for s in shapes}
        )
        self.head = nn.Sequential(nn.Linear(n * k_max, hidden), nn.ReLU(), nn.Linear(hidden, int(config["dim"])))


def _shape_key(shape: tuple[int, int, int]) -> str:
    return "x".join(str(s) for s in shape)


@register_method
class ProbeGen(SimilarityMethod):
    """Embedding: ``MLP(model logits on generated probes)`` ``(n, dim)`` fit on training-task models."""

    meta = MethodMeta(
        name="probe_gen",
        learned=True,
        needs_data=False,
        access="forward",
        invariances=("permutation", "function"),
        reference="Kahana et al. 2024, Deep Linear Probe Generators for Weight Space Learning",
        description="deep linear probe generator, model logits on the probes, MLP; contrastive training",
        config={"n_probes": 16, "latent": 16, "hidden": 64, "depth": 3, "dim": 32, "steps": 100, "lr": 3e-3,
                "batch_size": 32},
    )
    kernel_threads = 1  # tiny ops: a second thread cost 20x on two busy cores

    # -- reading models -----------------------------------------------------------------------
    def _input_shape(self, ms: ModelSet, model_id: str, kwargs: dict) -> tuple[int, int, int]:
        dataset = str(ms.metadata.at[model_id, "dataset"])
        if dataset not in DATASETS:
            return (int(kwargs.get("in_channels", 1)), DEFAULT_SIZE, DEFAULT_SIZE)
        info = DATASETS.get(dataset)
        return (info.channels, info.size, info.size)

    def _affine(self, ms: ModelSet, model_id: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = ms.metadata.loc[model_id]
        norm = row.get("input_norm")
        if not isinstance(norm, str) or norm in ("", "standard") or str(row["dataset"]) not in DATASETS:
            return torch.ones(channels), torch.zeros(channels)
        return input_norm_affine(str(row["dataset"]), norm)

    def _groups(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> list[_Group]:
        out = []
        for group in ms.by_signature(ids):
            kwargs = decode_kwargs(group.arch_kwargs)
            shapes = [self._input_shape(ms, i, kwargs) for i in group.ids]
            stacked = ms.stacked(group.ids, checkpoint)
            for shape in sorted(set(shapes)):
                rows = torch.tensor([j for j, s in enumerate(shapes) if s == shape], dtype=torch.long)
                affine = [self._affine(ms, group.ids[j], shape[0]) for j in rows.tolist()]
                out.append(_Group(
                    group.architecture, group.arch_kwargs, shape,
                    torch.as_tensor(group.positions, dtype=torch.long)[rows],
                    {k: v[rows].to(torch.float32) if v.is_floating_point() else v[rows] for k, v in stacked.items()},
                    torch.stack([a for a, _ in affine]), torch.stack([b for _, b in affine]),
                ))
        return out

    def _module(self, architecture: str, arch_kwargs: str) -> nn.Module:
        key = (architecture, arch_kwargs)
        if key not in self._built:
            self._built[key] = build_architecture(architecture, arch_kwargs).eval()
        return self._built[key]

    def _logits(self, group: _Group, rows: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
        """Logits ``(b, n_probes, k)`` of the group's models ``rows`` on ``probes`` ``(n, C, H, W)``."""
        module = self._module(group.architecture, group.arch_kwargs)
        params = {k: v[rows] for k, v in group.params.items()}
        scale, shift = group.scale[rows][:, None, :, None, None], group.shift[rows][:, None, :, None, None]
        inputs = probes[None] * scale + shift  # (b, n, C, H, W): each model in its own input norm

        def run(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(module, p, (x,))

        key = (group.architecture, group.arch_kwargs)
        if key not in self._no_vmap:
            try:
                return vmap(run)(params, inputs)
            except RuntimeError as exc:  # data-dependent shapes (shape adaptors call .item())
                log.debug("probe_gen: %s %s runs model by model (%s)", *key, exc)
                self._no_vmap.add(key)
        return torch.stack([run({k: v[b] for k, v in params.items()}, inputs[b]) for b in range(len(rows))])

    def _represent(self, group: _Group, rows: torch.Tensor) -> torch.Tensor:
        """Centred, padded logits on the generated probes, flattened: ``(b, n_probes * k_max)``."""
        probes = self.encoder.generators[_shape_key(group.shape)]()
        logits = self._logits(group, rows, probes)
        if logits.shape[-1] > self.k_max:
            raise MethodError(
                f"method 'probe_gen' was fit with heads of at most {self.k_max} classes; models of "
                f"{group.architecture} {group.arch_kwargs} have {logits.shape[-1]}: fit it on a set that holds them"
            )
        logits = logits - logits.mean(dim=-1, keepdim=True)  # softmax ignores a shift of all logits
        padded = nn.functional.pad(logits, (0, self.k_max - logits.shape[-1]))
        return padded.flatten(1)

    # -- the steps ------------------------------------------------------------------------------
    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        self._built: dict[tuple[str, str], nn.Module] = {}
        self._no_vmap: set[tuple[str, str]] = set()
        # The widest head of the set fixes the representation width (as prediction_agreement).
        kwargs = [decode_kwargs(str(k)) for k in ms.metadata["arch_kwargs"].unique()]
        self.k_max = max(int(k.get("num_classes", 10)) for k in kwargs)
        groups = self._groups(ms, train_ids)
        shapes = sorted({g.shape for g in groups})
        group_of = torch.empty(len(train_ids), dtype=torch.long)
        row_of = torch.empty(len(train_ids), dtype=torch.long)
        for g, group in enumerate(groups):
            group_of[group.positions], row_of[group.positions] = g, torch.arange(len(group.positions))
        torch.manual_seed(seed)
        self.encoder = ProbeGenEncoder(shapes, self.k_max, self.config)

        def encode(index: torch.Tensor) -> torch.Tensor:
            parts, where = [], []
            for g, group in enumerate(groups):
                mine = torch.nonzero(group_of[index] == g).flatten()
                if len(mine):
                    parts.append(self._represent(group, row_of[index[mine]]))
                    where.append(mine)
            return self.encoder.head(torch.cat(parts)[torch.argsort(torch.cat(where))])

        labels = task_labels(ms.metadata.loc[train_ids, "task"].astype(str).tolist())
        c = self.config
        self.losses = fit_contrastive(
            self.encoder, encode, len(train_ids), labels, int(c["steps"]), float(c["lr"]), int(c["batch_size"]), seed
        )

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        out = torch.empty(len(ids), int(self.config["dim"]))
        with torch.no_grad():
            for group in self._groups(ms, ids, checkpoint):
                if _shape_key(group.shape) not in self.encoder.generators:
                    raise MethodError(
                        f"method 'probe_gen' has no probes of input shape {group.shape} (model "
                        f"{ids[int(group.positions[0])]!r} of {ms.root}); fit it on models of that input shape"
                    )
                for start in range(0, len(group.positions), 256):
                    rows = torch.arange(start, min(start + 256, len(group.positions)))
                    out[group.positions[rows]] = self.encoder.head(self._represent(group, rows))
        return out
