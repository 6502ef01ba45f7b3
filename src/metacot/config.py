"""The one place (besides the entry points) that knows about Hydra/omegaconf.

`build(node, **kwargs)` instantiates a config group option; `plain(node)` turns a config node into
plain Python containers so the objects below this layer never see a DictConfig.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metacot.errors import BadValue

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the config groups (`conf/<group>/<option>.yaml`)


def build(node: Any, **kwargs: Any) -> Any:
    """Instantiate `node` (which has a `_target_`), converting nested configs to plain containers.
    A value the target rejects (its ValueError or TypeError, e.g. `sft.max_steps must be an integer
    >= 1`) is the user's mistake: it leaves as `errors.BadValue` with the target's own message,
    instead of Hydra's InstantiationException wrapped around it."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise BadValue(f"{cause} (in {_target_of(node)})") from e
        raise


def _target_of(node: Any) -> str:
    try:
        return str(node["_target_"])
    except Exception:  # noqa: BLE001 - only for the message
        return "the config"


def plain(node: Any) -> Any:
    """Resolve and convert a config node to dicts/lists (identity for plain values)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def config_hash(*parts: Any, length: int = 12) -> str:
    """A short stable hash of JSON-able parts (dataset and experiment cache keys)."""
    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()[:length]
