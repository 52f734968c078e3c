import pytest

from pipeline.config import Config, load_config
from pipeline.errors import UserError


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["run.seed=7", "data.few_shot_k=2", "run.name=2024"])
    assert isinstance(cfg, Config)
    assert cfg.run.seed == 7 and cfg.data.few_shot_k == 2 and cfg.run.name == "2024"


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("run: {seed: 3}\ndata: {mixture: small}\n")
    cfg = load_config(path, ["run.seed=4"])
    assert (cfg.run.seed, cfg.data.mixture) == (4, "small")


def test_unknown_key_lists_valid_ones():
    with pytest.raises(UserError, match=r"unknown key 'run.sed'.*valid keys: run.name, run.dir, run.seed"):
        load_config(None, ["run.sed=1"])


def test_unknown_section_names_it():
    with pytest.raises(UserError, match=r"unknown key 'trian'.*valid keys: run, data, model, peft, train, eval, log"):
        load_config(None, ["trian.max_steps=1"])


def test_wrong_type_names_key_and_type():
    with pytest.raises(UserError, match=r"run.seed='abc' must be of type int"):
        load_config(None, ["run.seed=abc"])
    with pytest.raises(UserError, match=r"run.seed=True must be of type int"):
        load_config(None, ["run.seed=true"])


def test_bad_value_checked_in_post_init():
    with pytest.raises(UserError, match="data.few_shot_k"):
        load_config(None, ["data.few_shot_k=-1"])


def test_malformed_override_and_bad_file(tmp_path):
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(None, ["seed"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [1, 2")
    with pytest.raises(UserError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_literal_and_list_fields():
    cfg = load_config(None, ["train.optimizer=adafactor", "log.trackers=[jsonl]", "train.lr=3e-4"])
    assert cfg.train.optimizer == "adafactor" and cfg.log.trackers == ["jsonl"] and cfg.train.lr == 3e-4
    with pytest.raises(UserError, match=r"train.optimizer='sgd' is not one of: adafactor, adamw"):
        load_config(None, ["train.optimizer=sgd"])
    with pytest.raises(UserError, match=r"log.trackers: unknown tracker 'mlflow'"):
        load_config(None, ["log.trackers=[mlflow]"])
