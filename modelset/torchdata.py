"""``torch.utils.data.Dataset`` views of a model set, for learning on weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from modelset.reader import ModelSet


class ModelDataset(Dataset):
    """Item ``i``: ``(state_dict, task_index)`` of the ``i``-th model of ``model_ids``.

    ``task_index`` numbers the tasks of the given models in sorted order (``self.task_names``).
    Models of one architecture collate with the default ``DataLoader`` collate function.
    """

    def __init__(self, ms: ModelSet, model_ids: Sequence[str] | None = None, checkpoint: str = "final") -> None:
        self.ms = ms
        self.model_ids = list(ms.metadata.index if model_ids is None else model_ids)
        self.checkpoint = checkpoint
        tasks = ms.metadata.loc[self.model_ids, "task"].astype(str)
        self.task_names = sorted(tasks.unique())
        lookup = {t: i for i, t in enumerate(self.task_names)}
        self.targets = torch.tensor([lookup[t] for t in tasks], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.model_ids)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.ms.state_dict(self.model_ids[i], self.checkpoint), self.targets[i]


class ModelPairDataset(Dataset):
    """Item ``i``: ``(state_dict_a, state_dict_b, same_task)`` for the ``i``-th pair.

    ``pairs`` lists ``(model_id_a, model_id_b)``; ``same_task`` is 1.0 when both models solve the
    same task, else 0.0, or the value of ``relation`` (a task × task matrix name) when given.
    """

    def __init__(
        self,
        ms: ModelSet,
        pairs: Sequence[tuple[str, str]],
        checkpoint: str = "final",
        relation: str | None = None,
    ) -> None:
        self.ms = ms
        self.pairs = [(str(a), str(b)) for a, b in pairs]
        self.checkpoint = checkpoint
        tasks = ms.metadata["task"].astype(str)
        if relation is None:
            values = [float(tasks[a] == tasks[b]) for a, b in self.pairs]
        else:
            matrix = ms.relations[relation]
            values = [float(matrix.loc[tasks[a], tasks[b]]) for a, b in self.pairs]
        self.targets = torch.tensor(values, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        a, b = self.pairs[i]
        return self.ms.state_dict(a, self.checkpoint), self.ms.state_dict(b, self.checkpoint), self.targets[i]
