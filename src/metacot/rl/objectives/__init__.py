"""RL objectives, one class per algorithm (`conf/algo/<name>.yaml` → `metacot.rl.objectives.<Class>`).

See `base.py` for the contract the RL stage relies on (prepare once per rollout batch, then
`loss` per micro-batch with whole-batch normalisers).
"""

from metacot.rl.objectives.base import (
    LossNorm,
    PolicyObjective,
    PreparedRollout,
    clipped_surrogate,
    loss_norm,
    sequence_mean,
    sequence_sum,
    sequence_sum_over_budget,
    token_mean,
    unclipped_surrogate,
)
from metacot.rl.objectives.dapo import DAPOObjective
from metacot.rl.objectives.dr_grpo import DrGRPOObjective
from metacot.rl.objectives.expert_iteration import ExpertIterationObjective, select_for_sft
from metacot.rl.objectives.grpo import GRPOObjective
from metacot.rl.objectives.ppo_clip import PPOClipObjective
from metacot.rl.objectives.reinforce import ReinforceObjective
from metacot.rl.objectives.reinforce_pp import ReinforcePPObjective
from metacot.rl.objectives.rloo import RLOOObjective

__all__ = [
    "DAPOObjective",
    "DrGRPOObjective",
    "ExpertIterationObjective",
    "GRPOObjective",
    "LossNorm",
    "PPOClipObjective",
    "PolicyObjective",
    "PreparedRollout",
    "RLOOObjective",
    "ReinforceObjective",
    "ReinforcePPObjective",
    "clipped_surrogate",
    "loss_norm",
    "select_for_sft",
    "sequence_mean",
    "sequence_sum",
    "sequence_sum_over_budget",
    "token_mean",
    "unclipped_surrogate",
]
