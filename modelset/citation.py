"""How to cite ModelSet and what its artifacts are licensed under.

One source for the repository's ``CITATION.cff`` (a test checks it equals :func:`citation_cff`),
the ``CITATION.cff`` and ``LICENSE`` written into every model set, and the card's licence and
citation sections. CFF files follow the Citation File Format 1.2.0.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import yaml

from modelset.registry import Registry

PROJECT = "ModelSet"
AUTHORS = "ModelSet contributors"
VERSION = "0.1.0"  # keep equal to pyproject.toml
ABSTRACT = (
    "A model-zoo benchmark and dataset builder: trained small vision models and their compressed "
    "or adapted variants in checksummed HDF5 shards with a metadata table, task relations and "
    "task folds; LPS (Learnable Parameter Similarity) and baselines on a leaderboard."
)
KEYWORDS = ["model zoo", "weight-space learning", "parameter similarity", "model compression", "Fashion-MNIST"]

#: Licence of the trained parameters and tables of a model set (the peer zoos' choice).
WEIGHTS_LICENSE = "cc-by-4.0"
WEIGHTS_LICENSE_NAME = "Creative Commons Attribution 4.0 International (CC BY 4.0)"
WEIGHTS_LICENSE_URL = "https://creativecommons.org/licenses/by/4.0/"
CODE_LICENSE = "MIT"


class DataLicense(NamedTuple):
    """The licence a source data set keeps: licence name, holder, URL, BibTeX key of its paper."""

    licence: str
    holder: str
    url: str
    citation: str


#: Source data sets whose licence is known, by data set name (the ``dataset`` column).
DATA_LICENSES: Registry[DataLicense] = Registry("data set licence")
DATA_LICENSES.add("fashion_mnist", DataLicense(
    "MIT",
    "Copyright (c) 2017 Zalando SE, https://tech.zalando.com",
    "https://github.com/zalandoresearch/fashion-mnist",
    "xiao2017fashion",
))


def data_license(name: str) -> DataLicense | None:
    """The recorded licence of the source data set ``name``, or None if none is recorded."""
    return DATA_LICENSES.get(name) if name in DATA_LICENSES else None

#: The papers ModelSet implements or builds on, as CFF references (``key`` is the BibTeX key).
REFERENCES: list[dict[str, Any]] = [
    {
        "key": "wang2019lps",
        "type": "article",
        "title": "Learnable Parameter Similarity",
        "authors": [("Guangcong", "Wang"), ("Jianhuang", "Lai"), ("Wenqi", "Liang"), ("Guangrun", "Wang")],
        "year": 2019,
        "journal": "arXiv preprint",
        "identifiers": [{"type": "other", "value": "arXiv:1907.11943"}],
        "url": "https://arxiv.org/abs/1907.11943",
    },
    {
        "key": "kusupati2020str",
        "type": "conference-paper",
        "title": "Soft Threshold Weight Reparameterization for Learnable Sparsity",
        "authors": [("Aditya", "Kusupati"), ("Vivek", "Ramanujan"), ("Raghav", "Somani"), ("Mitchell", "Wortsman"),
                    ("Prateek", "Jain"), ("Sham", "Kakade"), ("Ali", "Farhadi")],
        "year": 2020,
        "collection-title": "Proceedings of the 37th International Conference on Machine Learning (ICML)",
        "url": "https://arxiv.org/abs/2002.03231",
    },
    {
        "key": "zhang2019channel",
        "type": "article",
        "title": "Exploiting Channel Similarity for Accelerating Deep Convolutional Neural Networks",
        "authors": [("Yunxiang", "Zhang"), ("Chenglong", "Zhao"), ("Bingbing", "Ni"), ("Jian", "Zhang"),
                    ("Haoran", "Deng")],
        "year": 2019,
        "journal": "arXiv preprint",
        "identifiers": [{"type": "other", "value": "arXiv:1908.02620"}],
        "url": "https://arxiv.org/abs/1908.02620",
    },
    {
        "key": "liu2020shape",
        "type": "conference-paper",
        "title": "Shape Adaptor: A Learnable Resizing Module",
        "authors": [("Shikun", "Liu"), ("Zhe", "Lin"), ("Yilin", "Wang"), ("Jianming", "Zhang"),
                    ("Federico", "Perazzi"), ("Edward", "Johns")],
        "year": 2020,
        "collection-title": "European Conference on Computer Vision (ECCV)",
        "url": "https://arxiv.org/abs/2008.00892",
    },
    {
        "key": "liu2019nsl",
        "type": "conference-paper",
        "title": "Neural Similarity Learning",
        "authors": [("Weiyang", "Liu"), ("Zhen", "Liu"), ("James M.", "Rehg"), ("Le", "Song")],
        "year": 2019,
        "collection-title": "Advances in Neural Information Processing Systems (NeurIPS)",
        "url": "https://arxiv.org/abs/1910.13003",
    },
    {
        "key": "ren2020flexible",
        "type": "article",
        "title": "Flexible Few-Shot Learning with Contextual Similarity",
        "authors": [("Mengye", "Ren"), ("Eleni", "Triantafillou"), ("Kuan-Chieh", "Wang"), ("James", "Lucas"),
                    ("Jake", "Snell"), ("Xaq", "Pitkow"), ("Andreas S.", "Tolias"), ("Richard", "Zemel")],
        "year": 2020,
        "journal": "arXiv preprint",
        "identifiers": [{"type": "other", "value": "arXiv:2012.05895"}],
        "url": "https://arxiv.org/abs/2012.05895",
    },
    {
        "key": "xiao2017fashion",
        "type": "article",
        "title": "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms",
        "authors": [("Han", "Xiao"), ("Kashif", "Rasul"), ("Roland", "Vollgraf")],
        "year": 2017,
        "journal": "arXiv preprint",
        "identifiers": [{"type": "other", "value": "arXiv:1708.07747"}],
        "url": "https://arxiv.org/abs/1708.07747",
    },
]


def _cff_reference(ref: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": ref["type"],
        "title": ref["title"],
        "authors": [{"given-names": g, "family-names": f} for g, f in ref["authors"]],
        "year": ref["year"],
    }
    for key in ("journal", "collection-title", "identifiers", "url"):
        if key in ref:
            out[key] = ref[key]
    return out


def citation_cff(set_name: str | None = None, date: str | None = None) -> str:
    """A CITATION.cff (CFF 1.2.0) as YAML text.

    Without ``set_name`` it cites the software (the repository's file); with it, the model set
    ``set_name`` as a data set built with ModelSet (``date``: its creation date, YYYY-MM-DD).
    """
    doc: dict[str, Any] = {
        "cff-version": "1.2.0",
        "message": "If you use ModelSet or a model set built with it, please cite it as below, "
        "and the papers of the methods and data you use (references).",
        "type": "software",
        "title": PROJECT,
        "authors": [{"name": AUTHORS}],
        "abstract": ABSTRACT,
        "keywords": KEYWORDS,
        "license": CODE_LICENSE,
        "version": VERSION,
    }
    if set_name is not None:
        # SPDX identifier of the weights' licence (the card's YAML uses the Hub's "cc-by-4.0").
        doc.update(type="dataset", title=f"{PROJECT} model set {set_name}", license="CC-BY-4.0")
        if date:
            doc["date-released"] = date
    doc["references"] = [_cff_reference(r) for r in REFERENCES]
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def bibtex(set_name: str | None = None, year: int | None = None, note: str = "") -> str:
    """BibTeX entries: the project (or set) first, then every reference."""
    lines = [
        "@misc{modelset" + (f"_{_key(set_name)}" if set_name else "") + ",",
        "  title  = {" + (f"{PROJECT} model set {set_name}" if set_name else PROJECT) + "},",
        "  author = {{" + AUTHORS + "}},",
    ]
    if year:
        lines.append(f"  year   = {{{year}}},")
    if note:
        lines.append("  note   = {" + note + "},")
    lines.append("}")
    for ref in REFERENCES:
        kind = "inproceedings" if ref["type"] == "conference-paper" else "article"
        authors = " and ".join(f"{g} {f}" for g, f in ref["authors"])
        venue = ref.get("collection-title") or ref.get("journal", "")
        field = "booktitle" if kind == "inproceedings" else "journal"
        ident = next((i["value"] for i in ref.get("identifiers", [])), "")
        if ident.startswith("arXiv:"):
            venue = f"{venue} {ident}"
        lines += [
            "",
            f"@{kind}{{{ref['key']},",
            f"  title  = {{{ref['title']}}},",
            f"  author = {{{authors}}},",
            f"  {field} = {{{venue}}},",
            f"  year   = {{{ref['year']}}},",
            f"  url    = {{{ref['url']}}},",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower() or "set"


def set_license_text(datasets: list[str]) -> str:
    """The LICENSE of a model set whose models were trained on ``datasets``."""
    parts = [
        f"The trained parameters, tables, relations, layouts and splits of this model set are licensed under\n"
        f"the {WEIGHTS_LICENSE_NAME}:\n{WEIGHTS_LICENSE_URL}\n"
        f"Attribution: {AUTHORS}, {PROJECT} (see CITATION.cff).\n\n",
        "The models were trained on the following source data, which keeps its own licence:\n",
    ]
    for name in sorted(set(datasets)):
        known = data_license(name)
        if known:
            licence, holder, url, _ = known
            parts.append(f"- {name}: {licence} licence, {holder} ({url}).\n")
        else:
            parts.append(f"- {name}: see the licence of its source; none is recorded here.\n")
    parts.append(
        f"\nThe ModelSet code that built and reads this set is licensed under the {CODE_LICENSE} licence\n"
        f"(Copyright (c) {AUTHORS}).\n"
    )
    return "".join(parts)
