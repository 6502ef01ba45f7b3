"""Export the trained model as a Hugging Face directory (`AutoModelForCausalLM.from_pretrained`).

Global rank 0 writes; every rank must call `export_hf` (FSDP gathers the full weights with a
collective, and all ranks wait for the files to exist before going on). The stages export into a
staging directory and `publish` it by renaming, so a reader (or a crash) never sees half an export;
`EXPORT_INFO` records the training step it holds, so a finished run is not exported again, and
what the stage adds to it (`publish(info=...)`: the RL stage its algo and reward), so whoever reads
the export later (eval, the report) knows which training produced it, not just what it is called.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)
EXPORT_INFO = "metacot_export.json"  # {"global_step": N, **info}: the training step it holds, and its provenance


def _full_fsdp_state(root: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The unsharded weights of an FSDP-wrapped root on rank 0 (CPU), or None if `root` is not
    FSDP. The LightningModule's `model.` prefix is removed."""
    try:
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:
        return None
    if not isinstance(root, FSDP):
        return None
    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
        state = root.state_dict()
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


def export_hf(trainer: L.Trainer, pl_module: L.LightningModule, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write `pl_module.model` (a `PreTrainedModel`) and `tokenizer` to `out_dir`."""
    out_dir = Path(out_dir)
    model = pl_module.model
    state = _full_fsdp_state(trainer.strategy.model)
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        if state is not None:  # rebuild an unwrapped copy: FSDP renamed the modules it wrapped
            if type(model).__name__ == "FullyShardedDataParallel":  # RL wraps the whole policy as one unit
                model = model.module
            with torch.device("meta"):
                model = type(model)(model.config)
            missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
            model.tie_weights()
            missing = [k for k in missing if k not in _tied_names(model)]
            if missing or unexpected:
                raise RuntimeError(f"FSDP export: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / EXPORT_INFO).write_text(json.dumps({"global_step": trainer.global_step}) + "\n")
    trainer.strategy.barrier("export_hf")
    return out_dir


def export_info(hf_dir: Path) -> dict[str, Any]:
    """The export's `EXPORT_INFO` record (`global_step` and what `publish` added), or {} when the
    file is missing or unreadable: provenance is informative, so reading it never fails a stage."""
    try:
        info = json.loads((Path(hf_dir) / EXPORT_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def export_step(hf_dir: Path) -> int | None:
    """The training step an export holds (None: no export there, or one without the record)."""
    try:
        return int(export_info(hf_dir)["global_step"])
    except (ValueError, KeyError, TypeError):
        return None


def publish(staged: Path, target: Path, is_rank_zero: bool, info: dict[str, Any] | None = None) -> None:
    """Move a finished export into place by renaming, so readers and parallel runs never see a
    half-written mix (what was there before is removed after the swap). `info` (JSON-able: e.g. the
    algo and reward that trained it) is merged into the export's `EXPORT_INFO` first, so the record
    moves with the weights it describes."""
    if not is_rank_zero:
        return
    if info:
        _add_info(staged, info)
    old = target.with_name(f".{target.name}-old-{os.getpid()}")
    try:
        if target.exists():
            target.rename(old)
        staged.rename(target)
    except OSError as e:  # another run published at the same moment: its model is the latest
        log.warning("could not publish %s as %s (%s)", staged, target, e)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)


def _add_info(staged: Path, info: dict[str, Any]) -> None:
    """Merge `info` into the staged export's record (`global_step`, written by `export_hf`, is kept
    unless `info` sets it)."""
    record = {**export_info(staged), **info}
    (Path(staged) / EXPORT_INFO).write_text(json.dumps(record, sort_keys=True, default=str) + "\n")


def _tied_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters that share storage with an earlier one (tied embeddings)."""
    seen: set[int] = set()
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return tied
