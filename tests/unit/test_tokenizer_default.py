"""`data.tokenizer.path` defaults to `model.path`: `model=pretrained` tokenizes with the model's own
tokenizer, every other model keeps the task tokenizer (and its dataset hash), and an explicit
`data.tokenizer.path` wins."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


def test_pretrained_model_path_is_the_tokenizer_path():
    assert compose_cfg(["model=pretrained", "model.path=/x"]).data.tokenizer.path == "/x"


@pytest.mark.parametrize("overrides", [[], ["model=pretrained"], ["model=gpt2"], ["stage=datagen"]],
                         ids=["default", "pretrained-without-path", "gpt2", "datagen"])
def test_without_a_model_path_the_tokenizer_is_built(overrides: list[str]):
    assert compose_cfg(overrides).data.tokenizer.path is None


@pytest.mark.parametrize(("explicit", "expected"), [("/y", "/y"), ("null", None)])
def test_an_explicit_tokenizer_path_wins(explicit: str, expected: str | None):
    cfg = compose_cfg(["model=pretrained", "model.path=/x", f"data.tokenizer.path={explicit}"])
    assert cfg.data.tokenizer.path == expected


@pytest.mark.parametrize("overrides", [[], ["task=countdown", "model=gpt2"]], ids=["default", "countdown-gpt2"])
def test_dataset_hash_is_the_one_of_a_literal_null(overrides: list[str]):
    """Without model.path the interpolation resolves to null: datasets keep the hash (and directory)
    they had when the option read `path: null`."""
    from metacot.config import build
    from metacot.data.build import dataset_hash, dataset_key
    from metacot.stages.common import trace_engine

    def digest(cfg) -> str:
        task, search, lin = trace_engine(cfg)
        return dataset_hash(dataset_key(task, search, lin, build(cfg.data)))

    assert digest(compose_cfg(overrides)) == digest(compose_cfg([*overrides, "data.tokenizer.path=null"]))
