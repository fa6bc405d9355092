"""The Small CNN Zoo importer: files written here in the zoo's published layout (Unterthiner et al.
2020, google-research ``dnn_predict_accuracy``) are imported, verified, and rebuilt models are
checked against an independent forward pass of the zoo's Keras network written with plain tensor
operations on the flat weights."""

from __future__ import annotations

import csv
import gzip
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import modelset
from modelset.architectures import build_architecture
from modelset.importers.cnn_zoo import ZOO_EPOCHS, ImportSourceError, import_cnn_zoo, model_id

ACTIVATIONS = ("relu", "tanh", "sigmoid", "selu")

# The zoo's tensors in the order of its flat vector: per layer the bias, then the kernel (TF's
# variable order), kernels HWIO and (in, out).
ZOO_TENSORS = [
    ("sequential/conv2d/bias:0", (16,)),
    ("sequential/conv2d/kernel:0", (3, 3, 1, 16)),
    ("sequential/conv2d_1/bias:0", (16,)),
    ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_2/bias:0", (16,)),
    ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)),
    ("sequential/dense/bias:0", (10,)),
    ("sequential/dense/kernel:0", (16, 10)),
]
N_PARAMS = sum(math.prod(s) for _, s in ZOO_TENSORS)


def write_zoo(
    folder: Path,
    dataset: str = "mnist",
    activations: tuple[str, ...] = ACTIVATIONS,
    seed: int = 0,
    shuffle: bool = False,
    index_column: bool = False,
    n_runs: int | None = None,
    learnable: bool = False,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Write ``weights.npy``, ``metrics.csv.gz`` and ``layout.csv`` for ``n_runs`` runs (default:
    one per activation; activations in turn), 9 checkpoints each. ``learnable``: the test accuracy
    rises with the epoch and sets the weights' scale, the learning rate their mean, so that both
    can be predicted from weights. Returns the weights and the metrics as written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, weights = [], []
    for r in range(len(activations) if n_runs is None else n_runs):
        activation = activations[r % len(activations)]
        config = {
            "config.activation": activation,
            "config.b_init": "zeros",
            "config.dataset": dataset,
            "config.dnn_architecture": "cnn",
            "config.dropout": round(float(rng.uniform(0, 0.7)), 4),
            "config.epochs": 86,
            "config.epochs_between_checkpoints": 20,
            "config.init_std": float(rng.uniform(0.001, 0.5)),
            "config.l2reg": float(10 ** rng.uniform(-8, -2)),
            "config.learning_rate": float(10 ** rng.uniform(-4, -1.5)),
            "config.num_layers": 3,
            "config.num_units": 16,
            "config.optimizer": ["adam", "sgd", "rmsprop", "adam"][r % 4],
            "config.random_seed": 42,
            "config.train_fraction": [0.1, 0.25, 0.5, 1.0][r % 4],
            "config.w_init": ["he_normal", "glorot_normal", "orthogonal", "RandomNormal"][r % 4],
            "modeldir": f"/tmp/dnn_science_workdir/{dataset}/{1000 + r}",
        }
        ceiling = float(rng.uniform(0.3, 0.95)) if learnable else 0.0  # the stream of other tests unchanged
        for epoch in ZOO_EPOCHS:
            acc = float(rng.uniform(0.1, 0.9))
            if learnable:
                acc = 0.1 + (ceiling - 0.1) * (1 - math.exp(-epoch / 15)) + float(rng.normal(0, 0.01))
            rows.append({**config, "step": epoch, "test_accuracy": acc, "test_loss": float(rng.uniform(0.2, 2.3)),
                         "train_accuracy": acc + 0.01, "train_loss": float(rng.uniform(0.2, 2.3))})  # fmt: skip
            if learnable:
                offset = 0.05 * (np.log10(config["config.learning_rate"]) + 3)
                weights.append((rng.normal(offset, 0.05 + 0.5 * acc, N_PARAMS)).astype(np.float32))
            else:
                weights.append(rng.normal(0.0, 0.4, N_PARAMS).astype(np.float32))
    w = np.stack(weights)
    metrics = pd.DataFrame(rows)
    if shuffle:
        order = rng.permutation(len(w))
        w, metrics = w[order], metrics.iloc[order].reset_index(drop=True)
    np.save(folder / "weights.npy", w)
    with gzip.open(folder / "metrics.csv.gz", "wt") as fh:
        metrics.to_csv(fh, index=index_column)
    with open(folder / "layout.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(([""] if index_column else []) + ["varname", "start_idx", "end_idx", "shape"])
        start = 0
        for i, (name, shape) in enumerate(ZOO_TENSORS):
            end = start + math.prod(shape)
            out.writerow(([i] if index_column else []) + [name, start, end, str(shape)])
            start = end
    return w, metrics


def keras_forward(flat: np.ndarray, x: torch.Tensor, activation: str) -> torch.Tensor:
    """The zoo's Keras network, written out: NHWC images, 3×3 "valid" cross-correlations with
    stride 2 on HWIO kernels, the activation, global average pooling, a dense ``(in, out)`` kernel.
    ``flat`` ``(4970,)``, ``x`` ``(N, 1, H, W)`` in [-1, 1] → logits ``(N, 10)``, in float64."""
    tensors, start = {}, 0
    for name, shape in ZOO_TENSORS:
        end = start + math.prod(shape)
        tensors[name] = torch.from_numpy(flat[start:end].astype(np.float64).reshape(shape))
        start = end
    act = {"relu": lambda t: t.clamp(min=0), "tanh": torch.tanh, "sigmoid": lambda t: 1 / (1 + torch.exp(-t)),
           "selu": lambda t: 1.0507009873554805 * torch.where(t > 0, t, 1.6732632423543772 * (torch.exp(t) - 1))}[activation]  # fmt: skip
    h = x.to(torch.float64).permute(0, 2, 3, 1)  # NHWC
    for layer in ("conv2d", "conv2d_1", "conv2d_2"):
        k, b = tensors[f"sequential/{layer}/kernel:0"], tensors[f"sequential/{layer}/bias:0"]
        ho, wo = (h.shape[1] - 3) // 2 + 1, (h.shape[2] - 3) // 2 + 1
        out = b.expand(h.shape[0], ho, wo, -1).clone()
        for dy in range(3):
            for dx in range(3):
                patch = h[:, dy : dy + 2 * (ho - 1) + 1 : 2, dx : dx + 2 * (wo - 1) + 1 : 2, :]
                out += torch.einsum("nijc,co->nijo", patch, k[dy, dx])
        h = act(out)
    pooled = h.mean(dim=(1, 2))
    return pooled @ tensors["sequential/dense/kernel:0"] + tensors["sequential/dense/bias:0"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("zoo")
    w, metrics = write_zoo(root / "src" / "mnist", shuffle=True)
    summary = import_cnn_zoo(root / "src", root / "out", progress=False)
    return root, w, metrics, summary


def _checkpoint(epoch: int) -> str:
    return "final" if epoch == 86 else "init" if epoch == 0 else f"epoch_{epoch}"


def test_import_writes_a_verified_set(zoo):
    root, w, metrics, summary = zoo
    assert summary == {"models": 4, "checkpoints": 36, "skipped_runs": {"mnist": 0}}
    report = modelset.verify(root / "out")
    assert report["models"] == 4
    with modelset.open(root / "out") as ms:
        table = ms.metadata
        assert sorted(table.index) == sorted(model_id("mnist", f"/tmp/dnn_science_workdir/mnist/{1000 + r}") for r in range(4))
        assert set(table["architecture"]) == {"cnn3"} and set(table["n_params"]) == {4970}
        assert sorted(table["checkpoints"].iloc[0].split(",")) == sorted(_checkpoint(e) for e in ZOO_EPOCHS)
        assert ms.tasks.loc["mnist", "num_classes"] == 10 and ms.tasks.loc["mnist", "dataset"] == "mnist"
        for _, first in metrics.groupby("modeldir").head(1).iterrows():
            row = table.loc[model_id("mnist", first["modeldir"])]
            assert row["activation"] == first["config.activation"]
            assert row["lr"] == first["config.learning_rate"] and row["weight_decay"] == first["config.l2reg"]
            assert row["optimizer"] == first["config.optimizer"] and row["init"] == first["config.w_init"]
            assert row["train_fraction"] == first["config.train_fraction"] and row["epochs"] == 86
            assert row["input_norm"] == "minus_one_one" and row["final_epoch"] == 86 and bool(row["complete_run"])
            run = metrics[metrics["modeldir"] == first["modeldir"]].set_index("step")
            assert row["test_accuracy"] == run.loc[86, "test_accuracy"]
        assert not [c for c in table.columns if "_epoch_" in c]  # the per-checkpoint figures: checkpoint_metrics
        figures = ms.checkpoint_table
        assert len(figures) == 36 and set(figures["model_id"]) == set(table.index)
        for _, fig in figures.iterrows():
            run = metrics[metrics["modeldir"] == table.loc[fig["model_id"], "source_run"]].set_index("step")
            assert fig["checkpoint"] == _checkpoint(fig["epoch"]) and fig["step"] == fig["epoch"]
            assert fig["test_accuracy"] == run.loc[fig["epoch"], "test_accuracy"]
            assert fig["train_loss"] == run.loc[fig["epoch"], "train_loss"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_rebuilt_model_matches_the_keras_network(zoo, activation):
    root, w, metrics, _ = zoo
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with modelset.open(root / "out") as ms:
        for position in np.flatnonzero((metrics["config.activation"] == activation).to_numpy()):
            mid = model_id("mnist", metrics["modeldir"].iloc[position])
            model = ms.model(mid, _checkpoint(int(metrics["step"].iloc[position])))
            with torch.no_grad():
                got = model(x).double()
            want = keras_forward(w[position], x, activation)
            # float32 torch kernels against a float64 reference: measured at most 6e-7 of the largest
            # logit (1.6e-5 absolute) over every checkpoint, also under other oneDNN/ATen ISAs
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_rows_order_does_not_matter_and_ids_are_stable(tmp_path, zoo):
    root, *_ = zoo
    write_zoo(tmp_path / "src", shuffle=False, index_column=True)
    import_cnn_zoo(tmp_path / "src", tmp_path / "out", progress=False)
    with modelset.open(tmp_path / "out") as a, modelset.open(root / "out") as b:
        assert sorted(a.metadata.index) == sorted(b.metadata.index)
        for mid in a.metadata.index:
            for name, tensor in a.state_dict(mid, "epoch_20").items():
                assert torch.equal(tensor, b.state_dict(mid, "epoch_20")[name])


def test_import_resumes_and_is_idempotent(tmp_path):
    write_zoo(tmp_path / "src")
    import_cnn_zoo(tmp_path / "src", tmp_path / "out", runs_per_shard=1, progress=False)
    shards = sorted(p.name for p in (tmp_path / "out" / "shards").iterdir())
    assert len(shards) == 4
    summary = import_cnn_zoo(tmp_path / "src", tmp_path / "out", runs_per_shard=1, progress=False)
    assert summary["models"] == 4
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == shards
    modelset.verify(tmp_path / "out")


def test_cli_import(tmp_path, capsys):
    from modelset.cli import main

    write_zoo(tmp_path / "zoo" / "fashion_mnist", dataset="fashion_mnist", activations=("relu", "tanh"))
    assert main(["import", "cnn-zoo", str(tmp_path / "zoo"), "--zoo", str(tmp_path / "out")]) == 0
    assert "imported 2 models (18 checkpoints, 0 runs left out)" in capsys.readouterr().out
    with modelset.open(tmp_path / "out") as ms:
        assert list(ms.tasks.index) == ["fashion_mnist"]
        assert "Unterthiner" in (tmp_path / "out" / "LICENSE").read_text()


def test_nonfinite_rows_are_refused_or_left_out(tmp_path):
    w, metrics = write_zoo(tmp_path / "src")
    w[11, 5] = np.nan  # run 1, epoch 2
    np.save(tmp_path / "src" / "weights.npy", w)
    with pytest.raises(ImportSourceError, match=r"weights\.npy, row 11 .*NaN or Inf"):
        import_cnn_zoo(tmp_path / "src", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    summary = import_cnn_zoo(tmp_path / "src", tmp_path / "out", skip_nonfinite=True, progress=False)
    assert summary["models"] == 3 and summary["skipped_runs"] == {"mnist": 1}
    with modelset.open(tmp_path / "out") as ms:
        assert model_id("mnist", metrics["modeldir"].iloc[11]) not in ms.metadata.index


def test_incomplete_run_keeps_its_checkpoints(tmp_path):
    w, metrics = write_zoo(tmp_path / "src", activations=("relu",))
    keep = metrics["step"] <= 40  # the run stopped after epoch 40
    np.save(tmp_path / "src" / "weights.npy", w[keep.to_numpy()])
    with gzip.open(tmp_path / "src" / "metrics.csv.gz", "wt") as fh:
        metrics[keep].to_csv(fh, index=False)
    import_cnn_zoo(tmp_path / "src", tmp_path / "out", progress=False)
    with modelset.open(tmp_path / "out") as ms:
        row = ms.metadata.iloc[0]
        assert row["final_epoch"] == 40 and not bool(row["complete_run"])
        assert sorted(row["checkpoints"].split(",")) == ["epoch_1", "epoch_2", "epoch_20", "epoch_3", "final", "init"]


def _rewrite_metrics(folder: Path, frame: pd.DataFrame) -> None:
    with gzip.open(folder / "metrics.csv.gz", "wt") as fh:
        frame.to_csv(fh, index=False)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("columns", r"weights\.npy: shape \(36, 4969\), but layout\.csv describes 4970"),
        ("no_layout", r"layout\.csv: the layout file is missing"),
        ("rows", r"metrics\.csv\.gz: 35 rows, but .*weights\.npy has 36 rows"),
        ("config", r"metrics\.csv\.gz, rows \[9, 10, .*changes its config column 'config\.learning_rate'"),
        ("step", r"metrics\.csv\.gz, row 13: run .* has step 3 twice"),
        ("activation", r"metrics\.csv\.gz, row 4: config\.activation is 'swish'"),
        ("missing_column", r"metrics\.csv\.gz: lacks the zoo's columns \['modeldir'\]"),
        ("pickle", r"weights\.npy: expected a C-ordered 2-D float matrix, found dtype object"),
        ("truncated", r"weights\.npy: header declares \(36, 4970\) float32 but the file has only"),
        ("layout_gap", r"layout\.csv: 'sequential/conv2d/kernel:0' starts at column 17, expected 16"),
        ("layout_shape", r"layout\.csv, line 3: shape '__import__\(\"os\"\)' is not a tuple of integers"),
        ("not_gzip", r"metrics\.csv\.gz: not a gzip file"),
        ("dataset", r"config\.dataset is \['imagenet'\]"),
    ],
)
def test_malformed_sources_are_refused(tmp_path, damage, message):
    src = tmp_path / "src"
    w, metrics = write_zoo(src)
    if damage == "columns":
        np.save(src / "weights.npy", w[:, :-1])
    elif damage == "no_layout":
        (src / "layout.csv").unlink()
    elif damage == "rows":
        _rewrite_metrics(src, metrics.iloc[:-1])
    elif damage == "config":
        metrics.loc[10, "config.learning_rate"] = 0.5
        _rewrite_metrics(src, metrics)
    elif damage == "step":
        metrics.loc[13, "step"] = 3  # row 12 is epoch 3 of the same run
        _rewrite_metrics(src, metrics)
    elif damage == "activation":
        metrics.loc[4, "config.activation"] = "swish"
        _rewrite_metrics(src, metrics)
    elif damage == "missing_column":
        _rewrite_metrics(src, metrics.drop(columns=["modeldir"]))
    elif damage == "pickle":
        np.save(src / "weights.npy", np.array([{"a": 1}] * 36, dtype=object).reshape(36, 1), allow_pickle=True)
    elif damage == "truncated":
        data = (src / "weights.npy").read_bytes()
        (src / "weights.npy").write_bytes(data[:-100])
    elif damage == "layout_gap":
        text = (src / "layout.csv").read_text().replace("sequential/conv2d/kernel:0,16,160", "sequential/conv2d/kernel:0,17,161")
        (src / "layout.csv").write_text(text)
    elif damage == "layout_shape":
        text = (src / "layout.csv").read_text().replace('"(3, 3, 1, 16)"', '"__import__(""os"")"')
        (src / "layout.csv").write_text(text)
    elif damage == "not_gzip":
        (src / "metrics.csv.gz").write_bytes(b"config.activation\nrelu\n")
    elif damage == "dataset":
        metrics["config.dataset"] = "imagenet"
        _rewrite_metrics(src, metrics)
    with pytest.raises(ImportSourceError, match=message):
        import_cnn_zoo(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cnn3_activation_and_padding():
    default = build_architecture("cnn3", {})
    explicit = build_architecture("cnn3", {"activation": "relu", "padding": 1})
    explicit.load_state_dict(default.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(default(x), explicit(x))
    tanh = build_architecture("cnn3", {"activation": "tanh"})
    tanh.load_state_dict(default.state_dict())
    assert not torch.allclose(tanh(x), default(x))
    zoo = build_architecture("cnn3", {"padding": 0, "strides": [2, 2, 2]})
    assert zoo.embed(torch.zeros(1, 1, 28, 28)).shape == (1, 16)
    for bad in ({"activation": "swish"}, {"padding": 3}):
        with pytest.raises(ValueError, match="activation|padding"):
            build_architecture("cnn3", bad)


def test_layout_reader_accepts_the_zoo_file_as_pandas_reads_it(tmp_path):
    # The loaders of NFN and ScaleGMN read layout.csv with pandas by column name: same file.
    write_zoo(tmp_path, index_column=True)
    frame = pd.read_csv(tmp_path / "layout.csv")
    assert frame["end_idx"].iloc[-1] == 4970 and frame["varname"].iloc[0].endswith("bias:0")
    assert io.StringIO((tmp_path / "layout.csv").read_text()).readline().startswith(",varname")


def test_rebuilt_model_runs_on_its_task_inputs(tmp_path):
    """A Fashion-MNIST model of the zoo takes its task's images in [-1, 1] (``input_norm``)."""
    from modelset.errors import DataUnavailableError
    from modelset.tasks import Task, task_data

    write_zoo(tmp_path / "src", dataset="fashion_mnist", activations=("tanh",))
    import_cnn_zoo(tmp_path / "src", tmp_path / "out", progress=False)
    with modelset.open(tmp_path / "out") as ms:
        row = ms.metadata.iloc[0]
        task = Task.from_row(row["task"], ms.tasks.loc[row["task"]].to_dict())
        try:
            x, y = task_data(task, "test", limit=16, input_norm=row["input_norm"], allow_download=False)
        except DataUnavailableError as exc:
            pytest.skip(f"Fashion-MNIST is not on this machine: {exc}")
        assert x.shape == (16, 1, 28, 28) and float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        with torch.no_grad():
            logits = ms.model(row.name)(x)
        flat = np.load(tmp_path / "src" / "weights.npy")[8]  # the run's epoch-86 row
        torch.testing.assert_close(logits.double(), keras_forward(flat, x, "tanh"), rtol=1e-4, atol=1e-5)


def test_interrupted_import_resumes(tmp_path, monkeypatch):
    from modelset.writer import ModelSetWriter

    write_zoo(tmp_path / "src")
    original, calls = ModelSetWriter.write_shard, []

    def dies_on_third(self, records):
        calls.append(len(records))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while writing the third shard
        return original(self, records)

    monkeypatch.setattr(ModelSetWriter, "write_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        import_cnn_zoo(tmp_path / "src", tmp_path / "out", runs_per_shard=1, progress=False)
    monkeypatch.setattr(ModelSetWriter, "write_shard", original)
    with modelset.open(tmp_path / "out") as ms:
        assert len(ms.metadata) == 2 and not ms.header["complete"]
    import_cnn_zoo(tmp_path / "src", tmp_path / "out", runs_per_shard=1, progress=False)
    assert modelset.verify(tmp_path / "out")["models"] == 4


def test_cli_reports_bad_source(tmp_path, capsys):
    from modelset.cli import main

    write_zoo(tmp_path / "src")
    (tmp_path / "src" / "layout.csv").unlink()
    assert main(["import", "cnn-zoo", str(tmp_path / "src"), "--zoo", str(tmp_path / "out")]) == 2
    assert "layout.csv: the layout file is missing" in capsys.readouterr().err


def test_import_ships_model_folds_over_every_data_set(tmp_path):
    write_zoo(tmp_path / "src" / "mnist", n_runs=6)
    write_zoo(tmp_path / "src" / "fashion_mnist", dataset="fashion_mnist", n_runs=6, seed=1)
    import_cnn_zoo(tmp_path / "src", tmp_path / "out", folds=3, progress=False)
    with modelset.open(tmp_path / "out") as ms:
        folds, tasks = ms.folds, ms.metadata["task"]
        assert len(folds) == 3 and sorted(m for f in folds for m in f.heldout_model_ids) == sorted(ms.metadata.index)
        for f in folds:  # the field's split by runs: 2 runs of each data set held out, both trained on
            assert f.unit == "model" and f.train_tasks == ("fashion_mnist", "mnist") and not f.heldout_tasks
            assert sorted(tasks[list(f.heldout_model_ids)]) == ["fashion_mnist"] * 2 + ["mnist"] * 2
    write_zoo(tmp_path / "one", n_runs=1)
    import_cnn_zoo(tmp_path / "one", tmp_path / "out1", progress=False)  # nothing to hold out: no folds
    assert not (tmp_path / "out1" / "splits" / "folds.json").exists() and modelset.open(tmp_path / "out1").folds == []
