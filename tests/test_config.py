from pathlib import Path

import pytest
import yaml

from ecalf.config import (
    DataConfig,
    RunConfig,
    TrainingConfig,
    apply_overrides,
    to_dict,
)
from ecalf.config_files import load_run_config, run_config_from_dict
from ecalf.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _minimal(**extra):
    data = {"model": {"name": "dlinear"}, "training": {"epochs": 2}}
    data.update(extra)
    return data


def test_unknown_key_names_dotted_path():
    with pytest.raises(ConfigError, match=r"unknown key 'training\.epohcs'"):
        run_config_from_dict({"model": {"name": "dlinear"}, "training": {"epohcs": 3}})


def test_unknown_nested_model_key_names_dotted_path():
    data = {"model": {"name": "calf", "backbone": {"preset": "tiny-gpt2", "lora_rnak": 4}}}
    with pytest.raises(ConfigError, match=r"model\.backbone\.lora_rnak"):
        run_config_from_dict(data)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.epochs=abc", r"training\.epochs must be an integer"),
        ("training.epochs=1.5", r"training\.epochs must be an integer"),
        ("training.learning_rate=fast", r"training\.learning_rate must be a number"),
        ("training.progress=3", r"training\.progress must be true or false"),
        ("training.scheduler=linear", r"training\.scheduler must be one of"),
        ("data.prediction_length=0", r"prediction_length must be a positive integer"),
        ("data.few_shot_percent=0", r"few_shot_percent must be in \(0, 100\]"),
        ("noequals", r"must look like key=value"),
    ],
)
def test_bad_overrides_are_clear(override, message):
    with pytest.raises(ConfigError, match=message):
        run_config_from_dict(apply_overrides(_minimal(), [override]))


def test_overrides_are_typed_and_create_sections():
    raw = apply_overrides(_minimal(), ["training.learning_rate=1e-3", "data.dataset=ETTm2", "seed=7"])
    config = run_config_from_dict(raw)
    assert config.training.learning_rate == pytest.approx(1e-3)
    assert isinstance(config.training.learning_rate, float)
    assert config.data.dataset == "ETTm2"
    assert config.seed == 7
    assert config.training.epochs == 2


def test_int_accepted_for_float_but_bool_is_not_an_int():
    config = run_config_from_dict(apply_overrides(_minimal(), ["training.learning_rate=1"]))
    assert config.training.learning_rate == 1.0
    with pytest.raises(ConfigError, match="must be an integer"):
        run_config_from_dict(apply_overrides(_minimal(), ["training.epochs=true"]))


def test_model_name_required_and_unknown_model_listed():
    with pytest.raises(ConfigError, match=r"model\.name is required"):
        run_config_from_dict({"model": {}})
    with pytest.raises(ConfigError, match=r"unknown model 'gpt5'.*calf"):
        run_config_from_dict({"model": {"name": "gpt5"}})


def test_round_trip_through_yaml(tmp_path):
    config = load_run_config(CONFIGS / "tiny" / "calf.yaml", ["training.epochs=1"])
    dumped = to_dict(config)
    assert dumped["model"]["name"] == "calf"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dumped))
    again = load_run_config(path)
    assert again == config


def test_defaults():
    assert DataConfig().context_length == 96
    assert TrainingConfig().cosine_t_max == 20
    with pytest.raises(ConfigError):
        RunConfig()


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_run_config(path)


def test_every_shipped_config_loads():
    """Every run config under configs/ (configs/tune/ holds search spaces: tests/test_tune.py loads them)."""
    files = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "tune")
    assert len(files) >= 9
    for path in files:
        config = load_run_config(path)
        assert config.training.epochs > 0, path


def test_the_window_shape_is_set_in_data_only():
    """data.context_length / prediction_length are the one setting; the model follows them, a config
    may repeat them in model (saved configs do) but a different value is an error, never overwritten."""
    base = {"model": {"name": "dlinear"}, "data": {"context_length": 48, "prediction_length": 12}}
    config = run_config_from_dict(base)
    assert (config.model.context_length, config.model.prediction_length) == (48, 12)
    same = {**base, "model": {"name": "dlinear", "context_length": 48}}
    assert run_config_from_dict(same).model.context_length == 48
    with pytest.raises(ConfigError, match=r"model\.context_length=96 differs from data\.context_length=48"):
        run_config_from_dict({**base, "model": {"name": "dlinear", "context_length": 96}})
    with pytest.raises(
        ConfigError, match=r"model\.prediction_length=24 differs from data\.prediction_length=96"
    ):
        run_config_from_dict({"model": {"name": "dlinear", "prediction_length": 24}})
    # --set on data moves the model with it.
    moved = load_run_config(CONFIGS / "baselines" / "dlinear.yaml", ["data.prediction_length=336"])
    assert moved.model.prediction_length == 336
    # A RunConfig built in Python follows its data too.
    from ecalf.models.dlinear import DLinearConfig

    built = RunConfig(data=DataConfig(context_length=24, prediction_length=6), model=DLinearConfig())
    assert (built.model.context_length, built.model.prediction_length) == (24, 6)
