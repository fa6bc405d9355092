"""Every extensible kind is one :class:`modelset.registry.Registry` behind its public functions:
each lists its names sorted, answers an unknown name with the same typed error and a
did-you-mean, and refuses a second, different entry under a taken name."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from modelset.errors import UnknownNameError


def _kinds() -> list[tuple[str, Callable[[], list[str]], Callable[[str], object], str, str]]:
    """(kind, list names, get by name, a real name, its misspelling)."""
    import benchmarks.methods as methods
    import benchmarks.tracks as tracks
    import builders.executors as executors
    import builders.tasks as tasks
    import builders.variants as variants
    import modelset.architectures as architectures
    import modelset.citation as citation
    import modelset.datasets as datasets
    import modelset.domains as domains
    from benchmarks import _plots

    return [
        ("architecture", architectures.list_architectures, architectures.build_architecture, "cnn3", "cnn33"),
        ("domain", domains.list_domains, domains.get_domain, "rotated", "rotatd"),
        ("task set", tasks.list_task_sets, tasks.get_task_set, "fashion4", "fashion_4"),
        ("variant recipe", variants.list_recipes, variants.get_recipe, "shape_adaptor", "shape_adapter"),
        ("similarity method", methods.list_methods, methods.get_method, "flat_cosine", "flat_cosin"),
        ("benchmark track", tracks.list_tracks, tracks.get_track, "retrieval", "retreival"),
        ("executor", executors.EXECUTORS.names, executors.get_executor, "local", "locale"),
        ("dataset", datasets.list_datasets, datasets.dataset_info, "fashion_mnist", "fashion_mnis"),
        ("data set licence", citation.DATA_LICENSES.names, citation.DATA_LICENSES.get, "fashion_mnist", "fashion-mnist"),
        ("leaderboard figure kind", _plots.FIGURES.names, _plots.FIGURES.get, "roc", "rocc"),
    ]


@pytest.mark.parametrize("index", range(10))
def test_registry_lists_and_suggests(index: int) -> None:
    kind, names, get, real, typo = _kinds()[index]
    listed = names()
    assert real in listed and listed == sorted(listed)
    get(real)  # a known name resolves
    with pytest.raises(UnknownNameError, match=f"unknown {kind} '{typo}'. Did you mean '{real}'"):
        get(typo)


def test_weight_layouts_fall_back_to_the_generic_layout() -> None:
    from modelset import weights

    assert "cnn3" in weights._LAYOUTS and "resnet_tiny" not in weights._LAYOUTS
    with pytest.raises(ValueError, match="weight layout 'cnn3' is registered twice"):
        weights.register_layout("cnn3")(lambda architecture, kwargs, stacked: None)


def test_a_taken_name_is_refused() -> None:
    from modelset.domains import register_domain

    with pytest.raises(ValueError, match="domain 'rotated' is registered twice"):
        register_domain("rotated")(lambda x: x)
