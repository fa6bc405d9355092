"""The dataset card's text on the variant families: per recipe of a config, its entry's parents
and params and the remaining deviations from the authors' setting (from the recipe's module)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from builders.variants._registry import get_recipe


def deviations(recipe: str) -> str:
    """The ``**Deviations ...**`` paragraph of the recipe's module docstring ("" if none)."""
    doc = sys.modules[get_recipe(recipe).__module__].__doc__ or ""
    match = re.search(r"\*\*Deviations.*?(?=\n\n|\Z)", doc, flags=re.S)
    return " ".join(match.group(0).split()) if match else ""


def card_text(entries: Sequence[Mapping[str, Any]]) -> str:
    """Markdown for the card: one bullet per ``variants:`` entry, with its deviations."""
    lines = ["Each method beside its paper's baseline twin (same optimiser, schedule, data and steps); "
             "`python -m builders.variants tables` gives the paired comparisons.", ""]
    for entry in entries:
        recipe = str(entry["recipe"])
        params = ", ".join(f"{k}={v}" for k, v in (entry.get("params") or {}).items()) or "defaults"
        text = f"- `{recipe}` on parents {dict(entry.get('parents') or {})}, params {params}."
        dev = deviations(recipe)
        lines.append(f"{text} {dev}".replace("``", "`") if dev else text)
    return "\n".join(lines)
