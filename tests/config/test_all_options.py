"""Every option of every config group composes and instantiates — the group is the registry, so a
new YAML is tested the moment it is added."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


def _options():
    for group in sorted(p for p in CONF.iterdir() if p.is_dir()):
        for option in sorted(group.glob("*.yaml")):
            if group.name == "hydra":
                continue
            yield group.name, option.stem


OPTIONS = list(_options())


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_every_group_has_options():
    groups = {g for g, _ in OPTIONS}
    for required in ("task", "search", "linearization", "stage", "paths"):
        assert required in groups, f"conf/{required}/ has no options"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option):
    prefix = ""  # experiment is an `optional` entry of the defaults list
    cfg = _compose([f"{prefix}{group}={option}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    node = cfg.get(group) if group != "experiment" else None
    if node is not None and "_target_" in node:
        obj = instantiate(node, _convert_="all")
        assert obj is not None
        if "name" in node and hasattr(obj, "name"):
            assert obj.name == node.name == option, "option name, file stem and object name must agree"


def test_unknown_option_is_a_clear_hydra_error():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="search"):
        _compose(["search=no_such_search"])
