"""LPS end to end on small synthetic model sets: it learns, saves safely, searches, and fails clearly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import lps
import modelset
from lps.__main__ import main
from lps._bank import bank_from_groups
from lps.augment import Augmentation, augment, prune
from lps.features import compute_features
from lps.model import LPS, newton_schulz_sqrt
from lps.pairs import PairSampler
from lps.search import load_checkpoint, match_architecture, search_zoo
from lps.splits import fold, make_folds
from lps.weights import WeightSpace
from modelset.errors import ModelSetError
from modelset.synthetic import write_synthetic


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    path = write_synthetic(tmp_path_factory.mktemp("zoo") / "syn", 96, n_tasks=8, noise=0.3, seed=0)
    return modelset.open(path)


def _scores(method, zoo, sp) -> dict[str, float]:
    """The fitted ``method``'s scores on fold ``sp`` through the benchmark tracks (the one harness)."""
    from benchmarks.tracks import get_track

    out = {}
    for track in ("task_classification", "retrieval"):
        outcome = get_track(track)().evaluate(method, zoo, sp)
        out.update({f"{track}.{k}": v for k, v in outcome.metrics.items()})
    return out


@pytest.fixture(scope="module")
def trained(zoo):
    from benchmarks.methods import create_method

    sp = fold(zoo, 0)
    method = create_method("lps", epochs=8).fit(zoo, list(sp.train_ids), 0)
    return sp, method.scorer, method


def test_folds_are_honest_and_deterministic(zoo) -> None:
    folds = zoo.folds
    assert len(folds) == 4  # 8 tasks: k = 5 is lowered so that every fold holds out 2 tasks
    assert sorted(t for f in folds for t in f.heldout_tasks) == sorted(zoo.metadata["task"].unique())
    tasks = zoo.metadata["task"]
    for sp in folds:
        assert len(sp.heldout_tasks) == 2 and len(sp.train_tasks) == 6
        assert not set(sp.train_tasks) & set(sp.heldout_tasks)
        assert set(tasks[list(sp.train_ids)]) == set(sp.train_tasks)
        assert set(tasks[list(sp.heldout_model_ids)]) <= set(sp.train_tasks)
        assert set(tasks[list(sp.heldout_task_ids)]) == set(sp.heldout_tasks)
        assert not set(sp.train_ids) & set(sp.heldout_model_ids)
        scored = [*sp.train_ids, *sp.heldout_model_ids, *sp.heldout_task_ids]
        assert sorted(scored) == sorted(zoo.metadata.index)  # every model in exactly one role
    assert make_folds(zoo.metadata, {"k": 4}) == folds
    assert make_folds(zoo.metadata, {"k": 4, "seed": 1}) != folds
    with pytest.raises(ModelSetError, match="fold 9 does not exist; the set has folds 0 to 3"):
        fold(zoo, 9)


def test_folds_keep_variant_families_together_and_recipes_out() -> None:
    rows = []
    for t in range(4):
        for f in range(4):
            base = f"t{t}-b{f}"
            recipe = "outside" if f == 3 else "zoo"
            rows += [
                (base, f"t{t}", "", recipe),
                (f"{base}-pruned", f"t{t}", base, None),
                (f"{base}-pruned-ft", f"t{t}", f"{base}-pruned", None),
            ]
    table = pd.DataFrame(rows, columns=["model_id", "task", "parent_id", "recipe_family"]).set_index("model_id")
    folds = make_folds(table, {"k": 2, "seed": 3, "holdout_model_fraction": 0.3, "heldout_recipe_families": ["outside"]})
    for sp in folds:
        held = set(sp.heldout_model_ids)
        for mid in held:  # a held-out family is held out whole
            root = mid.split("-pruned")[0]
            assert {root, f"{root}-pruned", f"{root}-pruned-ft"} <= held
        # Held-out recipes: never fit on, in any fold, variants included.
        outside = {m for m in table.index if m.split("-pruned")[0].endswith("b3")}
        assert not outside & set(sp.train_ids)
        assert outside - set(sp.heldout_task_ids) == set(sp.heldout_recipe_ids)
    with pytest.raises(ModelSetError, match="at least 4 tasks"):
        make_folds(table[table["task"].isin(["t0", "t1", "t2"])])
    with pytest.raises(ModelSetError, match=r"\['elsewhere'\] are not recipe families"):
        make_folds(table, {"heldout_recipe_families": ["elsewhere"]})
    with pytest.raises(ModelSetError, match="unknown keys \\['kk'\\]"):
        make_folds(table, {"kk": 3})


def test_trained_lps_separates_tasks_better_than_chance(zoo, trained) -> None:
    from benchmarks.methods import create_method

    sp, scorer, method = trained
    scores = _scores(method, zoo, sp)
    baseline = _scores(create_method("flat_cosine").fit(zoo, list(sp.train_ids), 0), zoo, sp)
    # Chance: AUC 0.5, task accuracy 1/6, held-out mAP about 0.5 with two tasks of 12 models.
    assert scores["task_classification.auc"] > 0.9
    assert scores["task_classification.accuracy"] > 0.8
    assert scores["retrieval.map"] > 0.65
    # Synthetic models are permuted copies: without alignment the weights look unrelated.
    assert scores["task_classification.auc"] > baseline["task_classification.auc"] + 0.1
    assert scorer.config["train_tasks"] == sorted(sp.train_tasks)


def test_contrastive_mode_learns(zoo) -> None:
    from benchmarks.methods import create_method

    sp = fold(zoo, 0)
    method = create_method("lps_contrastive", epochs=3).fit(zoo, list(sp.train_ids), 0)
    assert _scores(method, zoo, sp)["task_classification.auc"] > 0.75


def test_cached_training_is_reused_only_for_the_same_fit(zoo, tmp_path) -> None:
    from lps.train import train_cached

    sp = fold(zoo, 1)
    first = train_cached(zoo, sp.train_ids, tmp_path, seed=1, epochs=1)
    again = train_cached(zoo, list(reversed(sp.train_ids)), tmp_path, seed=1, epochs=1, hidden=256)  # defaults spelled out
    assert again.config["cache_key"] == first.config["cache_key"]
    assert again.config["train_seconds"] == first.config["train_seconds"]  # loaded, not trained again
    assert len(list(tmp_path.iterdir())) == 1
    other = train_cached(zoo, sp.train_ids, tmp_path, seed=1, epochs=2)
    assert other.config["cache_key"] != first.config["cache_key"]
    assert len(list(tmp_path.iterdir())) == 2
    ids = list(zoo.metadata.index[:5])
    torch.testing.assert_close(again.embed(ids, ms=zoo), first.embed(ids, ms=zoo))
    with pytest.raises(ModelSetError, match="unknown options \\['epoch'\\]"):
        train_cached(zoo, sp.train_ids, tmp_path, epoch=3)


def test_train_refuses_models_outside_training_tasks(zoo) -> None:
    sp = fold(zoo, 0)
    with pytest.raises(ModelSetError, match="not training tasks"):
        lps.train(zoo, train_tasks=sp.train_tasks, train_ids=list(sp.heldout_task_ids[:3]), epochs=1)
    with pytest.raises(ModelSetError, match="unknown LPS training mode 'triplet'"):
        lps.train(zoo, train_tasks=sp.train_tasks, mode="triplet")


def test_save_load_gives_identical_embeddings(zoo, trained, tmp_path) -> None:
    _, scorer, _ = trained
    ids = list(zoo.metadata.index[:10])
    before = scorer.embed(ids, ms=zoo)
    scorer.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["lps.json", "lps.safetensors"]
    loaded = LPS.load(tmp_path / "ckpt")
    assert torch.equal(loaded.embed(ids, ms=zoo), before)
    assert before.shape == (10, scorer.dim)
    torch.testing.assert_close(before.norm(dim=1), torch.ones(10))
    sim = loaded.similarity(before, before)
    assert sim.shape == (10, 10) and torch.allclose(sim.diagonal(), torch.ones(10), atol=1e-5)
    # Plain state dicts with their architecture embed like their model ids.
    states = [zoo.state_dict(m) for m in ids[:3]]
    row = zoo.metadata.loc[ids[0]]
    direct = loaded.embed(states, architecture=row["architecture"], arch_kwargs=row["arch_kwargs"])
    torch.testing.assert_close(direct, before[:3], atol=1e-5, rtol=1e-4)


def test_load_rejects_bad_checkpoints(trained, tmp_path) -> None:
    _, scorer, _ = trained
    folder = scorer.save(tmp_path / "ckpt")
    with pytest.raises(ModelSetError, match="lps.json: missing"):
        LPS.load(tmp_path)
    (folder / "lps.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelSetError, match="cannot be read as safetensors"):
        LPS.load(folder)
    config = json.loads((folder / "lps.json").read_text())
    config["format"] = "pickle-v0"
    (folder / "lps.json").write_text(json.dumps(config))
    with pytest.raises(ModelSetError, match="format 'pickle-v0', expected 'lps-v1'"):
        LPS.load(folder)


def test_search_returns_the_query_model_first(zoo, trained, tmp_path, capsys) -> None:
    _, scorer, _ = trained
    scorer.save(tmp_path / "lps" / "seed0")
    mid = zoo.metadata.index[17]
    state = zoo.state_dict(mid)
    save_file(state, str(tmp_path / "query.safetensors"))
    torch.save(state, tmp_path / "query.pt")
    table = search_zoo(scorer, zoo, state, k=5)
    assert table["model_id"].iloc[0] == mid and len(table) == 5
    assert table["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert table["task"].iloc[0] == zoo.metadata.loc[mid, "task"]
    assert list(table["score"]) == sorted(table["score"], reverse=True)
    for query in ("query.safetensors", "query.pt"):
        code = main(
            [
                "search",
                str(tmp_path / query),
                "--zoo",
                str(zoo.root),
                "-k",
                "3",
                "--lps",
                str(tmp_path / "lps"),
            ]
        )
        out = capsys.readouterr().out
        assert code == 0
        first = out.strip().splitlines()[2].split()
        assert first[0] == mid and first[1] == zoo.metadata.loc[mid, "task"]



def test_search_filters_formats_and_refuses_bad_requests(zoo, trained, tmp_path, capsys, monkeypatch) -> None:
    _, scorer, _ = trained
    scorer.save(tmp_path / "lps" / "search")
    mid = zoo.metadata.index[17]
    task = str(zoo.metadata.loc[mid, "task"])
    save_file(zoo.state_dict(mid), str(tmp_path / "query.safetensors"))
    base = ["search", str(tmp_path / "query.safetensors"), "--zoo", str(zoo.root), "--lps", str(tmp_path / "lps")]
    assert main([*base, "-k", "4", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["model_id"] for h in hits][0] == mid and len(hits) == 4
    assert set(hits[0]) == {"model_id", "task", "score", "architecture", "variant", "test_accuracy"}
    other = sorted(set(zoo.metadata["task"].astype(str)) - {task})[0]
    assert main([*base, "-k", "50", "--csv", "--task", other]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "model_id,task,score,architecture,variant,test_accuracy"
    assert {r.split(",")[1] for r in rows[1:]} == {other} and len(rows) - 1 == int((zoo.metadata["task"] == other).sum())
    for bad, message in ((["-k", "0"], "-k must be at least 1"), (["--variant", "strr"], "no model has variant 'strr'")):
        assert main([*base, *bad]) == 2
        assert message in capsys.readouterr().err
    # Without --lps: results/lps in the current folder, else a clear error naming where it looked.
    scorer.save(tmp_path / "here" / "results" / "lps" / "search")
    monkeypatch.chdir(tmp_path / "here")
    assert main(base[:4]) == 0
    out = capsys.readouterr().out.splitlines()
    assert str(tmp_path / "here" / "results" / "lps" / "search") in out[0] and out[2].split()[0] == mid
    monkeypatch.setattr("lps.__main__.default_lps_folders", lambda: [tmp_path / "none" / "results" / "lps"])
    assert main(base[:4]) == 2
    assert "no trained LPS found in" in capsys.readouterr().err


def test_search_rejects_unknown_architectures_and_unsafe_files(zoo, trained, tmp_path, capsys) -> None:
    _, scorer, _ = trained
    state = zoo.state_dict(zoo.metadata.index[0])
    wrong = dict(state, **{"conv2.weight": torch.zeros(8, 16, 3, 3)})
    with pytest.raises(
        ModelSetError, match=r"not one the zoo .* knows.*conv2.weight: \[8, 16, 3, 3\] vs \[16, 16, 3, 3\]"
    ):
        match_architecture(zoo, wrong, "mine.pt")
    assert match_architecture(zoo, state) == ("cnn3", zoo.metadata["arch_kwargs"].iloc[0])
    # A pickled module is code, not weights: the weights-only loader refuses it.
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ModelSetError, match="module.pt: not a weights-only torch checkpoint"):
        load_checkpoint(tmp_path / "module.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelSetError, match="junk.safetensors: cannot be read as safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")
    torch.save({"state_dict": wrong}, tmp_path / "wrapped.pt")
    scorer.save(tmp_path / "lps")
    code = main(
        ["search", str(tmp_path / "wrapped.pt"), "--zoo", str(zoo.root), "--lps", str(tmp_path / "lps")]
    )
    assert code == 2
    assert "wrapped.pt: its architecture is not one the zoo" in capsys.readouterr().err


def test_pair_sampler_balances_and_grades() -> None:
    tasks = ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    hard = pd.DataFrame([[1, 0.9, 0.0], [0.9, 1, 0.0], [0.0, 0.0, 1]], index=list("abc"), columns=list("abc"))
    sampler = PairSampler(tasks, hardness=hard, graded=hard, seed=0)
    pairs = sampler.sample(np.arange(15))
    labels = np.asarray(tasks)
    first, second = pairs.first.numpy(), pairs.second.numpy()
    assert np.bincount(pairs.kind.numpy()).tolist() == [15, 15, 15]
    pos, hardneg = pairs.kind.numpy() == 0, pairs.kind.numpy() == 1
    assert (labels[first[pos]] == labels[second[pos]]).all() and (first[pos] != second[pos]).all()
    assert (labels[first[~pos]] != labels[second[~pos]]).all()
    # The hard negative of an "a" model comes from the related task "b", with graded target 0.9.
    a_hard = hardneg & (labels[first] == "a")
    assert (labels[second[a_hard]] == "b").all()
    assert torch.allclose(pairs.target[torch.as_tensor(a_hard)], torch.tensor(0.9))
    assert torch.equal(pairs.target[torch.as_tensor(pos)], torch.ones(15))
    with pytest.raises(ModelSetError, match="lacks tasks"):
        PairSampler(tasks, hardness=hard.loc[["a", "b"], ["a", "b"]])


def test_augmentations_keep_what_they_should(zoo) -> None:
    ids = list(zoo.metadata.index[:4])
    row = zoo.metadata.loc[ids[0]]
    space = WeightSpace.from_stacked(row["architecture"], row["arch_kwargs"], zoo.stacked(ids))
    gen = torch.Generator().manual_seed(0)
    only_permute = augment(space, Augmentation(permute=True, channel_dropout=0, prune=0, noise=0), gen)
    a, b = compute_features(space).flat(), compute_features(only_permute).flat()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4)
    pruned = prune(space, 1.0, gen)
    for layer, original in zip(pruned.layers, space.layers):
        zeros = (layer.weight.reshape(4, -1) == 0).float().mean(1)
        assert (zeros > 0).any() and (zeros <= 1).all()
        assert ((layer.weight == 0) | (layer.weight == original.weight)).all()
    changed = augment(space, Augmentation(), gen)
    assert not torch.equal(compute_features(changed).matrices["conv2.gram"], a["m:conv2.gram"])


def test_newton_schulz_matches_the_eigendecomposition() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    spd = x @ x.transpose(1, 2) + 0.5 * torch.eye(6, dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(spd)
    exact = vecs @ torch.diag_embed(vals.sqrt()) @ vecs.transpose(1, 2)
    torch.testing.assert_close(newton_schulz_sqrt(spd, iterations=30), exact, atol=1e-6, rtol=1e-6)


def test_mixed_architectures_share_a_bank() -> None:
    import modelset.architectures.resnet  # noqa: F401  (registers resnet_tiny)
    from modelset.architectures import build_architecture

    cnn = build_architecture("cnn3", {"num_classes": 5}).state_dict()
    res = build_architecture("resnet_tiny", {"num_classes": 5}).state_dict()
    groups = [
        ([0], compute_features(WeightSpace.from_state_dict("cnn3", {"num_classes": 5}, cnn))),
        ([1], compute_features(WeightSpace.from_state_dict("resnet_tiny", {"num_classes": 5}, res))),
    ]
    bank = bank_from_groups(groups, 2)
    assert bank.masks["m:conv2.gram@90x90"].tolist() == [True, False]
    assert bank.masks["m:stem.gram@50x50"].tolist() == [False, True]
    assert bank.masks["v:grams.log_trace@6"].tolist() == [True, False]
    assert bank.masks["v:grams.log_trace@2"].tolist() == [False, True]  # same key, other shape: kept apart
    # Slot names do not depend on which architecture came first.
    swapped = bank_from_groups([([1], groups[0][1]), ([0], groups[1][1])], 2)
    assert swapped.schema() == bank.schema()
    assert swapped.masks["m:conv2.gram@90x90"].tolist() == [False, True]
    with pytest.raises(ModelSetError, match="model input 0: none of its features.*architecture is unknown"):
        bank.subset([1]).conform({"m:conv2.gram@90x90": [90, 90]})


@pytest.mark.slow
def test_cli_train_saves_one_checkpoint_per_fold_and_one_for_search(zoo, tmp_path, capsys) -> None:
    out = tmp_path / "lps"
    code = main(["train", "--zoo", str(zoo.root), "--out", str(out), "--folds", "0", "2", "--all-tasks", "--epochs", "1"])
    assert code == 0
    names = sorted(p.name.rsplit("-", 1)[0] for p in out.iterdir() if p.name != "search")
    assert names == ["pairs-all", "pairs-fold0", "pairs-fold2"]
    assert (out / "search" / "lps.safetensors").exists()
    assert lps.LPS.load(out / "search").config["train_models"] == len(zoo)
    assert "python -m benchmarks run" in capsys.readouterr().out
    assert main(["train", "--zoo", str(zoo.root), "--out", str(out), "--folds", "7"]) == 2
    assert "fold 7 does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def family_zoo(tmp_path_factory):
    """A zoo with every family: base cnn3, pruned, sparse, NSL (3 forms), shape adaptor, ResNet."""
    import modelset.architectures.resnet  # noqa: F401
    from modelset.architectures import build_architecture
    from modelset.writer import ModelRecord, ModelSetWriter

    kinds = {
        "base": ("cnn3", {"num_classes": 5}),
        "pruned": ("cnn3", {"num_classes": 5, "channels": [10, 12, 8]}),
        "sparse": ("cnn3", {"num_classes": 5}),
        "nsl_full": ("cnn3", {"num_classes": 5, "conv": "nsl_full"}),
        "nsl_diag": ("cnn3", {"num_classes": 5, "conv": "nsl_diag"}),
        "nsl_dynamic": ("cnn3", {"num_classes": 5, "conv": "nsl_dynamic"}),
        "shape_adaptor": ("cnn3", {"num_classes": 5, "downsample": "shape_adaptor"}),
        "resnet": ("resnet_tiny", {"num_classes": 5}),
    }
    gen = torch.Generator().manual_seed(0)
    records = []
    for t in range(4):
        for kind, (arch, kwargs) in kinds.items():
            for r in range(2):
                state = {
                    k: (v + 0.3 * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v
                    for k, v in build_architecture(arch, kwargs).state_dict().items()
                }
                if kind == "sparse":
                    state = {k: v * (v.abs() > 0.2) if k.endswith("weight") else v for k, v in state.items()}
                if kind == "resnet":
                    state = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in state.items()}
                row = {"task": f"t{t}", "dataset": "synthetic", "variant": kind, "parent_id": "", "seed": r}
                records.append(ModelRecord(f"t{t}-{kind}-{r}", arch, kwargs, {"final": state}, row))
    path = tmp_path_factory.mktemp("families") / "zoo"
    with ModelSetWriter.open(path, name="families", config={"test": True}) as writer:
        writer.write_shard(records)
        writer.finish()
    return modelset.open(path)


@pytest.mark.parametrize("mode", ["pairs", "contrastive"])
def test_every_family_trains_embeds_and_is_found(family_zoo, mode) -> None:
    ids = list(family_zoo.metadata.index)
    train_ids = [m for m in ids if m.startswith(("t0", "t1", "t2"))]
    scorer = lps.train(family_zoo, train_ids=train_ids, mode=mode, seed=0, epochs=1, batch_size=32)
    emb = scorer.embed(ids, ms=family_zoo)
    assert emb.shape == (len(ids), scorer.dim) and torch.isfinite(emb).all()
    queries = (
        ("t3-pruned-1", "t1-resnet-0") if mode == "pairs" else ("t3-nsl_dynamic-0", "t2-shape_adaptor-1")
    )
    for mid in queries:
        table = search_zoo(scorer, family_zoo, family_zoo.state_dict(mid), k=3)
        assert table["model_id"].iloc[0] == mid
