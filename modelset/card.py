"""The dataset card: README.md inside a model set, generated from its header and tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from modelset.format import CHECKSUMS_FILE, SCHEMA_VERSION

#: Sections every card has, in order; builders fill the ones they know more about.
SECTIONS = (
    "Summary",
    "How it was made",
    "Fields",
    "Tasks and relations",
    "Limitations",
    "Licence",
    "Citation",
)


def _counts_table(table: pd.DataFrame, column: str) -> str:
    if not len(table):
        return "(no models)\n"
    lines = [f"| {column} | models | mean test accuracy |", "|---|---:|---:|"]
    has_acc = "test_accuracy" in table
    for key, group in table.groupby(column):
        acc = f"{group['test_accuracy'].astype(float).mean():.3f}" if has_acc else "-"
        lines.append(f"| {key} | {len(group)} | {acc} |")
    return "\n".join(lines) + "\n"


def render_card(root: Path, header: Mapping[str, Any], table: pd.DataFrame, sections: Mapping[str, str]) -> str:
    """Markdown card: a YAML-like front matter with sizes, then the fixed sections."""
    name = header["name"]
    counts = header.get("counts", {})
    front = [
        "---",
        f"name: {name}",
        f"schema_version: {SCHEMA_VERSION}",
        f"models: {counts.get('models', len(table))}",
        f"tasks: {counts.get('tasks', 0)}",
        f"shards: {counts.get('shards', 0)}",
        f"created: {header.get('created')}",
        "---",
        "",
        f"# Model set `{name}`",
        "",
    ]
    defaults = {
        "Summary": (
            f"{counts.get('models', len(table))} trained models over {counts.get('tasks', 0)} tasks, "
            "with their parameters in HDF5 shards and a table of their metadata."
        ),
        "How it was made": "Built from this config:\n\n```json\n"
        + json.dumps(header.get("config", {}), indent=2, sort_keys=True)
        + "\n```\n",
        "Fields": (
            "`models.parquet` has one row per model: `model_id`, `task`, `dataset`, `architecture` "
            "and `arch_kwargs` (rebuild with `ms.model(id)`), `variant`, `parent_id`, `seed`, "
            "hyper-parameters, metrics such as `test_accuracy`, `n_params`, and where its tensors "
            "are (`shard`, `block`, `index`, `checkpoints`).\n\n"
            "Loading:\n\n```python\nimport modelset\nms = modelset.open('PATH')\nms.metadata.head()\n"
            "sd = ms.state_dict(ms.metadata.index[0], checkpoint='final')\nnet = ms.model(ms.metadata.index[0])\n"
            f"modelset.verify('PATH')  # checks {CHECKSUMS_FILE} and every tensor\n```\n"
        ),
        "Tasks and relations": "See `tasks.parquet` and the matrices in `relations/`.",
        "Limitations": "Small models on small images; results may not transfer to large networks.",
        "Licence": "The models inherit the licence of the data they were trained on.",
        "Citation": "Cite the ModelSet project and the papers of the methods you use.",
    }
    body: list[str] = []
    for section in list(SECTIONS) + [s for s in sections if s not in SECTIONS]:
        text = sections.get(section, defaults.get(section, ""))
        body += [f"## {section}", "", text.rstrip(), ""]
        if section == "Summary":
            for column in ("task", "architecture", "variant"):
                if column in table:
                    body += [f"### Models per {column}", "", _counts_table(table, column)]
    return "\n".join(front + body)
