"""The one place (besides the entry points) that knows about Hydra/omegaconf.

`build(node, **kwargs)` instantiates a config group option; `plain(node)` turns a config node into
plain Python containers so the objects below this layer never see a DictConfig.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def build(node: Any, **kwargs: Any) -> Any:
    """Instantiate `node` (which has a `_target_`), converting nested configs to plain containers."""
    return instantiate(node, _convert_="all", **kwargs)


def plain(node: Any) -> Any:
    """Resolve and convert a config node to dicts/lists (identity for plain values)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def config_hash(*parts: Any, length: int = 12) -> str:
    """A short stable hash of JSON-able parts (dataset and experiment cache keys)."""
    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()[:length]
