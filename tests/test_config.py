import pytest

import fracture as fr
from fracture import config
from fracture.errors import ConfigError


def test_defaults_follow_the_recipe():
    cfg = fr.Config()
    assert (cfg.backbone, cfg.batch_size, cfg.epochs, cfg.trainable_layers) == ("DenseNet121", 16, 40, 60)
    assert (cfg.study_type, cfg.image_size, cfg.gamma, cfg.learning_rate) == ("XR_HUMERUS", 224, 0.99, 1e-4)
    assert len(cfg.dense_units) == 3


def test_overrides_are_typed():
    cfg = config.load(overrides=["epochs=3", "learning_rate=3e-4", "flip=false", "dense_units=[8,4,2]",
                                 "backbone=ResNet50"])
    assert (cfg.epochs, cfg.learning_rate, cfg.flip, cfg.dense_units, cfg.backbone) == (3, 3e-4, False, [8, 4, 2],
                                                                                        "ResNet50")
    assert config.load(overrides={"dense_units": "32,16,8"}).dense_units == [32, 16, 8]


@pytest.mark.parametrize("item, message", [
    ("epoch=3", "unknown config key 'epoch'. Did you mean 'epochs'"),
    ("epochs=three", "bad value for 'epochs'"),
    ("epochs=2.5", "bad value for 'epochs'"),
    ("flip=maybe", "bad value for 'flip'"),
    ("learning_rate=fast", "bad value for 'learning_rate'"),
    ("dense_units=1,2", "three layer sizes"),
    ("gamma=0", "gamma must be in (0, 1]"),
    ("data_format=zip", "unknown data_format 'zip'. Choose one of: mura, folders"),
    ("noequals", "not of the form key=value"),
])
def test_bad_overrides_name_the_problem(item, message):
    with pytest.raises(ConfigError) as err:
        config.load(overrides=[item])
    assert message in str(err.value)


def test_yaml_round_trip_and_unknown_yaml_key(tmp_path):
    cfg = config.load(overrides={"epochs": 7, "study_type": "all"})
    cfg.to_yaml(tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("epochs: 2\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'"):
        config.load(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "missing.yaml")


def test_docs_config_table_is_the_dataclass():
    """The table in docs/config.md is generated (tools/config_table.py); a key, default or comment
    edited on one side only fails here. Its rows are checked against the dataclass independently of
    the generator."""
    import dataclasses
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    assert config.markdown_table() in page, "docs/config.md's config table is stale: run tools/config_table.py"
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    keys = [row.split("`")[1] for row in rows if row.split("`")[1] in config.field_names()]
    assert keys == [f.name for f in dataclasses.fields(config.Config)]


def test_config_is_frozen_and_update_returns_a_new_one():
    import dataclasses

    cfg = config.load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run_name = "changed"
    assert config.update(cfg, {"epochs": 3}).epochs == 3 and cfg.epochs == 40


def test_an_old_runs_unknown_key_is_a_warning_a_users_is_an_error(tmp_path, caplog):
    stored = tmp_path / "config.yaml"
    stored.write_text("epochs: 3\nmixup: 0.2\nbackbone: VGG16\n")  # a key from another version
    with caplog.at_level("WARNING", logger="fracture.config"):
        cfg = config.load(stored, stored=True)
    assert (cfg.epochs, cfg.backbone) == (3, "VGG16")
    assert "mixup" in caplog.text and str(stored) in caplog.text
    with pytest.raises(ConfigError, match="unknown config key 'mixup'"):
        config.load(stored)
    stored.write_text("epochs: [3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(stored)


@pytest.mark.parametrize("weights", ["none", "None", "random", "scratch"])
def test_a_random_backbone_that_stays_frozen_is_refused(weights, tmp_path):
    with pytest.raises(ConfigError, match=r"trainable_layers=60 would keep part of a random backbone frozen; "
                                          r"set trainable_layers=-1"):
        config.load(overrides={"weights": weights})
    with pytest.raises(ConfigError, match="trainable_layers=0 "):
        config.load(overrides={"weights": weights, "trainable_layers": 0})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"weights: {weights}\n")
    with pytest.raises(ConfigError, match="set trainable_layers=-1"):
        config.load(yaml_file)
    assert config.load(overrides={"weights": weights, "trainable_layers": -1}).trainable_layers == -1
    assert config.load(overrides={"trainable_layers": 5}).trainable_layers == 5  # ImageNet weights: fine


def test_a_stored_run_with_a_frozen_random_backbone_still_loads(tmp_path):
    """Runs made before the rule keep loading (evaluate, predict, cam, serve); only new configs are refused."""
    stored = tmp_path / "config.yaml"
    stored.write_text("weights: none\ntrainable_layers: 60\n")
    assert config.load(stored, stored=True).trainable_layers == 60
    assert config.update(config.load(stored, stored=True), {"batch_size": 4}).batch_size == 4  # evaluate overrides
