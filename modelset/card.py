"""The dataset card: README.md inside a model set, generated from its files at ``finish``.

The card is what a researcher who fetched a release reads first: what the models are and on which
tasks (class names, input domains), what each relation means and how reliable it is, the fold
files, the exact parameter layout and input preprocessing, intended uses and limitations, file
sizes, licence and citation. Its YAML header (written with ``yaml.safe_dump``) is a Hugging Face
dataset card header; its ``configs`` make ``datasets.load_dataset(SET)`` load the model and task
tables.

Builders add or replace sections by name (``SECTIONS``); a section named ``"Relation: NAME"`` is
the measurement protocol of relation ``NAME`` and goes into the relations section.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from modelset import citation
from modelset.layout import LAYOUT_INDEX, LAYOUTS_DIR, read_layout
from modelset.schema import (
    CARD_FILE,
    CHECKSUMS_FILE,
    MODELS_FILE,
    RELATIONS_DIR,
    SCHEMA_VERSION,
    TASKS_FILE,
    UNCHECKED,
)

#: Sections every card has, in order; builders fill the ones they know more about.
SECTIONS = (
    "Summary",
    "How it was made",
    "Tasks",
    "Relations",
    "Splits",
    "Fields",
    "Parameter layout",
    "Loading without modelset",
    "Files and sizes",
    "Intended uses",
    "Limitations",
    "Licence",
    "Citation",
)
RELATION_SECTION_PREFIX = "Relation: "
SPLITS_FILE = "splits/folds.json"
LICENSE_FILE = "LICENSE"
CITATION_FILE = "CITATION.cff"

#: What the relations written by this project's builders mean (a builder's protocol text is added).
RELATION_MEANINGS = {
    "label_jaccard": (
        "Jaccard index |A ∩ B| / |A ∪ B| of the two tasks' class sets (0 for tasks of different "
        "data sets). Known from the task definitions: exact, no measurement noise."
    ),
    "same_domain": (
        "1 if the two tasks read the same data set through the same input domain (name and "
        "arguments), else 0. Known from the task definitions: exact."
    ),
    "transfer_affinity": (
        "Measured: test-accuracy gain on the target task (column) of fine-tuning a model of the "
        "source task (row) over training from scratch, on a small budget of target images. Not "
        "symmetric; noisy, since it comes from short training runs."
    ),
    "same_task": "1 on the diagonal, 0 elsewhere: whether two models solve the same task.",
}

#: Python that reads one model's parameters with h5py, NumPy and a layout file alone. The README's
#: "Download and cite" section quotes it; a test runs it against ``ms.state_dict``.
H5PY_LOADER = '''\
import csv, glob, hashlib, json
import h5py, numpy as np

def load_params(set_dir, model_id, checkpoint="final"):
    """({tensor name: array}, flat float32 vector in layout order) of one model."""
    for path in sorted(glob.glob(f"{set_dir}/shards/shard-*.h5")):
        with h5py.File(path, "r") as h5:
            for block in h5["blocks"].values():
                ids = list(block["model_ids"].asstr()[()])
                if model_id not in ids:
                    continue
                i = ids.index(model_id)
                arch, kwargs = block.attrs["architecture"], block.attrs["arch_kwargs"]
                name = f"{arch}-{hashlib.sha256(kwargs.encode()).hexdigest()[:12]}.csv"
                with open(f"{set_dir}/layouts/{name}", newline="") as f:
                    layout = list(csv.DictReader(f))
                group = block["checkpoints"][checkpoint]
                tensors = {row["tensor"]: group[row["tensor"]][i] for row in layout}
                flat = np.concatenate([np.ravel(tensors[row["tensor"]]).astype(np.float32) for row in layout])
                for row in layout:  # the layout's offsets cut the vector back into the tensors
                    start, size = int(row["offset"]), int(row["size"])
                    part = flat[start:start + size].reshape(json.loads(row["shape"]))
                    assert np.array_equal(part.astype(row["dtype"]), tensors[row["tensor"]])
                return tensors, flat
    raise KeyError(f"{model_id} is not in {set_dir}")
'''


def human_size(n: int) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` value for ``n`` rows."""
    if n < 1000:
        return "n<1K"
    bounds = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    k = min(int(math.log10(n)) - 3, len(bounds) - 2)
    return f"{bounds[k]}<n<{bounds[k + 1]}"


def _table(header: list[str], rows: list[list[Any]], align: str = "") -> str:
    align = align or "-" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _counts_table(table: pd.DataFrame, column: str) -> str:
    if not len(table):
        return "(no models)\n"
    has_acc = "test_accuracy" in table
    rows = []
    for key, group in table.groupby(column):
        acc = f"{pd.to_numeric(group['test_accuracy'], errors='coerce').mean():.3f}" if has_acc else "-"
        rows.append([key, len(group), acc])
    return _table([column, "models", "mean test accuracy"], rows, "lrr")


# -- reading what the set holds -------------------------------------------------------------
def read_folds(root: Path) -> dict[str, Any] | None:
    """``splits/folds.json`` of the set at ``root`` (the lead's contract), or ``None`` if absent.

    Raises ``SchemaError`` naming the file when it is there but malformed.
    """
    from modelset.errors import SchemaError

    path = root / SPLITS_FILE
    if not path.exists():
        return None
    try:
        folds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"{path}: cannot be read as JSON ({exc})") from exc
    ok = isinstance(folds, dict) and isinstance(folds.get("folds"), list) and all(
        isinstance(f, dict) and isinstance(f.get("heldout_tasks"), list) for f in folds["folds"]
    )
    if not ok:
        raise SchemaError(f"{path}: expected {{'schema', 'k', 'seed', 'folds': [{{'heldout_tasks': [...], ...}}]}}")
    return folds


def _relations(root: Path) -> dict[str, pd.DataFrame]:
    folder = root / RELATIONS_DIR
    out = {}
    for path in sorted(folder.glob("*.csv")) if folder.exists() else []:
        frame = pd.read_csv(path, index_col=0)
        frame.index = frame.index.astype(str)
        frame.columns = frame.columns.astype(str)
        out[path.stem] = frame
    return out


def _tasks(root: Path) -> pd.DataFrame:
    path = root / TASKS_FILE
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def _layouts(root: Path) -> pd.DataFrame:
    path = root / LAYOUTS_DIR / LAYOUT_INDEX
    return pd.read_csv(path, dtype={"arch_kwargs": str}) if path.exists() else pd.DataFrame()


# -- sections -------------------------------------------------------------------------------
def _class_names(dataset: str, classes: list[int]) -> str:
    from modelset.datasets import DATASETS

    info = DATASETS.get(dataset) if dataset in DATASETS else None
    names = info.classes if info is not None else ()
    return ", ".join(f"{c} {names[c]}" if c < len(names) else str(c) for c in classes)


def _domain_text(domain: str, kwargs: Any) -> str:
    from modelset.domains import list_domains

    args = json.loads(kwargs) if isinstance(kwargs, str) and kwargs else dict(kwargs or {})
    shown = domain + (f" ({', '.join(f'{k}={v}' for k, v in sorted(args.items()))})" if args else "")
    return shown if domain in list_domains() else f"{shown} (not a registered domain)"


def _tasks_section(tasks: pd.DataFrame, table: pd.DataFrame) -> str:
    if not len(tasks):
        return "This set has no task table.\n"
    from modelset.domains import get_domain, list_domains

    counts = table["task"].astype(str).value_counts() if len(table) else pd.Series(dtype=int)
    has_scratch = "scratch_accuracy" in tasks
    rows = []
    for task_id, row in tasks.iterrows():
        classes = row.get("classes")
        classes = json.loads(classes) if isinstance(classes, str) else list(classes)
        dataset = str(row.get("dataset", ""))
        cells = [f"`{task_id}`", dataset, len(classes), _class_names(dataset, classes),
                 _domain_text(str(row.get("domain", "identity")), row.get("domain_kwargs")),
                 int(counts.get(str(task_id), 0))]  # fmt: skip
        if has_scratch:
            cells.append(f"{float(row['scratch_accuracy']):.3f}")
        rows.append(cells)
    header = ["task", "data set", "k", "classes (id name)", "input domain", "models"]
    header += ["scratch accuracy"] if has_scratch else []
    text = (
        "A task is a classification problem: a subset of a data set's classes, seen through an input "
        "domain. Labels are remapped to `0..k-1` in the order of the sorted class ids, so a task's "
        "models have a `k`-way head.\n\n" + _table(header, rows, "llrllr" + ("r" if has_scratch else ""))
    )
    domains = sorted({str(d) for d in tasks.get("domain", pd.Series(dtype=str))})
    if domains:
        text += "\nInput domains (applied to images with pixels in [0, 1]):\n\n"
        for name in domains:
            desc = get_domain(name).description if name in list_domains() else "unknown domain"
            text += f"- `{name}`: {desc.replace('``', '`')}\n"
    if has_scratch:
        text += (
            "\n`scratch accuracy` is the test accuracy of models trained from scratch on the transfer "
            "budget (see the transfer affinity protocol).\n"
        )
    return text


def _relation_stats(frame: pd.DataFrame) -> str:
    values = frame.to_numpy(dtype=float)
    off = values[~np.eye(len(values), dtype=bool)] if len(values) > 1 else values.ravel()
    symmetric = bool(np.allclose(values, values.T, equal_nan=True))
    return (
        f"{len(values)} × {len(values)}, {'symmetric' if symmetric else 'not symmetric'}, values "
        f"{np.nanmin(values):.3g} to {np.nanmax(values):.3g}, off-diagonal mean {np.nanmean(off):.3g}"
    )


def _relations_section(root: Path, header: Mapping[str, Any], sections: Mapping[str, str]) -> str:
    relations = _relations(root)
    if not relations:
        return "This set has no relation matrices.\n"
    reliability = header.get("relation_reliability") or {}
    parts = [
        "Ground-truth task × task matrices in `relations/NAME.csv` (first column and header row: "
        "task ids; rows index the first task). `ms.relations[NAME]` reads them as DataFrames.\n"
    ]
    for name, frame in relations.items():
        meaning = RELATION_MEANINGS.get(name, "No description was recorded for this relation.")
        parts.append(f"### `{name}`\n\n{meaning}\n\nIn this set: {_relation_stats(frame)}.\n")
        protocol = sections.get(f"{RELATION_SECTION_PREFIX}{name}")
        if protocol:
            parts.append(f"How it was measured: {protocol.strip()}\n")
        rel = reliability.get(name)
        stated = bool(protocol) and "Reliability" in protocol  # the builder's text gives the figures
        if stated:
            continue
        if isinstance(rel, Mapping):
            figures = []
            if "spearman_halves" in rel:
                figures.append(f"Spearman correlation between two independent halves of the runs {float(rel['spearman_halves']):.3f}")
            if "spearman_brown" in rel:
                figures.append(f"Spearman–Brown reliability of the full measurement {float(rel['spearman_brown']):.3f}")
            if "n_pairs" in rel:
                figures.append(f"over {int(rel['n_pairs'])} task pairs")
            text = "; ".join(figures) or "recorded without figures"
            desc = f" {rel['description']}" if rel.get("description") else ""
            parts.append(f"Reliability (measured when the set was built): {text}.{desc}\n")
        elif name in ("label_jaccard", "same_domain", "same_task"):
            parts.append("Reliability: exact by construction.\n")
        else:
            parts.append(
                "Reliability: not measured for this set (its header has no `relation_reliability` "
                f"entry for `{name}`); treat small differences as noise.\n"
            )
    return "\n".join(parts)


def _splits_section(root: Path, table: pd.DataFrame) -> str:
    folds = read_folds(root)
    if folds is None:
        return (
            f"This set ships no fold file (`{SPLITS_FILE}`). Hold tasks out yourself, and never fit "
            "a learned method on models of the tasks it is scored on.\n"
        )
    if folds.get("unit") == "model":
        rows = [[fold.get("fold", i), len(fold.get("train_ids", [])), len(fold.get("heldout_model_ids", []))]
                for i, fold in enumerate(folds["folds"])]  # fmt: skip
        return (
            f"`{SPLITS_FILE}` holds {len(folds['folds'])} model folds (unit `model`, seed {folds.get('seed', '?')}): "
            "the set has too few tasks to hold tasks out, so every model family is held out in exactly one "
            "fold, about 1/k of each task's. Per fold: `train_ids` (models a learned method may fit on) and "
            "`heldout_model_ids` (the models it is scored on); every task is a training task.\n\n"
            + _table(["fold", "train models", "held-out models"], rows, "lrr")
        )
    rows = []
    for i, fold in enumerate(folds["folds"]):
        rows.append([
            fold.get("fold", i), ", ".join(f"`{t}`" for t in fold.get("heldout_tasks", [])),
            len(fold.get("train_ids", [])), len(fold.get("heldout_model_ids", [])),
            len(fold.get("heldout_task_ids", [])),
        ])  # fmt: skip
    text = (
        f"`{SPLITS_FILE}` holds {len(folds['folds'])} task folds (k = {folds.get('k', len(folds['folds']))}, "
        f"seed {folds.get('seed', '?')}, schema {folds.get('schema', '?')}). Every task is held out in "
        "exactly one fold. Per fold: `train_tasks`, `heldout_tasks`, `train_ids` (models a learned "
        "method may fit on), `heldout_model_ids` (models of the training tasks kept out of fitting: "
        "held-out models of seen tasks), `heldout_task_ids` (every model of the held-out tasks: "
        "scored by retrieval), `heldout_recipe_ids`.\n\n"
        + _table(["fold", "held-out tasks", "train models", "held-out models of train tasks",
                  "models of held-out tasks"], rows, "lrrrr")  # fmt: skip
        + "\nUse: fit on `train_ids` of a fold, score on its held-out ids, and report the mean and a "
        "confidence interval over the folds' held-out tasks:\n\n```python\nimport json\nfolds = "
        f"json.load(open('PATH/{SPLITS_FILE}'))['folds']\nfor fold in folds:\n    train = "
        "ms.metadata.loc[fold['train_ids']]\n    test = ms.metadata.loc[fold['heldout_task_ids']]\n```\n"
    )
    return text


def _fields_section(table: pd.DataFrame) -> str:
    columns = ", ".join(f"`{c}`" for c in table.columns) if len(table) else "(none yet)"
    return (
        "`models.parquet` has one row per model: `model_id`, `task`, `dataset`, `architecture` and "
        "`arch_kwargs` (rebuild with `ms.model(id)`), `variant` and `parent_id` (the model it was "
        "derived from; empty for base models), `seed`, hyper-parameters, metrics such as "
        "`test_accuracy`, `n_params`, and where its tensors are (`shard`, `block`, `index`, "
        f"`checkpoints`). All columns: {columns}.\n\n`tasks.parquet` has one row per task "
        "(`classes` and `domain_kwargs` as JSON).\n\nLoading:\n\n```python\nimport modelset\n"
        "ms = modelset.open('PATH')\nms.metadata.head()\nsd = ms.state_dict(ms.metadata.index[0], "
        "checkpoint='final')\nnet = ms.model(ms.metadata.index[0])\n"
        f"modelset.verify('PATH')  # checks {CHECKSUMS_FILE} and every tensor\n```\n\n"
        "With the Hugging Face `datasets` library, `load_dataset('PATH')` loads the model table and "
        "`load_dataset('PATH', 'tasks')` the task table; `python -m modelset export --format hf PATH "
        "OUT` writes the parameters themselves as Parquet.\n"
    )


def _preprocessing_text(tasks: pd.DataFrame) -> str:
    from modelset.datasets import DATASETS

    lines = [
        "Inputs: a model of task T expects what `modelset.tasks.task_data(T, split)` returns: float32 "
        "images `(B, C, H, W)` with pixels scaled to [0, 1], T's input domain applied (task table), "
        "then standardized per channel as `(x - mean) / std` with the data set's constants below "
        "(the same for every domain). It returns logits `(B, k)` over T's classes in sorted-id order.\n"
    ]
    names = sorted({str(d) for d in tasks.get("dataset", pd.Series(dtype=str))})
    rows = []
    for name in names:
        info = DATASETS.get(name) if name in DATASETS else None
        if info is None:
            rows.append([name, "?", "?", "?", "?"])
            continue
        rows.append([name, f"({info.channels}, {info.size}, {info.size})", info.num_classes,
                     ", ".join(map(str, info.mean)), ", ".join(map(str, info.std))])  # fmt: skip
    if rows:
        lines.append("\n" + _table(["data set", "input (C, H, W)", "classes", "mean", "std"], rows, "llrll"))
    return "".join(lines)


def _layout_section(root: Path, table: pd.DataFrame, tasks: pd.DataFrame) -> str:
    index = _layouts(root)
    text = [_preprocessing_text(tasks), ""]
    if not len(index):
        return "\n".join(text) + "\nThis set has no layout files.\n"
    text.append(
        f"Every architecture signature (architecture + `arch_kwargs`) has a layout file "
        f"`{LAYOUTS_DIR}/<architecture>-<h>.csv`, `<h>` being the first 12 hex digits of the "
        "sha256 of the model table's `arch_kwargs` string, with columns `tensor, shape, offset, size, "
        "dtype`: tensor `t` of a model is `vector[offset : offset + size].reshape(shape)` of its "
        "flattened parameter vector (float32, every tensor in `state_dict` order, buffers included; "
        "cast to `dtype` for the stored value). In a shard, tensor `t` of checkpoint `c` of the "
        "model at row `index` of block `block` (model table columns) is "
        "`shards/…h5 : blocks/<block:05d>/checkpoints/<c>/<t>[index]`. "
        f"`{LAYOUTS_DIR}/{LAYOUT_INDEX}` lists the signatures.\n"
    )
    tasks_of = table.groupby(["architecture", "arch_kwargs"])["task"].agg(lambda s: sorted(set(map(str, s))))
    rows = []
    for _, r in index.iterrows():
        key = (r["architecture"], r["arch_kwargs"])
        shown = ", ".join(tasks_of.get(key, [])[:6]) + ("…" if len(tasks_of.get(key, [])) > 6 else "")
        rows.append([f"`{r['file']}`", r["architecture"], f"`{r['arch_kwargs']}`", f"{int(r['length']):,}",
                     int(r["tensors"]), int(r["models"]), shown])  # fmt: skip
    text.append(_table(["layout file", "architecture", "arch_kwargs", "parameters", "tensors", "models", "tasks"],
                       rows, "lllrrrl"))  # fmt: skip
    for _, r in index.iterrows():
        layout = read_layout(root / LAYOUTS_DIR / str(r["file"]))
        body = _table(
            ["tensor", "shape", "offset", "size", "dtype"],
            [[f"`{s.tensor}`", list(s.shape), s.offset, s.size, s.dtype] for s in layout.slots],
            "llrrl",
        )
        text.append(
            f"<details>\n<summary><code>{r['file']}</code>: {r['architecture']} "
            f"<code>{r['arch_kwargs']}</code>, {int(r['length']):,} values</summary>\n\n{body}\n</details>\n"
        )
    return "\n".join(text)


def _loading_section() -> str:
    return (
        "Every file is plain HDF5, Parquet, CSV or JSON (no pickle). This function needs h5py and "
        "NumPy only; it finds a model's block in the shards, its layout file from the block's "
        "attributes, and returns its tensors and flattened vector:\n\n```python\n" + H5PY_LOADER + "```\n"
    )


def _files_section(root: Path) -> str:
    groups: dict[str, list[int]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in UNCHECKED or rel == CARD_FILE or path.name.startswith("."):
            continue
        key = rel.split("/")[0] + "/" if "/" in rel else rel
        groups.setdefault(key, []).append(path.stat().st_size)
    rows = [[f"`{k}`", len(v), human_size(sum(v)), f"{sum(v):,}"] for k, v in sorted(groups.items())]
    total = sum(sum(v) for v in groups.values())
    rows.append(["total (without this card and SHA256SUMS)", sum(len(v) for v in groups.values()),
                 human_size(total), f"{total:,}"])  # fmt: skip
    return (
        _table(["path", "files", "size", "bytes"], rows, "lrrr")
        + "\nA release's `release.json` lists every file with its exact size and sha256.\n"
    )


def _intended_uses() -> str:
    return (
        "- Research on learning from weights: model similarity and retrieval (LPS, Wang et al. 2019), "
        "task-relation estimation, accuracy or hyper-parameter prediction from parameters, lineage "
        "recovery (`parent_id`), and encoders that respect weight-space symmetries.\n"
        "- Studying compressed and adapted variants (STR sparsity, channel-similarity pruning, shape "
        "adaptors, neural similarity learning) beside their parents.\n"
        "- Benchmarking with the shipped folds, so that results are comparable.\n\n"
        "Not intended for: deploying the models (they are tiny and trained on short budgets), or as "
        "evidence about large networks or natural images on its own.\n"
    )


def _limitations(table: pd.DataFrame, tasks: pd.DataFrame, relations: Mapping[str, pd.DataFrame]) -> str:
    lines = []
    datasets = sorted({str(d) for d in table["dataset"]}) if len(table) else []
    lines.append(
        f"- Small models on small images: every model was trained on {', '.join(datasets) or 'its data set'}; "
        "tasks differ by class subset and by synthetic input domain, not by source data, so task "
        "relations are narrower than between real-world data sets."
    )
    if "test_accuracy" in table and len(table):
        acc = pd.to_numeric(table["test_accuracy"], errors="coerce")
        lines.append(
            f"- Short training budgets: test accuracy ranges from {acc.min():.3f} to {acc.max():.3f} "
            f"(median {acc.median():.3f}) in this set."
        )
        if "below_chance" in table:
            n_low = int(table["below_chance"].fillna(False).astype(bool).sum())
            lines.append(
                f"- {n_low} of {len(table)} models are flagged `below_chance` (test accuracy within 2 "
                "points of the majority-class rate); filter them if a method assumes trained models."
            )
    if "test_size" in table and len(table):
        sizes = pd.to_numeric(table["test_size"], errors="coerce")
        lo, hi = int(sizes.min()), int(sizes.max())
        shown = f"{lo}" if lo == hi else f"{lo} to {hi}"
        lines.append(
            f"- Test sets are small ({shown} images per task), so one test image moves a model's "
            f"accuracy by up to {100 / max(1, lo):.2f} points."
        )
    if "transfer_affinity" in relations:
        lines.append(
            "- `transfer_affinity` comes from few, short fine-tuning runs: see its reliability figure "
            "before trusting small differences."
        )
    lines.append(
        "- Bit-identical rebuilds are promised on the CPU with the recorded library versions "
        "(`modelset.json`); other hardware or versions give other parameters of the same quality."
    )
    return "\n".join(lines) + "\n"


def _licence_section(table: pd.DataFrame) -> str:
    datasets = sorted({str(d) for d in table["dataset"]}) if len(table) else []
    text = [
        f"The parameters, tables, relations, layouts and splits of this set are released under "
        f"[{citation.WEIGHTS_LICENSE_NAME}]({citation.WEIGHTS_LICENSE_URL}) (`license: "
        f"{citation.WEIGHTS_LICENSE}` above): use them for anything, with attribution. `{LICENSE_FILE}` "
        "holds the notice.\n",
        "The models were trained on source data that keeps its own licence:\n",
    ]
    for name in datasets:
        known = citation.data_license(name)
        if known:
            licence, holder, url, _ = known
            text.append(f"- {name}: {licence} licence, {holder} ({url}).")
        else:
            text.append(f"- {name}: no licence recorded here; see its source.")
    text.append(f"\nThe ModelSet code is {citation.CODE_LICENSE}-licensed.\n")
    return "\n".join(text)


def _citation_section(header: Mapping[str, Any]) -> str:
    created = str(header.get("created", ""))
    year = int(created[:4]) if created[:4].isdigit() else None
    note = (
        "Cite the release folder name printed by make dist (NAME-v1-HASH), which pins the content"
    )
    return (
        f"`{CITATION_FILE}` (Citation File Format) cites this set and the papers it builds on. In "
        f"BibTeX:\n\n```bibtex\n{citation.bibtex(str(header['name']), year, note)}```\n"
    )


def hf_header(header: Mapping[str, Any], table: pd.DataFrame, configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Hugging Face card metadata of a set (or an export of it) with ``configs``."""
    datasets = sorted({str(d) for d in table["dataset"]}) if len(table) else []
    tags = ["model-zoo", "weight-space-learning", "neural-network-weights", "modelset"]
    tags += [d.replace("_", "-") for d in datasets]
    meta: dict[str, Any] = {
        "license": citation.WEIGHTS_LICENSE,
        "pretty_name": f"ModelSet {header['name']}",
        "task_categories": ["image-classification"],
        "tags": tags,
        "size_categories": [size_category(len(table))],
        **({"configs": configs} if configs else {}),
        "modelset": {
            "name": str(header["name"]),
            "schema_version": SCHEMA_VERSION,
            "models": int(len(table)),
            "tasks": int(table["task"].nunique()) if len(table) else 0,
            "created": str(header.get("created")),
        },
    }
    if "fashion_mnist" in datasets:
        meta["source_datasets"] = ["extended|fashion_mnist"]
    return meta


def front_matter(meta: Mapping[str, Any]) -> str:
    """``---\\n<YAML>---\\n`` written with ``yaml.safe_dump``."""
    return "---\n" + yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def render_card(root: Path, header: Mapping[str, Any], table: pd.DataFrame, sections: Mapping[str, str]) -> str:
    """The Markdown card of the set at ``root`` (its tables, relations, folds and layouts are read
    from there; write layouts first). ``sections`` add or replace sections by title."""
    name = header["name"]
    counts = header.get("counts", {})
    tasks = _tasks(root)
    relations = _relations(root)
    configs = []  # only files that exist: the Hub rejects a config without data files
    if (root / MODELS_FILE).exists():
        configs.append({"config_name": "models", "data_files": MODELS_FILE, "default": True})
    if (root / TASKS_FILE).exists():
        configs.append({"config_name": "tasks", "data_files": TASKS_FILE})
    n_models = counts.get("models", len(table))
    n_tasks = counts.get("tasks", table["task"].nunique() if len(table) else 0)
    defaults = {
        "Summary": (
            f"{n_models} trained models over {n_tasks} tasks, with their parameters in HDF5 shards, "
            f"a table of their metadata, task × task relations, {'task folds, ' if read_folds(root) else ''}"
            "parameter layouts, a licence and a citation file. "
            f"Format schema version {SCHEMA_VERSION}; created {header.get('created')}."
        ),
        "How it was made": (sections.get("How it was made", "").rstrip() + "\n\n").lstrip()
        + "Built from this config:\n\n```yaml\n"
        + yaml.safe_dump(header.get("config", {}), sort_keys=False, default_flow_style=None, width=100)
        + "```\n",
        "Tasks": _tasks_section(tasks, table),
        "Relations": _relations_section(root, header, sections),
        "Splits": _splits_section(root, table),
        "Fields": _fields_section(table),
        "Parameter layout": _layout_section(root, table, tasks),
        "Loading without modelset": _loading_section(),
        "Files and sizes": _files_section(root),
        "Intended uses": _intended_uses(),
        "Limitations": _limitations(table, tasks, relations),
        "Licence": _licence_section(table),
        "Citation": _citation_section(header),
    }
    body: list[str] = [f"# ModelSet `{name}`", ""]
    extra = [s for s in sections if s not in SECTIONS and not s.startswith(RELATION_SECTION_PREFIX)]
    for section in list(SECTIONS) + extra:
        text = defaults[section] if section == "How it was made" else sections.get(section, defaults.get(section, ""))
        body += [f"## {section}", "", text.rstrip(), ""]
        if section == "Summary":
            for column in ("task", "architecture", "variant"):
                if column in table:
                    body += [f"### Models per {column}", "", _counts_table(table, column)]
    return front_matter(hf_header(header, table, configs)) + "\n" + "\n".join(body)
