"""Synthetic model sets in the real format, for tests and scale benchmarks.

Each task has a prototype small CNN; each model of the task is the prototype plus noise with its
hidden units randomly permuted. Same-task models are thus alike up to permutation, which is what a
permutation-invariant similarity should see and a flattened-weight cosine should miss.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from modelset.architectures import build_architecture
from modelset.weights import permute_state_dict
from modelset.writer import ModelRecord, ModelSetWriter


def write_synthetic(
    path: str | os.PathLike,
    n_models: int,
    n_tasks: int = 10,
    num_classes: int = 5,
    noise: float = 0.3,
    models_per_shard: int = 1000,
    seed: int = 0,
    checkpoints: tuple[str, ...] = ("final",),
    overwrite: bool = True,
    progress: bool = False,
) -> Path:
    """Write ``n_models`` random ``cnn3`` models over ``n_tasks`` tasks into a model set."""
    root = Path(path)
    generator = torch.Generator().manual_seed(seed)
    kwargs = {"num_classes": num_classes}
    prototypes = []
    for _ in range(n_tasks):
        net = build_architecture("cnn3", kwargs)
        prototypes.append({k: torch.randn(v.shape, generator=generator) * 0.5 for k, v in net.state_dict().items()})
    config = {"synthetic": True, "n_models": n_models, "n_tasks": n_tasks, "seed": seed, "noise": noise}
    with ModelSetWriter.open(root, name=f"synthetic-{n_models}", config=config, overwrite=overwrite) as writer:
        done = writer.model_ids
        starts = range(0, n_models, models_per_shard)
        for start in tqdm(starts, desc="synthetic shards", disable=not progress):
            records = []
            for i in range(start, min(start + models_per_shard, n_models)):
                mid = f"syn-{i:06d}"
                if mid in done:
                    continue
                task = i % n_tasks
                noisy = {k: v + noise * torch.randn(v.shape, generator=generator) for k, v in prototypes[task].items()}
                state = permute_state_dict("cnn3", kwargs, noisy, generator)
                ckpts = {c: state for c in checkpoints}
                row = {
                    "task": f"task{task:03d}",
                    "dataset": "synthetic",
                    "variant": "base",
                    "parent_id": "",
                    "seed": i,
                    "test_accuracy": float(np.clip(0.6 + 0.05 * torch.randn(1, generator=generator).item(), 0, 1)),
                }
                records.append(ModelRecord(mid, "cnn3", kwargs, ckpts, row))
            if records:
                writer.write_shard(records)
        tasks = pd.DataFrame(
            {"dataset": "synthetic", "classes": [list(range(num_classes))] * n_tasks, "domain": "identity"},
            index=[f"task{t:03d}" for t in range(n_tasks)],
        )
        writer.set_tasks(tasks)
        same = np.eye(n_tasks)
        writer.set_relation("same_task", pd.DataFrame(same, index=tasks.index, columns=tasks.index))
        writer.finish({"Summary": f"Synthetic model set: {n_models} random small CNNs over {n_tasks} tasks."})
    return root
