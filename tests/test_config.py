"""Config: merge order (model default, dataset defaults, user YAML, --options), typed errors that
name the key and the valid ones, and a read-only result."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from minigpt4.common.config import Config, ConfigError, options_to_dotlist
from minigpt4.common.registry import registry


@registry.register_model("config_test_model")
class ConfigTestModel:
    """A model class with two default YAMLs, written by the ``model_defaults`` fixture."""

    PRETRAINED_MODEL_CONFIG_DICT: ClassVar[dict[str, str]] = {"small": "small.yaml", "large": "large.yaml"}
    defaults_dir: ClassVar[Path]

    @classmethod
    def default_config_path(cls, model_type: str) -> str:
        return str(cls.defaults_dir / cls.PRETRAINED_MODEL_CONFIG_DICT[model_type])


@pytest.fixture
def model_defaults(tmp_path, monkeypatch):
    defaults = tmp_path / "defaults"
    defaults.mkdir()
    (defaults / "small.yaml").write_text(
        "model:\n  arch: config_test_model\n  max_txt_len: 10\n  end_sym: '#'\n  num_query_token: 8\n"
        "preprocess:\n  vis_processor:\n    eval:\n      name: blip2_image_eval\n      image_size: 56\n"
    )
    (defaults / "large.yaml").write_text("model:\n  num_query_token: 64\n")
    monkeypatch.setattr(ConfigTestModel, "defaults_dir", defaults, raising=False)
    return defaults


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "user.yaml"
    path.write_text(text)
    return str(path)


USER = """
model:
  arch: config_test_model
  model_type: small
  max_txt_len: 20
datasets:
  laion:
    vis_processor:
      train: {name: blip2_image_train, image_size: 56}
    text_processor:
      train: {name: blip_caption}
    sample_ratio: 115
  cc_sbu_align:
    build_info:
      storage: data/cc_sbu_align
run:
  init_lr: 3e-5
  device: cpu
"""


def make_config(tmp_path, text=USER, options=None) -> Config:
    return Config(SimpleNamespace(cfg_path=write_yaml(tmp_path, text), options=options))


def test_merge_order_defaults_then_user_then_options(tmp_path, model_defaults):
    cfg = make_config(tmp_path, options=["model.end_sym='###'", "datasets.laion.sample_ratio=7"])
    model = cfg.model_cfg
    assert model.num_query_token == 8  # model default YAML only
    assert model.max_txt_len == 20  # user YAML over model default
    assert model.end_sym == "###"  # --options over model default
    assert model.image_size == 224  # schema default, set nowhere
    assert cfg.get_config().preprocess.vis_processor.eval.image_size == 56  # the model YAML's preprocess
    laion = cfg.datasets_cfg.laion
    assert laion.build_info.storage == "/path/to/laion_dataset/{00000..10488}.tar"  # dataset default YAML
    assert laion.data_type == "images"
    assert laion.sample_ratio == 7.0  # --options over user
    assert laion.vis_processor.train.image_size == 56
    # Relative paths are kept exactly as written (relative to the working directory).
    assert cfg.datasets_cfg.cc_sbu_align.build_info.storage == "data/cc_sbu_align"
    assert cfg.run_cfg.init_lr == pytest.approx(3e-5)
    assert isinstance(cfg.run_cfg.init_lr, float)
    assert cfg.run_cfg.max_epoch == 1  # RunConfig default
    assert list(cfg.datasets_cfg) == ["laion", "cc_sbu_align"]


def test_options_in_key_value_pairs(tmp_path, model_defaults):
    cfg = make_config(tmp_path, options=["model.max_txt_len", "30", "run.max_epoch", "3"])
    assert cfg.model_cfg.max_txt_len == 30
    assert cfg.run_cfg.max_epoch == 3


def test_model_type_from_options_picks_the_default_yaml(tmp_path, model_defaults):
    assert make_config(tmp_path, options=["model.model_type=large"]).model_cfg.num_query_token == 64


def test_options_parsing():
    assert options_to_dotlist(None) == []
    assert options_to_dotlist(["a=1", "b.c=x y"]) == ["a=1", "b.c=x y"]
    assert options_to_dotlist(["a", "1", "b", "2"]) == ["a=1", "b=2"]
    with pytest.raises(ConfigError, match="'b' has no value"):
        options_to_dotlist(["a", "1", "b"])
    with pytest.raises(ConfigError, match="'b' is not key=value"):
        options_to_dotlist(["a=1", "b"])


def test_misspelt_key_names_the_file_the_key_and_the_valid_keys(tmp_path, model_defaults):
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, USER.replace("init_lr:", "init_lrr:"))
    message = str(info.value)
    assert "user.yaml: unknown key 'run.init_lrr'" in message
    assert "Did you mean" in message and "'init_lr'" in message
    assert "Valid keys of run: task, runner, lr_sched, init_lr" in message


def test_misspelt_key_in_a_dataset_section(tmp_path, model_defaults):
    with pytest.raises(ConfigError, match=r"unknown key 'datasets.cc_sbu_align.build_info.storag'.*Valid keys of "):
        make_config(tmp_path, USER.replace("storage:", "storag:"))
    with pytest.raises(ConfigError, match=r"unknown key 'datasets.laion.vis_processor.train.imagesize'.*image_size"):
        make_config(tmp_path, USER.replace("image_size: 56}", "imagesize: 56}"))


def test_misspelt_top_level_key(tmp_path, model_defaults):
    with pytest.raises(ConfigError, match=r"unknown key 'runn'.*Valid keys of the top level: model, preprocess"):
        make_config(tmp_path, USER.replace("run:", "runn:"))


def test_misspelt_key_in_options(tmp_path, model_defaults):
    with pytest.raises(ConfigError, match=r"--options: unknown key 'model.max_text_len'"):
        make_config(tmp_path, options=["model.max_text_len=4"])


def test_wrong_type_names_the_key(tmp_path, model_defaults):
    with pytest.raises(ConfigError, match=r"--options: bad value for 'run.max_epoch': Value 'four'"):
        make_config(tmp_path, options=["run.max_epoch=four"])
    with pytest.raises(ConfigError, match=r"user.yaml: bad value for 'model.freeze_vit'"):
        make_config(tmp_path, USER.replace("max_txt_len: 20", "max_txt_len: 20\n  freeze_vit: maybe"))


def test_storage_must_be_str_or_list_of_str(tmp_path, model_defaults):
    listed = make_config(tmp_path, USER.replace("storage: data/cc_sbu_align", "storage: [a.tar, b.tar]"))
    assert list(listed.datasets_cfg.cc_sbu_align.build_info.storage) == ["a.tar", "b.tar"]
    with pytest.raises(ConfigError, match=r"datasets.cc_sbu_align.build_info.storage must be a str or a list"):
        make_config(tmp_path, USER.replace("storage: data/cc_sbu_align", "storage: 3"))


def test_unknown_names_list_the_registered_ones(tmp_path, model_defaults):
    with pytest.raises(ConfigError, match=r"model.arch: unknown model 'nope'; registered models: .*config_test_model"):
        make_config(tmp_path, USER.replace("arch: config_test_model", "arch: nope"))
    with pytest.raises(ConfigError, match=r"datasets.laoin: unknown builder 'laoin'; .*cc_sbu, cc_sbu_align, .*laion"):
        make_config(tmp_path, USER.replace("  laion:", "  laoin:"))
    with pytest.raises(
        ConfigError, match=r"datasets.laion.text_processor.train.name: unknown processor 'blip_captoin'"
    ):
        make_config(tmp_path, USER.replace("name: blip_caption", "name: blip_captoin"))
    with pytest.raises(ConfigError, match=r"model.model_type 'huge' is not one of config_test_model's: small, large"):
        make_config(tmp_path, options=["model.model_type=huge"])
    with pytest.raises(ConfigError, match=r"unknown type 'other' for dataset 'laion'; its types: default"):
        make_config(tmp_path, USER.replace("sample_ratio: 115", "sample_ratio: 115\n    type: other"))
    for key, kind, valid in (
        ("task", "task", "image_text_pretrain"),
        ("runner", "runner", "runner_base"),
        ("lr_sched", "lr_scheduler", "linear_warmup_cosine_lr, linear_warmup_step_lr"),
    ):
        with pytest.raises(ConfigError, match=rf"run.{key}: unknown {kind} 'nope'; registered {kind}s: {valid}"):
            make_config(tmp_path, options=[f"run.{key}=nope"])


def test_missing_root_keys_and_files(tmp_path, model_defaults):
    with pytest.raises(ConfigError, match="expecting 'datasets' as a root key"):
        make_config(tmp_path, "model:\n  arch: config_test_model\n  model_type: small\n")
    with pytest.raises(ConfigError, match=r"config file .*missing.yaml not found"):
        Config(SimpleNamespace(cfg_path=str(tmp_path / "missing.yaml"), options=None))
    with pytest.raises(ConfigError, match=r"preprocess.vis_processor.train needs a 'name'"):
        make_config(tmp_path, USER + "preprocess:\n  vis_processor:\n    train: {image_size: 3}\n")


def test_read_only_and_serialisable(tmp_path, model_defaults, caplog):
    cfg = make_config(tmp_path)
    with pytest.raises(ReadonlyConfigError):
        cfg.run_cfg.init_lr = 1.0
    with pytest.raises(ReadonlyConfigError):
        cfg.datasets_cfg.laion.build_info.storage = "x"
    as_dict = cfg.to_dict()
    assert as_dict["model"]["max_txt_len"] == 20
    whole = cfg.get_config()  # the reference's accessor: the same merged, read-only config
    assert OmegaConf.is_readonly(whole) and OmegaConf.to_container(whole, resolve=True) == as_dict
    assert as_dict["datasets"]["laion"]["sample_ratio"] == 115.0
    as_dict["model"]["max_txt_len"] = 0  # a plain copy
    assert cfg.model_cfg.max_txt_len == 20
    with caplog.at_level(logging.INFO, logger="minigpt4.common.config"):
        cfg.pretty_print()
    text = caplog.text
    assert "Running Parameters" in text and '"init_lr": 3e-05' in text
    assert "Dataset: laion" in text and "Dataset: cc_sbu_align" in text
    assert '"max_txt_len": 20' in text
