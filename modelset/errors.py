"""The exception hierarchy: every failure a user can cause is a ``ModelSetError``."""

from __future__ import annotations


class ModelSetError(Exception):
    """Base class for every error about a model set, its files or its models."""


class NotAModelSetError(ModelSetError):
    """The path is missing, or is not a model set folder."""


class SchemaError(ModelSetError):
    """A header, table or shard does not follow the schema."""


class ChecksumError(ModelSetError):
    """A file's SHA256 (or size) differs from the recorded one."""


class CorruptShardError(ModelSetError):
    """An HDF5 shard cannot be read, or its content is damaged."""


class UnsafeFileError(CorruptShardError):
    """A file of the set could make the reader touch something outside the set or allocate more
    than the file holds: a link, external storage, a virtual dataset, a non-regular file, a dtype
    or layout the format does not allow, or a declared size that the bytes on disk do not back.
    Refused before any of its data is read."""


class DiskFullError(ModelSetError):
    """Not enough free disk space for a write; the message says how much is needed and where."""


class MissingModelError(ModelSetError, KeyError):
    """A model id is not in the set, or its rows point at missing data."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class InvalidParametersError(ModelSetError):
    """Parameters are not finite, or do not fit the declared architecture."""


class DataUnavailableError(ModelSetError):
    """A source data set is not on this machine and cannot be downloaded."""


class ExistsError(ModelSetError):
    """A model set already exists where a new one would be written."""


class LockedError(ModelSetError):
    """Another process holds the model set's write lock."""


class UnknownNameError(ModelSetError, KeyError):
    """A registry lookup failed; the message suggests the closest names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, known: list[str]) -> UnknownNameError:
    """An error for an unknown registry ``name`` with a "did you mean" hint."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(
        f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known)) or '(none)'}."
    )
