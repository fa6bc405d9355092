"""ModelSet: a dataset format for trained models — HDF5 shards, a metadata table, relations.

>>> import modelset
>>> ms = modelset.open("data/modelset500")
>>> ms.metadata.head()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelset.errors import ModelSetError

if TYPE_CHECKING:
    from modelset.reader import ModelSet, open
    from modelset.release import fetch
    from modelset.verify import verify

# The reader pulls in torch and pandas: imported on first use, so that light modules of the
# package (errors, the command-line helpers) start fast.
_LAZY = {"ModelSet": "modelset.reader", "open": "modelset.reader", "fetch": "modelset.release",
         "verify": "modelset.verify"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modelset' has no attribute {name!r}")

__all__ = ["ModelSet", "ModelSetError", "fetch", "open", "verify"]
__version__ = "0.1.0"
