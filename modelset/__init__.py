"""ModelSet: a dataset format for trained models — HDF5 shards, a metadata table, relations.

>>> import modelset
>>> ms = modelset.open("data/modelset500")
>>> ms.metadata.head()
"""

from __future__ import annotations

from modelset.errors import ModelSetError
from modelset.reader import ModelSet, open
from modelset.release import fetch
from modelset.verify import verify

__all__ = ["ModelSet", "ModelSetError", "fetch", "open", "verify"]
__version__ = "0.1.0"
