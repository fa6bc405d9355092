"""The mini model set as users get it: complete, verified, every variant family present, and every
model rebuilt by ``ms.model(id)`` reproducing its recorded test accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modelset
from modelset.tasks import Task, convert_input_norm, task_data

pytestmark = pytest.mark.slow

FAMILIES = {"str", "gmp", "channel_sim", "l1_filter", "shape_adaptor", "fixed_stride",
            "nsl_full", "nsl_diag", "nsl_dynamic_full", "nsl_dynamic_diag", "conv"}


def test_mini_set_is_complete_and_verified(mini_set: modelset.ModelSet) -> None:
    report = modelset.verify(mini_set.root)
    meta = mini_set.metadata
    assert report["models"] == len(meta) and mini_set.header["complete"]
    assert FAMILIES <= set(meta["variant"])
    variants = meta[meta["variant"] != "base"]
    assert set(variants["parent_id"]) <= set(meta.index[meta["variant"] == "base"])
    assert (meta["flops"] > 0).all() and meta["test_accuracy"].between(0, 1).all()
    sparse = meta[meta["variant"].isin(["str", "gmp"])]
    assert (sparse["sparsity"] > 0.3).all() and (sparse["flops_sparse"] < sparse["flops"]).all()
    pruned = meta[meta["variant"].isin(["channel_sim", "l1_filter"])]
    assert (pruned["n_params"] < meta.loc[pruned["parent_id"], "n_params"].to_numpy()).all()
    for name in ("label_jaccard", "same_domain"):
        matrix = mini_set.relations[name].to_numpy()
        assert np.allclose(matrix, matrix.T)


def test_variants_of_one_recipe_share_a_shard_and_blocks(mini_set: modelset.ModelSet) -> None:
    variants = mini_set.metadata[mini_set.metadata["variant"] != "base"]
    assert variants["parent_id"].nunique() > 1  # several parents, else this proves nothing
    for recipe, rows in variants.groupby("recipe"):
        assert rows["shard"].nunique() == 1, recipe
        per_signature = rows.groupby(["architecture", "arch_kwargs"])["block"].nunique()
        assert (per_signature == 1).all(), recipe


def test_every_model_reproduces_its_recorded_accuracy(mini_set: modelset.ModelSet) -> None:
    meta = mini_set.metadata
    for task_id, rows in meta.groupby("task"):
        task = Task.from_row(task_id, mini_set.tasks.loc[task_id].to_dict())
        x, y = task_data(task, "test", limit=int(rows["test_size"].max()))
        for model_id, row in rows.iterrows():
            n = int(row["test_size"])
            norm = row.get("input_norm")  # variants have none: their parents' standardized inputs
            inputs = convert_input_norm(x[:n], task.dataset, norm if isinstance(norm, str) else "standard")
            with torch.no_grad():
                accuracy = int((mini_set.model(model_id)(inputs).argmax(1) == y[:n]).sum()) / n
            # The build evaluated with the engine's stacked kernels; a module's own kernels may flip
            # the argmax of an image whose top two logits tie to float precision (on another CPU).
            assert abs(accuracy - row["test_accuracy"]) <= 1 / n + 1e-9, model_id


def test_base_models_keep_their_training_trajectory(mini_set: modelset.ModelSet) -> None:
    """configs/mini.yaml keeps epochs 1 and 2: each base model has those checkpoints beside init and
    final, and each kept checkpoint rebuilds to the test accuracy recorded for it."""
    import json

    base = mini_set.metadata[mini_set.metadata["variant"] == "base"]
    assert (base["checkpoints"] == "epoch_1,epoch_2,final,init").all()
    for task_id, rows in base.groupby("task"):
        task = Task.from_row(task_id, mini_set.tasks.loc[task_id].to_dict())
        x, y = task_data(task, "test", limit=int(rows["test_size"].max()))
        for model_id, row in rows.head(2).iterrows():
            trajectory = json.loads(row["checkpoint_metrics"])
            assert list(trajectory) == ["init", "epoch_1", "epoch_2", "final"]
            assert [t["epoch"] for t in trajectory.values()] == [0, 1, 2, row["epochs"]]
            assert trajectory["final"]["test_accuracy"] == row["test_accuracy"]
            n = int(row["test_size"])
            inputs = convert_input_norm(x[:n], task.dataset, row["input_norm"])
            for name in ("init", "epoch_1"):
                with torch.no_grad():
                    accuracy = int((mini_set.model(model_id, name)(inputs).argmax(1) == y[:n]).sum()) / n
                assert abs(accuracy - trajectory[name]["test_accuracy"]) <= 1 / n + 1e-9, (model_id, name)
    variants = mini_set.metadata[mini_set.metadata["variant"] != "base"]
    assert (variants["checkpoints"].map(lambda c: "epoch_1" not in c.split(","))).all()
