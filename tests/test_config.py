"""The typed build config: every shipped config loads, and a bad one fails before any training
with an error naming the file, the key path and what to write instead."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from builders.config import BuildConfig, ConfigError, check_recipe_params, load_config
from modelset.errors import SchemaError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _mini() -> dict:
    return yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_records_its_yaml_as_written(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, BuildConfig) and cfg.task_list()
    raw = yaml.safe_load(path.read_text())
    # the header records the keys the YAML gave, with their values as written (no defaults)
    assert json.dumps(cfg.to_dict(), sort_keys=True) == json.dumps(raw, sort_keys=True)
    assert load_config(cfg.to_dict()) == cfg  # a recorded header rebuilds the same config


def test_defaults_live_in_the_config() -> None:
    cfg = load_config({"name": "d", "tasks": "fashion4", "families": [{"architecture": "cnn3", "models_per_task": 1}]})
    assert (cfg.seed, cfg.threads, cfg.device, cfg.shard_size) == (0, 1, "cpu", 50)
    assert cfg.data.train_limit is None and cfg.transfer.enabled is False and cfg.variants == []
    assert (cfg.folds.k, cfg.folds.holdout_model_fraction) == (5, 0.2)
    (name, family), = cfg.recipe_families().items()
    assert name == "zoo" and family.optimizer == ["sgd", "adam"] and family.lr["adam"] == [0.002, 0.02]
    assert cfg.to_dict() == {"name": "d", "tasks": "fashion4", "families": [{"architecture": "cnn3", "models_per_task": 1}]}


def test_config_is_frozen() -> None:
    cfg = load_config(REPO / "configs" / "mini.yaml")
    with pytest.raises(ValueError, match="frozen"):
        cfg.seed = 3
    with pytest.raises(ValueError, match="frozen"):
        cfg.data.train_limit = 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(shard_sise=3), r"x\.yaml: shard_sise: unknown key; did you mean 'shard_size'\?$"),
        (lambda c: c["data"].update(train_limt=3), r"x\.yaml: data\.train_limt: unknown key; did you mean 'train_limit'\?$"),
        (lambda c: c["families"][1].update(arch_kwags={}),
         r"x\.yaml: families\[1\]\.arch_kwags: unknown key; did you mean 'arch_kwargs'\?$"),
        (lambda c: c["variants"][2].update(parent={"per_task": 1}),
         r"x\.yaml: variants\[2\]\.parent: unknown key; did you mean 'parents'\?$"),
        (lambda c: c["variants"][0]["parents"].update(per_tasks=1),
         r"x\.yaml: variants\[0\]\.parents\.per_tasks: unknown key; did you mean 'per_task'\?$"),
        (lambda c: c["transfer"].update(sources=2), r"x\.yaml: transfer\.sources: unknown key; did you mean 'sources_per_task'\?$"),
        (lambda c: c["folds"].update(seeds=1), r"x\.yaml: folds\.seeds: unknown key; did you mean 'seed'\?$"),
        (lambda c: c["hyperparameters"].update(epoch=[1, 2]),
         r"x\.yaml: hyperparameters\.epoch: unknown key; did you mean 'epochs'\?$"),
        (lambda c: c["hyperparameters"]["recipes"]["outside"].update(schedules=["step"]),
         r"x\.yaml: hyperparameters\.recipes\.outside\.schedules: unknown key; did you mean 'schedule'\?$"),
    ],
)
def test_unknown_keys_at_every_depth_name_the_file_path_and_closest_key(tmp_path: Path, mutate, message: str) -> None:
    cfg = _mini()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(_write(tmp_path, cfg))
    assert isinstance(info.value, SchemaError)
    assert str(info.value).startswith(str(tmp_path / "x.yaml"))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["families"][0].update(models_per_task="3"),
         r"families\[0\]\.models_per_task: Input should be a valid integer, found '3'"),
        (lambda c: c["data"].update(train_limit=800.0), r"data\.train_limit: Input should be a valid integer"),
        (lambda c: c.update(threads=0), r"threads: Input should be greater than or equal to 1"),
        (lambda c: c["transfer"].update(enabled="yes"), r"transfer\.enabled: Input should be a valid boolean"),
        (lambda c: c["hyperparameters"].update(weight_decay=["1e-5", 1e-3]),
         r"hyperparameters\.weight_decay\[0\]: expected a number, found '1e-5'"),
        (lambda c: c["hyperparameters"].update(epochs=[4, 3]), r"hyperparameters\.epochs: expected \[lo, hi\] with lo <= hi"),
        (lambda c: c["variants"][0].update(seed="0"), r"variants\[0\]\.seed: Input should be a valid integer"),
    ],
)
def test_types_are_checked(tmp_path: Path, mutate, message: str) -> None:
    cfg = _mini()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, cfg))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(tasks="fashion5"), r"tasks: unknown task set 'fashion5'; did you mean 'fashion50'\?"),
        (lambda c: c["families"][0].update(architecture="cnn4"),
         r"families\[0\]\.architecture: unknown architecture 'cnn4'; did you mean 'cnn3'\?"),
        (lambda c: c["families"][0].update(arch_kwargs={"strdes": [2, 2, 2]}),
         r"families\[0\]\.arch_kwargs: \{'strdes': \[2, 2, 2\]\} do not build cnn3.*'strdes'"),
        (lambda c: c["hyperparameters"].update(optimizer=["sgd", "adamm"]),
         r"hyperparameters\.optimizer: \['adamm'\] not in \['sgd', 'adam', 'adamw'\]"),
        (lambda c: c["transfer"].update(optimizer="rmsprop"), r"transfer\.optimizer: \['rmsprop'\] not in"),
        (lambda c: c["variants"][0].update(recipe="sttr"), r"variants\[0\]\.recipe: unknown variant recipe 'sttr'; did you mean 'str'\?"),
        (lambda c: c["variants"][0]["parents"].update(architecture="resnet_tiny_x"),
         r"variants\[0\]\.parents\.architecture: no family of architecture 'resnet_tiny_x'"),
        (lambda c: c["folds"].update(heldout_recipe_families=["outsde"]),
         r"folds\.heldout_recipe_families: \['outsde'\] are not recipe families of the config"),
        (lambda c: c["transfer"].update(sources_per_task=4),
         r"transfer\.sources_per_task: transfer fine-tunes 4 cnn3 base model\(s\) per task; the families have 3"),
    ],
)
def test_names_are_checked_up_front(tmp_path: Path, mutate, message: str) -> None:
    cfg = _mini()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, cfg))


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    cfg = _mini()
    cfg["data"]["train_limt"] = 3
    cfg["variants"][1]["parent"] = {}
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, cfg))
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and all(line.startswith(str(tmp_path / "x.yaml")) for line in lines)
    assert "data.train_limt" in lines[0] and "variants[1].parent" in lines[1]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"st_decay": [2.0]}, r"variants\[0\]\.params\.st_decay: unknown param of recipe 'str'; did you mean 'st_decays'\?"),
        ({"n_trian": 256}, r"variants\[0\]\.params\.n_trian: unknown param of recipe 'str'; did you mean 'n_train'\?"),
        ({"lr": -0.1}, r"variants\[0\]\.params: variant training regime .*needs lr > 0"),
    ],
)
def test_bad_recipe_params_fail_before_training(tmp_path: Path, params: dict, message: str) -> None:
    """A typo in a recipe's params used to surface as a TypeError inside the recipe, after the
    base models and transfer were trained; now the build stops before writing anything."""
    from builders.build import build

    cfg = _mini()
    cfg["variants"][0]["params"] = params
    out = tmp_path / "set"
    with pytest.raises(ConfigError, match=message):
        build(_write(tmp_path, cfg), out, progress=False)
    assert not out.exists()  # no header, no shard
    assert not (tmp_path / ".set.staging").exists()


def test_recipe_params_follow_each_recipes_signature() -> None:
    from builders.variants import list_recipes

    for recipe in list_recipes():  # every recipe takes the shared regime's fields
        check_recipe_params(recipe, {"epochs": 1, "n_train": 64})
    check_recipe_params("str", {"baseline": False})
    with pytest.raises(ValueError, match="unknown param of recipe 'gmp'"):  # gmp has no twin to leave out
        check_recipe_params("gmp", {"baseline": False})
    check_recipe_params("channel_sim", {"keep_ratios": [0.5], "n_stats": 128})
    with pytest.raises(ValueError, match="did you mean 'keep_ratios'"):
        check_recipe_params("channel_sim", {"keep_ratio": [0.5]})


def test_a_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml does not exist"):
        load_config(tmp_path / "nowhere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: expected a mapping at the top level"):
        load_config(bad)
    cfg = copy.deepcopy(_mini())
    del cfg["families"]
    with pytest.raises(ConfigError, match=r"x\.yaml: families: Field required"):
        load_config(_write(tmp_path, cfg))


def test_inline_tasks_are_typed(tmp_path: Path) -> None:
    cfg = _mini()
    cfg["tasks"] = [{"task_id": "a", "classes": [0, 1]}, {"task_id": "b", "classes": [2, 3], "domain": "inverted"}]
    tasks = load_config(cfg).task_list()
    assert [(t.task_id, t.dataset, t.classes, t.domain) for t in tasks] == [
        ("a", "fashion_mnist", (0, 1), "identity"), ("b", "fashion_mnist", (2, 3), "inverted")]
    cfg["tasks"][1]["clases"] = [2, 3]
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.clases: unknown key; did you mean 'classes'\?"):
        load_config(_write(tmp_path, cfg))


def test_the_built_sets_header_records_the_yaml_as_written(mini_set) -> None:
    raw = yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())
    assert mini_set.header["config"] == raw == load_config(raw).to_dict()


def test_checkpoints_section_keeps_epochs_each_model_reaches() -> None:
    from builders.config import CheckpointsConfig

    assert CheckpointsConfig(epochs=[5, 1, 3]).epochs_for(4) == (1, 3)
    assert CheckpointsConfig(every_epoch=True).epochs_for(4) == (1, 2, 3)
    assert CheckpointsConfig().epochs_for(9) == ()
    with pytest.raises(Exception, match="not both"):
        CheckpointsConfig(every_epoch=True, epochs=[1])
