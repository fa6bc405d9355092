"""The similarity-method interface and its registry.

A method is a filled-in form (:class:`MethodMeta`) plus a class implementing one step:
``_embed(ms, ids) -> (n, d)`` embeddings compared by cosine, or ``_similarity(ms, ids_a, ids_b)``
directly, and optionally ``_fit(ms, train_ids, seed)`` on training-task models. A method that can
read checkpoints other than ``"final"`` (a training trajectory's ``init``, ``epoch_{e}``) takes a
``checkpoint`` keyword in its hook: ``_embed(ms, ids, checkpoint="final")``. The public
:meth:`SimilarityMethod.fit`, :meth:`~SimilarityMethod.embed` and
:meth:`~SimilarityMethod.similarity` are template methods: they validate ids and outputs, cache
embeddings and time the work, so a new method is one small file::

    @register_method
    class MyMethod(SimilarityMethod):
        meta = MethodMeta(name="my_method", learned=False, needs_data=False,
                          invariances=("permutation",), reference="Me et al. 2026")

        def _embed(self, ms, ids):
            return torch.stack([...])   # (len(ids), d)
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from modelset.errors import MissingModelError, ModelSetError
from modelset.reader import ModelSet
from modelset.registry import Registry
from modelset.runtime import Runtime

INVARIANCES = ("permutation", "scale", "sparsity", "architecture", "function")
#: How a method reaches a model: its parameters only, forward passes on inputs of its own (no task
#: data), or forward passes on task data.
ACCESS = ("weights", "forward", "data")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class MethodError(ModelSetError):
    """A similarity method was declared or used wrongly, or returned a malformed result."""


class MethodNotApplicable(MethodError):
    """A method cannot read these models (e.g. an architecture it has no layout for); the runner
    records the method's results on the set as not applicable, with the message as the reason."""


@dataclass(frozen=True)
class MethodMeta:
    """What a leaderboard reader needs to know about a method (validated on creation).

    ``learned``: fits parameters on training-task models (then scored over several seeds).
    ``needs_data``: runs the models on input data (probe batches), not on parameters alone.
    ``access``: one of :data:`ACCESS`; by default ``"data"`` when ``needs_data`` else
    ``"weights"``. ``"forward"``: weights through forward passes on inputs the method makes itself.
    ``invariances``: symmetries the method claims, each one of :data:`INVARIANCES`.
    ``privileged``: uses information a real user would not have (the label oracle).
    ``control``: a sanity check rather than a contender (random, oracle): listed last on the
    leaderboard and never marked best.
    ``proposed``: a method the board is about (LPS and its variants): the leaderboard sets the
    first proposed method against the best weight-only baseline of each track.
    """

    name: str
    learned: bool
    needs_data: bool
    invariances: tuple[str, ...]
    reference: str
    description: str = ""
    privileged: bool = False
    control: bool = False
    proposed: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    access: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise MethodError(f"method name {self.name!r}: expected lower_snake_case ([a-z][a-z0-9_]*)")
        for flag in ("learned", "needs_data", "privileged", "control", "proposed"):
            if not isinstance(getattr(self, flag), bool):
                raise MethodError(f"method {self.name!r}: {flag} must be a bool, found {getattr(self, flag)!r}")
        if self.access == "":
            object.__setattr__(self, "access", "data" if self.needs_data else "weights")
        if self.access not in ACCESS:
            raise MethodError(f"method {self.name!r}: access must be one of {ACCESS}, found {self.access!r}")
        if self.needs_data != (self.access == "data"):
            raise MethodError(
                f"method {self.name!r}: needs_data={self.needs_data} contradicts access={self.access!r} "
                "(task data is access 'data')"
            )
        object.__setattr__(self, "invariances", tuple(self.invariances))
        bad = [i for i in self.invariances if i not in INVARIANCES]
        if bad:
            raise MethodError(f"method {self.name!r}: unknown invariances {bad}; expected some of {INVARIANCES}")
        if not isinstance(self.reference, str) or not self.reference.strip():
            raise MethodError(f"method {self.name!r}: reference must name a paper or source, found {self.reference!r}")
        if not isinstance(self.config, dict):
            raise MethodError(f"method {self.name!r}: config must be a dict, found {type(self.config).__name__}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["invariances"] = list(self.invariances)
        return d


class SimilarityMethod:
    """Base class: subclasses set ``meta`` and implement ``_embed`` or ``_similarity``.

    ``config`` entries (defaults in ``meta.config``) may be overridden as keyword arguments;
    unknown keys raise :class:`MethodError`. ``self.config`` is part of the result files' hash.
    """

    meta: ClassVar[MethodMeta]

    def __init__(self, **config: Any) -> None:
        unknown = sorted(set(config) - set(self.meta.config))
        if unknown:
            raise MethodError(
                f"method {self.meta.name!r}: unknown config keys {unknown}; known: {sorted(self.meta.config)}"
            )
        self.config: dict[str, Any] = {**self.meta.config, **config}
        self.seed: int = 0
        # Where a learned method may keep fitted checkpoints (set by the runner; not part of the
        # config, since a cached fit gives the same result as a new one).
        self.cache_dir: Path | None = None
        self.fitted = False
        self._cache: dict[tuple[str, str, str], torch.Tensor] = {}
        self._fitted_key: object = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.meta.name!r}, config={self.config})"

    @classmethod
    def has_embedding(cls) -> bool:
        """True when the method produces embeddings (it overrides ``_embed``)."""
        return cls._embed is not SimilarityMethod._embed

    @classmethod
    def supports_checkpoints(cls) -> bool:
        """True when the method reads checkpoints other than ``"final"``: its hook (``_embed``, or
        ``_similarity`` for similarity-only methods) takes a ``checkpoint`` argument."""
        hook = cls._embed if cls.has_embedding() else cls._similarity
        return "checkpoint" in inspect.signature(hook).parameters

    #: Torch threads for the method's own fit and embedding (``None``: the process's). Small
    #: encoders of many tiny ops run faster on one thread than split across two busy cores.
    kernel_threads: ClassVar[int | None] = None

    def _threads(self) -> contextlib.AbstractContextManager:
        return Runtime.worker_threads(self.kernel_threads) if self.kernel_threads else contextlib.nullcontext()

    # -- template methods ----------------------------------------------------------------
    def fit(self, ms: ModelSet, train_ids: Sequence[str], seed: int = 0) -> SimilarityMethod:
        """Fit on the models ``train_ids`` (training tasks only) with ``seed``; returns self.

        Called for every method before scoring (unlearned methods may use it for normalisation
        statistics of the training models, or ignore it).
        """
        ids = self._check_ids(ms, train_ids, "train_ids")
        key = self._fit_key(ms, ids, int(seed))
        if self.fitted and key == self._fitted_key:
            return self  # same inputs: keep the fit and the cached embeddings
        self.seed = int(seed)
        self._cache.clear()
        torch.manual_seed(self.seed)
        with self._threads():
            self._fit(ms, ids, self.seed)
        self.fitted, self._fitted_key = True, key
        return self

    def embed(self, ms: ModelSet, ids: Sequence[str], checkpoint: str = "final") -> torch.Tensor:
        """Embeddings ``(len(ids), d)`` float32 of the models' ``checkpoint``, computed once per
        model id and checkpoint after each fit."""
        if not self.has_embedding():
            raise MethodError(f"method {self.meta.name!r} gives similarities only, no embeddings")
        ids = self._check_ids(ms, ids, "ids")
        self._require_fit()
        self._check_checkpoint(ms, ids, checkpoint)
        root = str(ms.root)  # ids are unique within a set only: the cache key includes the set
        todo = list(dict.fromkeys(i for i in ids if (root, checkpoint, i) not in self._cache))
        if todo:
            with self._threads():
                out = self._embed(ms, todo) if checkpoint == "final" else self._embed(ms, todo, checkpoint=checkpoint)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(todo):
                found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise MethodError(f"method {self.meta.name!r}: _embed must return ({len(todo)}, d), found {found}")
            out = out.detach().to(torch.float32).cpu()
            if not bool(torch.isfinite(out).all()):
                raise MethodError(f"method {self.meta.name!r}: embeddings contain NaN or Inf")
            self._cache.update(zip([(root, checkpoint, i) for i in todo], out))
        return torch.stack([self._cache[(root, checkpoint, i)] for i in ids])

    def similarity(
        self, ms: ModelSet, ids_a: Sequence[str], ids_b: Sequence[str], checkpoint: str = "final",
        checkpoint_b: str | None = None,
    ) -> torch.Tensor:
        """Similarities ``(len(ids_a), len(ids_b))``, higher means more alike, between the
        ``checkpoint`` of ``ids_a`` and the ``checkpoint_b`` (default: the same) of ``ids_b``."""
        a = self._check_ids(ms, ids_a, "ids_a")
        b = self._check_ids(ms, ids_b, "ids_b")
        self._require_fit()
        checkpoint_b = checkpoint if checkpoint_b is None else checkpoint_b
        self._check_checkpoint(ms, a, checkpoint)
        self._check_checkpoint(ms, b, checkpoint_b)
        if checkpoint == checkpoint_b == "final":
            out = self._similarity(ms, a, b)
        else:
            out = self._similarity(ms, a, b, checkpoint=checkpoint, checkpoint_b=checkpoint_b)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(a), len(b)):
            found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MethodError(f"method {self.meta.name!r}: similarity must be ({len(a)}, {len(b)}), found {found}")
        out = out.detach().to(torch.float32).cpu()
        if not bool(torch.isfinite(out).all()):
            raise MethodError(f"method {self.meta.name!r}: similarities contain NaN or Inf")
        return out

    # -- the steps a subclass implements ----------------------------------------------------
    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        """Learn from the training models (default: nothing to learn)."""

    def _embed(self, ms: ModelSet, ids: list[str]) -> torch.Tensor:
        raise NotImplementedError  # subclasses may add ``checkpoint: str = "final"``

    def _fit_key(self, ms: ModelSet, train_ids: list[str], seed: int) -> object:
        """What the fit depends on; a second ``fit`` with an equal key is skipped. Methods whose
        fit ignores the training ids and seed (fixed probes) return less, so their embeddings are
        computed once for all seeds."""
        return (str(ms.root), tuple(train_ids), seed)

    def _similarity(
        self, ms: ModelSet, ids_a: list[str], ids_b: list[str], checkpoint: str = "final",
        checkpoint_b: str | None = None,
    ) -> torch.Tensor:
        """Default: cosine similarity of the embeddings."""
        if not self.has_embedding():
            raise MethodError(f"method {self.meta.name!r} implements neither _embed nor _similarity")
        ea = torch.nn.functional.normalize(self.embed(ms, ids_a, checkpoint), dim=1)
        eb = torch.nn.functional.normalize(self.embed(ms, ids_b, checkpoint_b or checkpoint), dim=1)
        return ea @ eb.T

    # -- helpers -----------------------------------------------------------------------
    def _require_fit(self) -> None:
        if not self.fitted:
            raise MethodError(f"method {self.meta.name!r}: call fit(ms, train_ids, seed) before scoring")

    def _check_checkpoint(self, ms: ModelSet, ids: list[str], checkpoint: str) -> None:
        if checkpoint == "final":  # every model has it (the reader names one that does not)
            return
        if not self.supports_checkpoints():
            raise MethodError(
                f"method {self.meta.name!r} reads the final checkpoint only, not {checkpoint!r} "
                "(a method reads others when its _embed or _similarity takes a 'checkpoint' argument)"
            )
        lists = ms.metadata.loc[ids, "checkpoints"].astype(str).str.split(",")
        lacking = [i for i, names in zip(ids, lists) if checkpoint not in names]
        if lacking:
            raise MissingModelError(f"models {lacking[:5]} of {ms.root} have no checkpoint {checkpoint!r}")

    def _check_ids(self, ms: ModelSet, ids: Sequence[str], what: str) -> list[str]:
        if isinstance(ids, str):
            raise MethodError(f"method {self.meta.name!r}: {what} must be a sequence of model ids, not a string")
        out = [str(i) for i in ids]
        if not out:
            raise MethodError(f"method {self.meta.name!r}: {what} is empty")
        missing = [i for i in out if i not in ms.metadata.index]
        if missing:
            ms.row(missing[0])  # raises MissingModelError with a did-you-mean hint
            raise MissingModelError(f"models {missing[:5]} are not in {ms.root}")
        return out


_METHODS: Registry[type[SimilarityMethod]] = Registry("similarity method")
M = TypeVar("M", bound=type[SimilarityMethod])


def register_method(cls: M) -> M:
    """Class decorator: register a :class:`SimilarityMethod` subclass under ``cls.meta.name``."""
    meta = getattr(cls, "meta", None)
    if not isinstance(meta, MethodMeta):
        raise MethodError(f"{cls.__name__}: a registered method needs a MethodMeta as class attribute 'meta'")
    if not (cls.has_embedding() or cls._similarity is not SimilarityMethod._similarity):
        raise MethodError(f"method {meta.name!r}: implement _embed or _similarity")
    try:
        return _METHODS.add_class(meta.name, cls)
    except ValueError as exc:
        raise MethodError(str(exc)) from None


def unregister_method(name: str) -> None:
    """Remove ``name`` from the registry (tests that define their own methods clean up with it)."""
    _METHODS.remove(name)


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return _METHODS.names()


def get_method(name: str) -> type[SimilarityMethod]:
    """The class registered as ``name``; ``UnknownNameError`` with close names otherwise."""
    return _METHODS.get(name)


def create_method(name: str, **config: Any) -> SimilarityMethod:
    """An instance of the method ``name`` with ``config`` overrides."""
    return get_method(name)(**config)


