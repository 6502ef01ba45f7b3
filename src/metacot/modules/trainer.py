"""`trainer=` group: how to run (devices, nodes, strategy, precision), as Lightning Trainer kwargs.

A factory, not a Trainer, is what the YAML instantiates: building a GPU Trainer needs a GPU and
the FSDP wrap policy needs the model, so the stage calls `factory.build(model, **run_kwargs)`.
`devices` / `num_nodes` are plain knobs; under torchrun or SLURM, Lightning reads ranks from the
environment, so multi-node launches need no code change. The datamodule shards data by rank
itself, hence `use_distributed_sampler=False`.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch


def single_lightning_log() -> None:
    """Print each Lightning message once. The `lightning` package gives its logger a console handler
    of its own and lets it propagate too, so under Hydra's logging (root console + the run's log
    file) every message came out twice: keep root's, which also writes the run's log file."""
    if logging.getLogger().handlers:
        logger = logging.getLogger("lightning")
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)


class TrainerFactory:
    """`conf/trainer/{cpu,gpu,ddp}.yaml`. `extra` holds any other `lightning.Trainer` keyword."""

    def __init__(self, name: str = "cpu", accelerator: str = "auto", devices: int | str | list[int] = "auto",
                 num_nodes: int = 1, strategy: str = "auto", precision: str = "32-true",
                 enable_progress_bar: bool = True, float32_matmul_precision: str | None = None,
                 torch_threads: int | None = None, extra: dict[str, Any] | None = None):
        self.name = name
        self.accelerator = accelerator
        self.devices = devices
        self.num_nodes = num_nodes
        self.strategy = strategy
        self.precision = precision
        self.enable_progress_bar = enable_progress_bar
        self.float32_matmul_precision = float32_matmul_precision
        self.torch_threads = torch_threads
        self.extra = dict(extra or {})

    def make_strategy(self, model: torch.nn.Module | None) -> Any:
        return self.strategy

    def build(self, model: torch.nn.Module | None = None, **kwargs: Any) -> L.Trainer:
        """A Trainer for `model` (the Hugging Face model inside the LightningModule); `kwargs`
        (max_steps, callbacks, logger, ...) come from the stage and override `extra`."""
        if self.float32_matmul_precision:
            torch.set_float32_matmul_precision(self.float32_matmul_precision)
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        if str(self.accelerator).lower() in ("gpu", "cuda") and not torch.cuda.is_available():
            raise SystemExit(f"trainer={self.name} needs a CUDA GPU and torch sees none "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is False): run with "
                             "trainer=cpu (or trainer=ddp for several CPU processes), or install a CUDA build of torch")
        single_lightning_log()
        args = {"accelerator": self.accelerator, "devices": self.devices, "num_nodes": self.num_nodes,
                "strategy": self.make_strategy(model), "precision": self.precision,
                "enable_progress_bar": self.enable_progress_bar, "use_distributed_sampler": False,
                "num_sanity_val_steps": 0, **self.extra, **kwargs}
        return L.Trainer(**args)


class FSDPTrainerFactory(TrainerFactory):
    """`conf/trainer/fsdp.yaml`: FSDP with one unit per decoder layer (the classes a Hugging Face
    model lists in `_no_split_modules`, or `wrap`), sharded checkpoints (`last.ckpt/` is a
    directory), optional activation checkpointing of the same layers."""

    def __init__(self, name: str = "fsdp", sharding_strategy: str = "FULL_SHARD",
                 state_dict_type: str = "sharded", wrap: list[str] | None = None,
                 activation_checkpointing: bool = False, cpu_offload: bool = False, **kwargs: Any):
        kwargs.setdefault("accelerator", "gpu")
        kwargs.setdefault("precision", "bf16-mixed")
        kwargs.pop("strategy", None)
        super().__init__(name=name, strategy="fsdp", **kwargs)
        self.sharding_strategy = sharding_strategy
        self.state_dict_type = state_dict_type
        self.wrap = list(wrap) if wrap else None
        self.activation_checkpointing = activation_checkpointing
        self.cpu_offload = cpu_offload
        # Keep parameters fp32 inside FSDP (bf16 compute still comes from autocast), as under
        # trainer=gpu. Lightning's bf16-mixed for FSDP also casts the parameters to bf16; the RL
        # stage sets this so its log-prob ratios and updates compute as on one GPU (and equal a
        # plain process to 1e-6 in tests/slow/test_rl_fsdp_cpu.py). Costs fp32 all-gathers.
        self.full_precision_params = False

    def layer_classes(self, model: torch.nn.Module) -> set[type]:
        names = set(self.wrap or getattr(model, "_no_split_modules", None) or [])
        classes = {type(m) for m in model.modules() if type(m).__name__ in names}
        if not classes:
            raise ValueError(
                f"FSDP: no module of {type(model).__name__} is one of {sorted(names) or 'its _no_split_modules'}; "
                "set trainer.wrap=[DecoderLayerClassName]"
            )
        return classes

    def make_strategy(self, model: torch.nn.Module | None) -> Any:
        from lightning.pytorch.strategies import FSDPStrategy

        if model is None:
            raise ValueError("the FSDP trainer needs the model to find its decoder layers")
        layers = self.layer_classes(model)
        return FSDPStrategy(
            auto_wrap_policy=layers,
            activation_checkpointing_policy=layers if self.activation_checkpointing else None,
            sharding_strategy=self.sharding_strategy,
            state_dict_type=self.state_dict_type,
            cpu_offload=self.cpu_offload,
            use_orig_params=True,
            **({"mixed_precision": fp32_params()} if self.full_precision_params else {}),
        )


def fp32_params() -> Any:
    """FSDP mixed precision that keeps parameters, gradient reduction and buffers in fp32."""
    from torch.distributed.fsdp import MixedPrecision

    return MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.float32, buffer_dtype=torch.float32)
