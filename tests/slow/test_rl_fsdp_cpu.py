"""RL under Lightning's FSDP, emulated on the CPU (gloo), against one plain process.

Lightning refuses FSDP without a GPU and torch's FSDP needs `device_id=cpu` there, so the script
lifts both (the strategy, wrapping, precision plugin and checkpointing are the real ones). This is
how the ways `trainer=fsdp` RL broke on an H100 were reproduced and fixed (metacot.modules.fsdp):
`no_sync` and `clip_grad_norm_` refuse to run inside the root's forward (a whole RL step runs
inside it), and FSDP's end-of-backward callback never ran, which left bf16 views in place of the
parameters (checkpointing failed on one GPU) and, on 2 ranks, units stuck mid-backward. Checked here, with a deterministic sampler:

- the first gradient and the weights after 3 steps equal the plain single-process run's;
- a checkpoint is written and the run resumes from it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json, sys
    import lightning as L
    import torch
    from lightning.pytorch.trainer.connectors import accelerator_connector
    from torch.distributed.fsdp import FullyShardedDataParallel

    from metacot.modules.rl import RLModule, RLOptions
    from metacot.modules.trainer import FSDPTrainerFactory
    from metacot.rl.objectives import GRPOObjective
    from metacot.stages.rl import fsdp_wrap
    from tests.unit.test_rl_module import ByPrompt, collector, tiny_model, tiny_tokenizer

    torch.set_num_threads(1)
    out, mode, steps, world = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    if mode == "fsdp":  # the emulation: FSDP on the CPU
        check = accelerator_connector._AcceleratorConnector._check_strategy_and_fallback
        def lenient(self):
            flag, self._strategy_flag = self._strategy_flag, "ddp"
            check(self)
            self._strategy_flag = flag
        accelerator_connector._AcceleratorConnector._check_strategy_and_fallback = lenient
        init = FullyShardedDataParallel.__init__
        def on_cpu(self, *args, **kwargs):
            init(self, *args, **{**kwargs, "device_id": torch.device("cpu")})
        FullyShardedDataParallel.__init__ = on_cpu
        # and on the CPU, gathering a full state dict with offload_to_cpu frees the very storage it
        # "copies" from (segfault): the export gathers without offloading here
        import torch.distributed.fsdp as fsdp
        full_config = fsdp.FullStateDictConfig
        fsdp.FullStateDictConfig = lambda offload_to_cpu=True, rank0_only=False: full_config(False, rank0_only)

    records = [{"id": i, "prompt": " ".join(["q"] * (i + 1)), "problem": {}} for i in range(8)]

    class Recording(RLModule):
        grads = []  # the first optimizer step's gradient: this rank's part, and its squared norm
        def _optimizer_step(self, opt, sched):
            if not self.grads:
                local = [p.grad.flatten() for p in self.model.parameters() if p.grad is not None]
                self.grads.append((torch.cat(local).tolist() if world == 1 else None,
                                   sum(float(g.pow(2).sum()) for g in local)))
            return super()._optimizer_step(opt, sched)

    tok = tiny_tokenizer()
    options = RLOptions(steps=steps, prompts_per_step=4 // world, lr=1e-2, micro_batch_size=2, eval_every=0,
                        eval_at_start=False, table_every=0, seed=0)
    policy = tiny_model(0)
    module = Recording(policy, tok, GRPOObjective(group_size=3, kl_coef=0.1, epochs_per_batch=2), collector(tok),
                       records, options, max_new_tokens=3, sampler_factory=ByPrompt)
    module.checkpoint_path = out + "/last.ckpt"
    common = dict(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)
    if mode == "fsdp":  # as stage=rl builds it from conf/trainer/fsdp.yaml
        factory = FSDPTrainerFactory(accelerator="cpu", devices=world, precision="bf16-mixed",
                                     sharding_strategy="FULL_SHARD", enable_progress_bar=False)
        factory.wrap = fsdp_wrap(factory, policy)
        factory.full_precision_params = True
        common.pop("enable_progress_bar")
        trainer = factory.build(policy, **common)
    else:
        trainer = L.Trainer(accelerator="cpu", devices=1, **common)
    resume = out + "/last.ckpt" if len(sys.argv) > 5 else None
    trainer.fit(module, ckpt_path=resume)
    if mode == "fsdp":  # the full weights, as the stage exports them
        from transformers import AutoModelForCausalLM
        from metacot.modules.export import export_hf
        export_hf(trainer, module, tok, f"{out}/hf_{steps}")
        model = AutoModelForCausalLM.from_pretrained(f"{out}/hf_{steps}") if trainer.is_global_zero else None
    else:
        model = module.model
    if trainer.is_global_zero:
        torch.save(torch.cat([p.detach().flatten().float() for p in model.parameters()]), f"{out}/weights_{steps}.pt")
    grad, grad_sq = Recording.grads[0] if Recording.grads else (None, None)
    with open(f"{out}/run_{steps}_rank{trainer.global_rank}.json", "w") as f:
        json.dump({"grad": grad, "grad_sq": grad_sq, "rl_step": module.rl_step, "world": trainer.world_size,
                   "strategy": type(trainer.strategy).__name__}, f)
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, mode: str, steps: int, world: int = 1, resume: bool = False) -> list[dict]:
    """Run the script (torchrun for 2 ranks); each rank's record."""
    out.mkdir(exist_ok=True)
    script = out / "rl_fsdp.py"
    script.write_text(SCRIPT)
    path = os.pathsep.join([str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}
    args = [str(script), str(out), mode, str(steps), str(world), *(["resume"] if resume else [])]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
               f"--master_port={free_port()}", *args]
    else:
        cmd = [sys.executable, *args]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return [json.loads((out / f"run_{steps}_rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[dict, torch.Tensor]:
    out = tmp_path_factory.mktemp("plain")
    (run,) = launch(out, "plain", 3)
    return run, torch.load(out / "weights_3.pt")


@pytest.mark.parametrize("world", [1, 2])
def test_fsdp_rl_matches_one_plain_process_and_resumes(tmp_path, plain, world):
    from tests.unit.test_rl_module import tiny_model

    one, w_plain = plain
    ranks = launch(tmp_path, "fsdp", 3, world)
    assert [r["strategy"] for r in ranks] == ["FSDPStrategy"] * world
    assert [r["rl_step"] for r in ranks] == [3] * world and one["rl_step"] == 3
    g_plain = torch.tensor(one["grad"])
    start = torch.cat([p.detach().flatten() for p in tiny_model(0).parameters()])
    assert g_plain.abs().sum() > 0 and not torch.allclose(w_plain, start), "the plain run did not train"
    # each rank holds its shard of the gradient: together, the one-process gradient's norm
    assert sum(r["grad_sq"] for r in ranks) == pytest.approx(float(g_plain.pow(2).sum()), rel=1e-4)
    if world == 1:
        assert torch.allclose(torch.tensor(ranks[0]["grad"]), g_plain, rtol=1e-4, atol=1e-6)
    w_fsdp = torch.load(tmp_path / "weights_3.pt")  # gathered from the shards by the HF export
    assert torch.allclose(w_fsdp, w_plain, rtol=1e-4, atol=1e-5), "FSDP weights after 3 steps differ"

    assert (tmp_path / "last.ckpt").exists()
    resumed = launch(tmp_path, "fsdp", 4, world, resume=True)  # one more step from the sharded checkpoint
    assert [r["rl_step"] for r in resumed] == [4] * world and resumed[0]["grad_sq"] > 0
