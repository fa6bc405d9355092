"""The zoo index of ``lps search``: written, used, rebuilt when stale, equal to a fresh search."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lps
import modelset
from lps.__main__ import main
from lps.index import INDEX_TABLE, INDEX_TENSORS, KEY_COLUMNS, load_index, read_index
from lps.search import search_zoo
from modelset.errors import ModelSetError
from modelset.synthetic import write_synthetic


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    path = write_synthetic(tmp_path_factory.mktemp("zoo") / "syn", 48, n_tasks=6, noise=0.3, seed=0)
    return modelset.open(path)


@pytest.fixture(scope="module")
def scorer(zoo):
    return lps.train(zoo, train_ids=list(zoo.metadata.index), epochs=3, seed=0)


@pytest.fixture()
def folder(scorer, tmp_path):
    return scorer.save(tmp_path / "lps" / "search")


def _digests(folder) -> dict[str, str]:
    with safe_open(str(folder / INDEX_TENSORS), "pt") as handle:
        return handle.metadata()


def test_index_is_written_then_used_without_embedding_the_zoo(zoo, scorer, folder, tmp_path, capsys, monkeypatch) -> None:
    assert main(["index", "--zoo", str(zoo.root), "--lps", str(folder)]) == 0
    assert "zoo index written" in capsys.readouterr().out
    assert (folder / INDEX_TABLE).exists() and (folder / INDEX_TENSORS).exists()
    index = read_index(folder, zoo.root)
    assert index is not None and list(index.table.index) == list(zoo.metadata.index)
    assert index.embeddings.shape == (len(zoo), scorer.dim)
    # The key columns the set has (the synthetic set has no recipe columns).
    assert list(index.table.columns) == [c for c in KEY_COLUMNS if c in zoo.metadata.columns]
    assert {"task", "architecture", "arch_kwargs", "variant", "test_accuracy"} <= set(index.table.columns)
    assert torch.allclose(index.embeddings, scorer.embed(list(zoo.metadata.index), ms=zoo), atol=1e-6)
    # With a matching index no zoo model is read or embedded: only the query is.
    def refuse(*args, **kwargs):
        raise AssertionError("the zoo was embedded although the index matches")

    monkeypatch.setattr("lps.model.bank_from_modelset", refuse)
    mid = zoo.metadata.index[5]
    save_file(zoo.state_dict(mid), str(tmp_path / "query.safetensors"))
    assert main(["search", str(tmp_path / "query.safetensors"), "--zoo", str(zoo.root), "--lps", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["model_id"] == mid


def test_a_changed_set_or_lps_makes_the_index_stale_and_it_is_rebuilt(zoo, scorer, folder, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lps.index"):
        first = load_index(scorer, zoo.root, folder)
    assert "no zoo index" in caplog.text
    caplog.clear()
    assert load_index(scorer, zoo.root, folder).set_digest == first.set_digest and not caplog.text
    # Another set (its SHA256SUMS differs): the index is rebuilt for it, with a log line.
    other = tmp_path / "other"
    shutil.copytree(zoo.root, other)
    sums = (other / "SHA256SUMS").read_text().splitlines()
    (other / "SHA256SUMS").write_text("\n".join(sorted(sums, reverse=True)) + "\n")
    with caplog.at_level(logging.WARNING, logger="lps.index"):
        assert read_index(folder, other) is None
        rebuilt = load_index(scorer, other, folder)
    assert "stale (the model set changed)" in caplog.text
    assert rebuilt.set_digest != first.set_digest and _digests(folder)["set_digest"] == rebuilt.set_digest
    # Other LPS weights under the same name: stale, rebuilt with the new weights' embeddings.
    load_index(scorer, zoo.root, folder)
    caplog.clear()
    retrained = lps.train(zoo, train_ids=list(zoo.metadata.index), epochs=3, seed=1)
    retrained.save(folder)
    with caplog.at_level(logging.WARNING, logger="lps.index"):
        again = load_index(retrained, zoo.root, folder)
    assert "stale (the LPS weights changed)" in caplog.text
    assert again.lps_digest != first.lps_digest
    assert torch.allclose(again.embeddings, retrained.embed(list(zoo.metadata.index), ms=zoo), atol=1e-6)
    assert not torch.allclose(again.embeddings, first.embeddings, atol=1e-3)
    assert not list(folder.glob(".*.tmp"))


def test_index_hits_equal_a_fresh_search(zoo, scorer, folder) -> None:
    index = load_index(scorer, zoo.root, folder)
    table = zoo.metadata
    for position in (0, 17, 40):
        state = zoo.state_dict(table.index[position])
        for filters in ({}, {"architecture": "cnn3", "min_accuracy": 0.2}, {"task": str(table["task"].iloc[3])}):
            fresh = search_zoo(scorer, zoo, state, k=7, **filters)
            saved = search_zoo(scorer, index, state, k=7, **filters)
            assert list(saved["model_id"]) == list(fresh["model_id"])
            assert torch.allclose(torch.tensor(saved["score"].to_numpy()), torch.tensor(fresh["score"].to_numpy()), atol=1e-6)
            assert saved.drop(columns="score").equals(fresh.drop(columns="score"))


def test_batch_mode_over_a_folder_and_a_glob(zoo, folder, tmp_path, capsys) -> None:
    queries = tmp_path / "mine"
    queries.mkdir()
    ids = list(zoo.metadata.index[[3, 21, 33]])
    save_file(zoo.state_dict(ids[0]), str(queries / "a.safetensors"))
    save_file(zoo.state_dict(ids[1]), str(queries / "b.safetensors"))
    torch.save(zoo.state_dict(ids[2]), queries / "c.pt")
    (queries / "notes.txt").write_text("not a checkpoint")
    base = ["--zoo", str(zoo.root), "--lps", str(folder), "-k", "2"]
    assert main(["search", str(queries), *base, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["queries"]
    assert [q["checkpoint"].rsplit("/", 1)[1] for q in found] == ["a.safetensors", "b.safetensors", "c.pt"]
    assert [q["hits"][0]["model_id"] for q in found] == ids and all(len(q["hits"]) == 2 for q in found)
    assert main(["search", str(queries / "*.safetensors"), *base, "--csv"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "checkpoint,model_id,task,score,architecture,variant,test_accuracy" and len(rows) == 5
    assert [r.split(",")[1] for r in rows[1::2]] == ids[:2]
    assert main(["search", str(queries / "a.safetensors"), str(queries / "c.pt"), *base]) == 0
    text = capsys.readouterr().out
    assert text.count("nearest models in") == 2 and ids[0] in text and ids[2] in text
    # One bad checkpoint among many: named on stderr, the others still answered, exit code 2.
    (queries / "d.safetensors").write_bytes(b"\x00" * 10)
    assert main(["search", str(queries), *base, "--json"]) == 2
    captured = capsys.readouterr()
    assert "d.safetensors: cannot be read as safetensors" in captured.err
    assert len(json.loads(captured.out)["queries"]) == 3
    assert main(["search", str(tmp_path / "none-*.pt"), *base]) == 2
    assert "none-*.pt: no checkpoint files" in capsys.readouterr().err


def test_a_corrupt_index_file_is_named(zoo, scorer, folder, tmp_path, capsys) -> None:
    load_index(scorer, zoo.root, folder)
    table = (folder / INDEX_TABLE).read_bytes()
    (folder / INDEX_TENSORS).write_bytes(b"\x00" * 64)
    with pytest.raises(ModelSetError, match=rf"{INDEX_TENSORS}: not a readable zoo index"):
        read_index(folder, zoo.root)
    save_file(zoo.state_dict(zoo.metadata.index[0]), str(tmp_path / "query.safetensors"))
    assert main(["search", str(tmp_path / "query.safetensors"), "--zoo", str(zoo.root), "--lps", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder / INDEX_TENSORS) in err and "python -m lps index" in err
    # A table that is not the one the embeddings were written with.
    assert main(["index", "--zoo", str(zoo.root), "--lps", str(folder)]) == 0
    (folder / INDEX_TABLE).write_bytes(table[:-10] + b"\x00" * 10)
    with pytest.raises(ModelSetError, match=rf"{INDEX_TABLE}: does not match {INDEX_TENSORS}"):
        read_index(folder, zoo.root)
