"""The dataset card, layout files, LICENSE and CITATION.cff of a set, and what a release carries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import modelset
from modelset.card import H5PY_LOADER, SECTIONS, size_category
from modelset.citation import REFERENCES, citation_cff
from modelset.errors import SchemaError
from modelset.layout import layout_file_name, make_layout, read_layout
from modelset.synthetic import write_synthetic
from modelset.writer import ModelSetWriter, read_checksums

REPO = Path(__file__).resolve().parents[1]


def _front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _sections(body: str) -> list[str]:
    return re.findall(r"^## (.+)$", body, flags=re.M)


def test_card_header_is_a_valid_hub_header(mini_set) -> None:
    from datasets.utils.metadata import MetadataConfigs, known_task_ids
    from huggingface_hub import DatasetCardData

    meta, _ = _front_matter((mini_set.root / "README.md").read_text())
    assert meta["license"] == "cc-by-4.0"
    assert meta["pretty_name"] == "ModelSet mini"
    sizes = json.loads((Path(__import__("datasets").__file__).parent / "utils/resources/size_categories.json").read_text())
    assert meta["size_categories"] == ["n<1K"] and set(meta["size_categories"]) <= set(sizes)
    assert set(meta["task_categories"]) <= set(known_task_ids)
    configs = MetadataConfigs.from_dataset_card_data(DatasetCardData(**meta))
    assert configs.get_default_config_name() == "models"
    assert configs["models"]["data_files"] == "models.parquet"
    assert meta["modelset"]["models"] == len(mini_set) and meta["modelset"]["tasks"] == 4


def test_size_categories() -> None:
    assert [size_category(n) for n in (0, 999, 1000, 56_000, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]  # fmt: skip


def test_card_sections_tasks_relations_layouts(mini_set) -> None:
    text = (mini_set.root / "README.md").read_text()
    _, body = _front_matter(text)
    sections = _sections(body)
    assert sections[: len(SECTIONS)] == list(SECTIONS)
    assert len(sections) == len(set(sections))  # no section twice
    assert "How it was built" not in sections
    made = body.split("## How it was made", 1)[1].split("\n## ", 1)[0]
    assert "base models over 4 tasks" in made and "Built from this config" in made
    # task table: class names and domains of fashion4
    n_t03 = int((mini_set.metadata["task"] == "t03").sum())
    assert f"| `t03` | fashion_mnist | 2 | 7 Sneaker, 9 Ankle boot | rotated (degrees=90) | {n_t03} |" in body
    assert "0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat | inverted" in body
    # relations: meaning, figures, and the builder's protocol inside the relations section
    relations = body.split("## Relations", 1)[1].split("\n## ", 1)[0]
    for name in mini_set.relations:
        assert f"### `{name}`" in relations
    ta = mini_set.relations["transfer_affinity"].to_numpy()
    assert f"values {ta.min():.3g} to {ta.max():.3g}" in relations
    assert "How it was measured: Transfer affinity (Taskonomy-style" in relations
    # The mini build measures two halves; the builder's protocol text states the figures once.
    assert relations.count("Reliability (test-retest, measured by this build)") == 1
    assert "Reliability: not measured" not in relations and "Reliability (measured when" not in relations
    # layouts: one row per signature, preprocessing constants of the data set
    layout = body.split("## Parameter layout", 1)[1].split("\n## ", 1)[0]
    assert "| fashion_mnist | (1, 28, 28) | 10 | 0.286 | 0.353 |" in layout
    for arch, kwargs in mini_set.architectures()[["architecture", "arch_kwargs"]].itertuples(index=False):
        assert f"`{layout_file_name(arch, kwargs)}`" in layout
    # sizes: the shard row is the sum of the shard files
    shard_bytes = sum(p.stat().st_size for p in (mini_set.root / "shards").glob("*.h5"))
    assert f"| `shards/` | {len(list((mini_set.root / 'shards').glob('*.h5')))} |" in body
    assert f"{shard_bytes:,}" in body
    n_low = int(mini_set.metadata["below_chance"].fillna(False).astype(bool).sum())
    assert f"- {n_low} of {len(mini_set)} models are flagged `below_chance`" in body
    assert "@article{xiao2017fashion," in body and "Zalando SE" in body


def test_layout_files_match_the_stored_tensors(mini_set) -> None:
    root = mini_set.root
    sums = read_checksums(root)
    index = pd.read_csv(root / "layouts" / "index.csv", dtype={"arch_kwargs": str})
    signatures = mini_set.architectures()
    assert len(index) == len(signatures) and "layouts/index.csv" in sums
    for row in index.itertuples(index=False):
        assert f"layouts/{row.file}" in sums
        layout = read_layout(root / "layouts" / row.file)
        ids = mini_set.metadata.index[
            (mini_set.metadata["architecture"] == row.architecture) & (mini_set.metadata["arch_kwargs"] == row.arch_kwargs)
        ]
        assert len(ids) == row.models and layout.length == row.length
        state = mini_set.state_dict(ids[0])
        assert [s.tensor for s in layout.slots] == list(make_layout(row.architecture, row.arch_kwargs).slots[i].tensor
                                                        for i in range(len(layout.slots)))  # fmt: skip
        assert {s.tensor for s in layout.slots} == set(state)
        for slot in layout.slots:
            assert tuple(state[slot.tensor].shape) == slot.shape
            assert str(state[slot.tensor].numpy().dtype) == slot.dtype
        vector = layout.flatten({k: v.numpy() for k, v in state.items()})
        assert vector.dtype == np.float32 and vector.shape == (layout.length,)
        for key, value in layout.unflatten(vector).items():
            assert np.array_equal(value, state[key].numpy()) and value.dtype == state[key].numpy().dtype


def test_h5py_loader_gives_the_state_dict(mini_set) -> None:
    """The README's script: h5py, NumPy and a layout file alone give ``ms.state_dict`` exactly."""
    readme = (REPO / "README.md").read_text()
    assert H5PY_LOADER in readme  # the README quotes the code that is tested here
    namespace: dict = {}
    exec(compile(H5PY_LOADER, "H5PY_LOADER", "exec"), namespace)
    load_params = namespace["load_params"]
    table = mini_set.metadata
    picks = table.reset_index().groupby(["architecture", "arch_kwargs"])["model_id"].first().tolist()
    for mid in picks:
        for checkpoint in str(table.loc[mid, "checkpoints"]).split(","):
            tensors, flat = load_params(str(mini_set.root), mid, checkpoint)
            state = mini_set.state_dict(mid, checkpoint)
            assert set(tensors) == set(state)
            for key, value in state.items():
                assert np.array_equal(tensors[key], value.numpy()) and tensors[key].dtype == value.numpy().dtype
            assert flat.dtype == np.float32 and flat.size == sum(v.numel() for v in state.values())
    with pytest.raises(KeyError, match="nope"):
        load_params(str(mini_set.root), "nope")


def _with_folds(root: Path, reliability: dict | None = None) -> dict:
    """Give a synthetic set a folds file (the builder's contract) and re-finish it."""
    with modelset.open(root) as ms:
        tasks = sorted(ms.metadata["task"].unique())
        by_task = {t: sorted(ms.metadata.index[ms.metadata["task"] == t]) for t in tasks}
    folds = []
    for i, held in enumerate([tasks[: len(tasks) // 2], tasks[len(tasks) // 2 :]]):
        train_tasks = [t for t in tasks if t not in held]
        heldout_models = [by_task[t][0] for t in train_tasks]
        folds.append({
            "fold": i, "train_tasks": train_tasks, "heldout_tasks": held,
            "train_ids": [m for t in train_tasks for m in by_task[t][1:]],
            "heldout_model_ids": heldout_models,
            "heldout_task_ids": [m for t in held for m in by_task[t]], "heldout_recipe_ids": [],
        })  # fmt: skip
    doc = {"schema": 1, "k": 2, "seed": 0, "folds": folds}
    (root / "splits").mkdir(exist_ok=True)
    (root / "splits" / "folds.json").write_text(json.dumps(doc))
    header = json.loads((root / "modelset.json").read_text())
    with ModelSetWriter.open(root, name=header["name"], config=header["config"]) as writer:
        if reliability:
            writer.header["relation_reliability"] = reliability
        writer.finish({"Summary": "with folds"})
    return doc


def test_card_describes_folds_and_reliability(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "syn", 16, n_tasks=4, models_per_shard=8, seed=1)
    card = (root / "README.md").read_text()
    assert "This set ships no fold file" in card
    reliability = {"same_task": {"spearman_halves": 0.812, "spearman_brown": 0.896, "n_pairs": 12,
                                 "description": "Two halves of the seeds."}}  # fmt: skip
    doc = _with_folds(root, reliability)
    modelset.verify(root)  # the folds file is checksummed with the rest
    assert "splits/folds.json" in read_checksums(root)
    _, body = _front_matter((root / "README.md").read_text())
    splits = body.split("## Splits", 1)[1].split("\n## ", 1)[0]
    assert "2 task folds (k = 2, seed 0, schema 1)" in splits
    fold0 = doc["folds"][0]
    held = ", ".join(f"`{t}`" for t in fold0["heldout_tasks"])
    assert (f"| 0 | {held} | {len(fold0['train_ids'])} | {len(fold0['heldout_model_ids'])} | "
            f"{len(fold0['heldout_task_ids'])} |") in splits  # fmt: skip
    assert ("Reliability (measured when the set was built): Spearman correlation between two independent "
            "halves of the runs 0.812; Spearman–Brown reliability of the full measurement 0.896; over 12 "
            "task pairs. Two halves of the seeds.") in body  # fmt: skip


def test_bad_folds_file_is_named(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "syn", 8, n_tasks=4, seed=2)
    (root / "splits").mkdir()
    (root / "splits" / "folds.json").write_text('{"folds": 3}')
    header = json.loads((root / "modelset.json").read_text())
    with pytest.raises(SchemaError, match=r"splits/folds.json: expected"):
        with ModelSetWriter.open(root, name=header["name"], config=header["config"]) as writer:
            writer.finish()


def test_bad_layout_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cnn3-x.csv"
    path.write_text('tensor,shape,offset,size,dtype\nconv1.weight,"[16, 1, 3, 3]",0,144,float32\nconv1.bias,[16],150,16,float32\n')
    with pytest.raises(SchemaError, match=r"cnn3-x.csv, line 3: offset or size of 'conv1.bias'"):
        read_layout(path)
    path.write_text("tensor,shape,offset,size,dtype\nconv1.weight,not-json,0,144,float32\n")
    with pytest.raises(SchemaError, match=r"cnn3-x.csv, line 2: bad layout row"):
        read_layout(path)


def test_set_licence_and_citation_files(mini_set) -> None:
    licence = (mini_set.root / "LICENSE").read_text()
    assert "CC BY 4.0" in licence and "fashion_mnist: MIT licence, Copyright (c) 2017 Zalando SE" in licence
    cff = yaml.safe_load((mini_set.root / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "dataset" and cff["license"] == "CC-BY-4.0"
    assert cff["title"] == "ModelSet model set mini" and len(cff["references"]) == len(REFERENCES)


def test_repository_licence_and_citation_agree_with_pyproject() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    licence = (REPO / "LICENSE").read_text()
    assert project["license"]["text"] == "MIT" and licence.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} ModelSet contributors$", licence, flags=re.M)
    text = (REPO / "CITATION.cff").read_text()
    assert text == citation_cff()  # generated from modelset.citation: regenerate it when that changes
    cff = yaml.safe_load(text)
    assert cff["license"] == "MIT" and cff["version"] == project["version"] and cff["type"] == "software"
    assert {k: v for k, v in cff.items() if k in ("cff-version", "message", "title", "authors")} and cff["authors"]
    titles = {r["title"] for r in cff["references"]}
    assert {"Learnable Parameter Similarity", "Soft Threshold Weight Reparameterization for Learnable Sparsity",
            "Neural Similarity Learning", "Shape Adaptor: A Learnable Resizing Module",
            "Flexible Few-Shot Learning with Contextual Similarity",
            "Exploiting Channel Similarity for Accelerating Deep Convolutional Neural Networks",
            "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms"} == titles  # fmt: skip
    for ref in cff["references"]:  # CFF 1.2.0: every reference has a type, a title and authors
        assert ref["type"] in ("article", "conference-paper") and ref["authors"] and isinstance(ref["year"], int)


def test_release_carries_card_layouts_splits_licence_and_citation(tmp_path: Path) -> None:
    from modelset.release import INDEX_FILE, pack

    root = write_synthetic(tmp_path / "syn", 12, n_tasks=4, models_per_shard=6, seed=4)
    _with_folds(root)
    release = pack(root, tmp_path / "dist", archive=False)
    index = json.loads((release / INDEX_FILE).read_text())
    listed = {e["path"]: e["size"] for e in index["files"]}
    on_disk = {p.relative_to(release).as_posix(): p.stat().st_size for p in release.rglob("*") if p.is_file()}
    assert on_disk.pop(INDEX_FILE) > 0
    assert listed == on_disk  # every file, with its size
    layout = layout_file_name("cnn3", '{"num_classes":5}')
    assert {"README.md", "LICENSE", "CITATION.cff", "splits/folds.json", "layouts/index.csv", f"layouts/{layout}"} <= set(listed)
    assert index["total_bytes"] == sum(listed.values())
    with modelset.open(release) as ms:
        assert torch.equal(ms.stacked(["syn-000000"])["conv1.weight"][0], ms.state_dict("syn-000000")["conv1.weight"])
