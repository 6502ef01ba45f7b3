"""RL under two-process DDP on the CPU (gloo, launched with torchrun as a cluster would):

- each rank rolls out its own prompts (disjoint per step, together the single process's prompts),
  the gradients are synced (identical weights on both ranks) and normalised over the GLOBAL batch,
  so the first update equals the one-process update on the same prompts — for a sequence-level
  objective with a KL reference and PPO epochs (GRPO), a token-level one that drops groups (DAPO)
  and one whose advantages are whitened over the global batch's tokens (REINFORCE++);
- `python train.py stage=rl trainer=ddp` (CPU) runs the whole stage: sharded evaluation, the
  checkpoint, the export.
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
    from metacot.modules.rl import RLModule, RLOptions
    from metacot.rl.objectives import DAPOObjective, GRPOObjective, ReinforcePPObjective
    from tests.unit.test_rl_module import ByPrompt, collector, tiny_model, tiny_tokenizer

    torch.set_num_threads(1)
    out, world, algo = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    records = [{"id": i, "prompt": " ".join(["q"] * (i + 1)), "problem": {}} for i in range(8)]

    class Recording(RLModule):
        seen, grads = [], []
        def collect(self, step):
            rollout, sampled = super().collect(step)
            self.seen.append([r["id"] for r in rollout.records])
            return rollout, sampled
        def _optimizer_step(self, opt, sched):
            if not self.grads:
                self.grads.append(torch.cat([p.grad.flatten() for p in self.model.parameters()]).tolist())
            return super()._optimizer_step(opt, sched)

    objective = {"grpo": GRPOObjective(group_size=3, kl_coef=0.1, epochs_per_batch=2),
                 "dapo": DAPOObjective(group_size=3),
                 "reinforce_pp": ReinforcePPObjective(group_size=3, kl_coef=0.1)}[algo]
    tok = tiny_tokenizer()
    options = RLOptions(steps=3, prompts_per_step=4 // world, lr=1e-2, micro_batch_size=2, eval_every=0,
                        eval_at_start=False, table_every=0, seed=0)
    module = Recording(tiny_model(0), tok, objective, collector(tok), records, options, max_new_tokens=3,
                       sampler_factory=ByPrompt)
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_epochs=-1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module)
    rank = trainer.global_rank
    torch.save(torch.cat([p.detach().flatten() for p in module.model.parameters()]), f"{out}/weights{rank}.pt")
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"seen": Recording.seen, "grad": Recording.grads[0], "world": trainer.world_size,
                   "rl_step": module.rl_step}, f)
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}


def launch(tmp_path: Path, name: str, world: int, algo: str) -> Path:
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "rl_ddp.py"
    script.write_text(SCRIPT)
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
               f"--master_port={free_port()}", str(script), str(out), str(world), algo]
    else:
        cmd = [sys.executable, str(script), str(out), "1", algo]
    res = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


@pytest.mark.parametrize("algo", ["grpo", "dapo", "reinforce_pp"])
def test_two_ranks_roll_out_their_own_prompts_and_match_one_process(tmp_path, algo):
    ddp = launch(tmp_path, "ddp", 2, algo)
    ranks = [json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["rl_step"] for r in ranks] == [3, 3]
    w0, w1 = torch.load(ddp / "weights0.pt"), torch.load(ddp / "weights1.pt")
    assert torch.equal(w0, w1), "the ranks' weights diverged"

    one = json.loads((launch(tmp_path, "one", 1, algo) / "rank0.json").read_text())
    for step, (a, b) in enumerate(zip(ranks[0]["seen"], ranks[1]["seen"], strict=True)):
        assert not set(a) & set(b), "two ranks rolled out the same prompt in one step"
        assert a + b == one["seen"][step]  # rank r takes slice r of the one-process batch
    g_one, g_ddp = torch.tensor(one["grad"]), torch.tensor(ranks[0]["grad"])
    assert g_one.abs().sum() > 0
    assert torch.allclose(g_ddp, g_one, rtol=1e-4, atol=1e-7), "DDP gradient != one-process gradient"
    assert torch.equal(g_ddp, torch.tensor(ranks[1]["grad"]))


def test_stage_runs_under_ddp_on_cpu(tmp_path):
    from hydra import compose, initialize_config_dir

    from metacot.config import build
    from metacot.data.tokenizer import load_tokenizer
    from metacot.stages.datagen import ensure_dataset

    overrides = ["task=maze", "task.size=5", "search=astar", "linearization=searchformer", "model=tiny",
                 "data.train=24", "data.val=4", "data.test_unseen=4", "data.workers=1", "data.max_tokens=512"]
    os.environ["METACOT_ROOT"] = str(tmp_path)
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        tok = load_tokenizer(ensure_dataset(cfg) / "tokenizer")
    finally:
        os.environ.pop("METACOT_ROOT")
    torch.manual_seed(0)
    init = tmp_path / "init_hf"
    build(cfg.model).build(tok, 512).save_pretrained(init)
    args = [*overrides, "stage=rl", f"init_from={init}", "trainer=ddp", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
            "rl.steps=2", "rl.prompts_per_step=2", "algo.group_size=2", "rl.max_new_tokens=8", "rl.eval_every=0",
            "eval.n_problems=3", "eval.max_new_tokens=8", "eval.num_samples=2", f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path,
                         env={**env(), "METACOT_ROOT": str(tmp_path)}, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["source"] == str(init)
    for split in ("val", "test_unseen"):  # sharded over the two ranks, reduced to all 3 problems
        assert metrics["before"][split]["num_problems"] == metrics["after"][split]["num_problems"] == 3
    ckpt = torch.load(metrics["last_ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["metacot_rl"]["rl_step"] == 2
    assert (Path(metrics["hf_dir"]) / "config.json").is_file()
