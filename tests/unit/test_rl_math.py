"""Hand-computed checks of metacot.rl: advantages, KL estimators, objectives, micro-batch invariance."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.rl.advantages import (
    dr_grpo_advantages,
    group_mean_advantages,
    grpo_advantages,
    masked_whiten,
    reinforce_pp_advantages,
    rloo_advantages,
    zero_variance_mask,
)
from metacot.rl.kl import get_kl_estimator, kl_k1, kl_k2, kl_k3
from metacot.rl.objectives import (
    DAPOObjective,
    DrGRPOObjective,
    ExpertIterationObjective,
    GRPOObjective,
    PPOClipObjective,
    ReinforceObjective,
    ReinforcePPObjective,
    RLOOObjective,
    loss_norm,
    select_for_sft,
)

T = torch.tensor


def close(a, b, tol=1e-6):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol
    )


# --- advantages ------------------------------------------------------------------------------


def test_group_mean_and_dr_grpo():
    r = T([1.0, 0.0, 0.0, 1.0, 0.5, 0.5])  # G=2: groups [1,0] [0,1] [.5,.5]
    want = [0.5, -0.5, -0.5, 0.5, 0.0, 0.0]
    assert close(group_mean_advantages(r, 2), want)
    assert close(dr_grpo_advantages(r, 2), want)
    assert close(dr_grpo_advantages(T([1.0, 0.0, 0.0, 0.0]), 4), [0.75, -0.25, -0.25, -0.25])


def test_rloo_exact_values():
    r = T([1.0, 0.0, 1.0, 0.5])  # sum 2.5, baseline of i = (2.5 - r_i) / 3
    assert close(rloo_advantages(r, 4), [1 - 1.5 / 3, 0 - 2.5 / 3, 1 - 1.5 / 3, 0.5 - 2.0 / 3])
    assert close(rloo_advantages(T([2.0, 0.0]), 2), [2.0, -2.0])
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(T([1.0]), 1)


def test_grpo_values_and_zero_variance_groups():
    r = T([1.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3, 1.0, 1.0, 1.0, 1.0])
    adv = grpo_advantages(r, 4, eps=0.0)
    # group 0: mean .25, unbiased std sqrt((.5625 + 3 * .0625) / 3) = .5
    assert close(adv[:4], [1.5, -0.5, -0.5, -0.5])
    assert torch.equal(adv[4:], torch.zeros(8))  # exact zeros, no NaN (0.3 is not exact in binary)
    assert not torch.isnan(grpo_advantages(T([1.0, 1.0]), 1)).any()  # G = 1
    assert torch.equal(zero_variance_mask(r, 4), T([False] * 4 + [True] * 8))


def test_grouping_errors_are_clear():
    with pytest.raises(ValueError, match="whole groups"):
        grpo_advantages(T([1.0, 0.0, 1.0]), 2)


def test_reinforce_pp_returns_with_kl_and_batch_whitening():
    mask = T([[1, 1, 1, 0], [1, 1, 0, 0]])
    kl = torch.ones(2, 4)
    adv = reinforce_pp_advantages(T([1.0, 0.0]), 2, mask, token_kl=kl, kl_coef=0.1)
    # token rewards: row0 [-.1, -.1, .9], row1 [-.1, -.1]; returns-to-go:
    returns = [0.7, 0.8, 0.9, -0.2, -0.1]
    mean = sum(returns) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in returns) / 5)
    want = [(x - mean) / std for x in returns]
    assert close(adv[mask.bool()], want, 1e-5)
    assert torch.equal(adv[~mask.bool()], torch.zeros(3))
    # baseline variant: rewards [1, 0] -> [.5, -.5] first; without KL the returns are constant per row
    adv_b = reinforce_pp_advantages(T([1.0, 0.0]), 2, mask, baseline=True)
    returns_b = [0.5, 0.5, 0.5, -0.5, -0.5]
    mean_b = sum(returns_b) / 5
    std_b = math.sqrt(sum((x - mean_b) ** 2 for x in returns_b) / 5)
    assert close(adv_b[mask.bool()], [(x - mean_b) / std_b for x in returns_b], 1e-5)



def test_masked_whiten_with_reduce_sum_uses_every_ranks_tokens():
    """Two "ranks": with a sum over ranks, each rank's whitened values equal the one-process
    values of its rows (global token mean and std), not a whitening of its own tokens."""
    gen = torch.Generator().manual_seed(0)
    values, mask = torch.randn(4, 5, generator=gen), torch.rand(4, 5, generator=gen) > 0.3
    whole = masked_whiten(values, mask)
    for rows, other in ((slice(0, 2), slice(2, 4)), (slice(2, 4), slice(0, 2))):
        x, m = values[other], mask[other]
        mean = values[mask].mean()
        sums = iter([torch.stack([x[m].sum(), m.sum().float()]), ((x - mean) ** 2)[m].sum()[None]])

        def reduce_sum(t, sums=sums):  # this rank's partial sums + the other rank's
            return t + next(sums)

        part = masked_whiten(values[rows], mask[rows], reduce_sum=reduce_sum)
        assert close(part[mask[rows]], whole[rows][mask[rows]].tolist(), 1e-5)
        assert torch.equal(part[~mask[rows]], torch.zeros(int((~mask[rows]).sum())))
        assert not torch.allclose(masked_whiten(values[rows], mask[rows]), whole[rows], atol=1e-3)


# --- KL estimators ---------------------------------------------------------------------------


def test_kl_estimators_closed_forms():
    logp, ref = T([-1.0, -2.0, -0.5]), T([-1.5, -1.0, -0.5])
    d = ref - logp
    assert close(kl_k1(logp, ref), logp - ref)
    assert close(kl_k2(logp, ref), 0.5 * d**2)
    assert close(kl_k3(logp, ref), torch.exp(d) - d - 1)
    assert kl_k3(logp, ref)[2] == 0.0
    assert get_kl_estimator("k3") is kl_k3
    with pytest.raises(ValueError, match="k1"):
        get_kl_estimator("k4")


def test_k1_k3_unbiased_and_k2_close_for_near_distributions():
    p = torch.softmax(torch.tensor([0.3, -1.2, 2.0, 0.1, -0.4], dtype=torch.float64), 0)
    for shift in (0.05, 1.0):
        q = torch.softmax(
            torch.log(p) + shift * torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0], dtype=torch.float64), 0
        )
        true_kl = (p * (p.log() - q.log())).sum()
        expect = {k: (p * get_kl_estimator(k)(p.log(), q.log())).sum() for k in ("k1", "k2", "k3")}
        assert close(expect["k1"], true_kl, 1e-12) and close(expect["k3"], true_kl, 1e-12)
        if shift < 0.1:  # k2 is biased, but only at third order
            assert abs(expect["k2"] - true_kl) < 0.02 * true_kl


@settings(max_examples=200, deadline=None)
@given(st.floats(-30, 0), st.floats(-30, 0))
def test_k3_nonnegative(a, b):
    assert kl_k3(T([a], dtype=torch.float64), T([b], dtype=torch.float64)).item() >= 0.0


# --- objectives: clipping, masking, normalisation -------------------------------------------


def _clip_case():
    """Two sequences of 4 tokens: A = +1 and A = -1, ratios chosen around the clip range."""
    ratios = T([[1.5, 0.5, 1.1, 1.0], [1.5, 0.5, 0.9, 1.0]], dtype=torch.float64)
    old = torch.zeros(2, 4, dtype=torch.float64)
    logp = ratios.log().clone().requires_grad_(True)
    return logp, old, T([1.0, -1.0], dtype=torch.float64), torch.ones(2, 4)


def test_grpo_clipping_both_sides():
    logp, old, adv, mask = _clip_case()
    obj = GRPOObjective(clip_eps=0.2, kl_coef=0.0)
    norm = loss_norm(mask)
    loss, stats = obj.loss(logp, old, None, adv, mask, norm)
    # seq0 terms -min(rA, clip(r)A): -[1.2, .5, 1.1, 1]; seq1: +[1.5, .8, .9, 1]; seq means -.95, 1.05
    assert close(loss, (-0.95 + 1.05) / 2)
    loss.backward()
    # grad of an unclipped token = -A * r / (|o| * N); clipped tokens (r=1.5,A>0 and r=.5,A<0) get 0
    want = -T([[0.0, 0.5, 1.1, 1.0], [-1.5, 0.0, -0.9, -1.0]], dtype=torch.float64) / 8
    assert close(logp.grad, want)
    assert close(stats["clip_frac_high"], 1 / 8) and close(stats["clip_frac_low"], 1 / 8)
    assert close(stats["ratio_mean"], (1.5 + 0.5 + 1.1 + 1 + 1.5 + 0.5 + 0.9 + 1) / 8)


def test_dapo_asymmetric_clip():
    ratios = T([[1.25, 0.75]], dtype=torch.float64)
    logp = ratios.log().clone().requires_grad_(True)
    mask = torch.ones(1, 2)
    norm = loss_norm(mask)
    for obj, high_clipped in ((DAPOObjective(), False), (GRPOObjective(kl_coef=0.0), True)):
        _, s_pos = obj.loss(logp, torch.zeros(1, 2), None, T([1.0]), mask, norm)
        _, s_neg = obj.loss(logp, torch.zeros(1, 2), None, T([-1.0]), mask, norm)
        assert close(s_pos["clip_frac_high"], 0.5 if high_clipped else 0.0)  # 1.25 vs 1.2 / 1.28
        assert close(s_neg["clip_frac_low"], 0.5)  # .75 < .8 for both
        assert close(s_pos["clip_frac_low"], 0.0) and close(s_neg["clip_frac_high"], 0.0)


def test_unclipped_objectives_report_no_clipping():
    logp, old, adv, mask = _clip_case()
    loss, stats = RLOOObjective(group_size=2).loss(logp, old, None, adv, mask, loss_norm(mask))
    assert stats["clip_frac_low"] == 0 and stats["clip_frac_high"] == 0
    # -sum(rA) / N = -(4.1 - 3.9) / 2
    assert close(loss, -(1.5 + 0.5 + 1.1 + 1.0 - 1.5 - 0.5 - 0.9 - 1.0) / 2)


@pytest.mark.parametrize(
    "make",
    [
        GRPOObjective,
        DAPOObjective,
        DrGRPOObjective,
        PPOClipObjective,
        lambda: ReinforceObjective(kl_coef=0.1, kl_mode="loss"),
    ],
)
def test_padding_never_contributes(make):
    obj = make()
    mask = T([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    torch.manual_seed(0)
    base_logp, base_old, base_ref = (-torch.rand(2, 3) for _ in range(3))

    def run(pad_value):
        def pad(x):
            return torch.cat([x, torch.full((2, 2), pad_value)], 1).clone()

        logp = pad(base_logp).requires_grad_(True)
        old, ref = pad(base_old), pad(base_ref)
        old[1, 2] = ref[1, 2] = pad_value
        logp.data[1, 2] = pad_value
        loss, stats = obj.loss(logp, old, ref, T([0.7, -0.3]), mask, loss_norm(mask, max_length=5))
        loss.backward()
        return loss, stats, logp.grad

    l0, s0, g0 = run(0.0)
    for v in (float("nan"), float("inf"), -float("inf"), 50.0):
        l1, s1, g1 = run(v)
        assert torch.isfinite(l1) and close(l1, l0)
        assert torch.equal(g1[~mask.bool()], torch.zeros(5)) and close(g1, g0)
        assert all(close(s1[k], s0[k]) for k in s0)


def test_dapo_drops_zero_variance_groups_and_normalises_by_tokens():
    rewards = T([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    lengths = [2, 3, 1, 4, 5, 5, 5, 5, 2, 2, 2, 2]
    mask = (torch.arange(6)[None, :] < T(lengths)[:, None]).long()
    obj = DAPOObjective(group_size=4)
    prep = obj.prepare(rewards, mask)
    assert torch.equal(prep.keep, T([True] * 4 + [False] * 8))
    assert prep.norm.num_tokens == 10 and prep.norm.num_sequences == 4
    assert prep.mask[4:].sum() == 0 and close(prep.stats["kept_frac"], 1 / 3)
    logp = -torch.rand(12, 6)
    loss, _ = obj.loss(logp, logp.detach(), None, prep.advantages, prep.mask, prep.norm)
    # on-policy ratio 1: -sum_i A_i |o_i| / tokens = -(1.5*2 - .5*3 - .5*1 - .5*4) / 10
    assert close(loss, 0.1, 1e-5)
    # GRPO on the same batch keeps everything and averages per sequence over all 12 sequences
    g = GRPOObjective(group_size=4, kl_coef=0.0)
    gp = g.prepare(rewards, mask)
    assert gp.norm.num_sequences == 12 and gp.keep.all()
    g_loss, _ = g.loss(logp, None, None, gp.advantages, gp.mask, gp.norm)
    assert close(g_loss, -(1.5 - 0.5 - 0.5 - 0.5) / 12, 1e-5)


def test_dr_grpo_sums_tokens_over_constant_budget():
    rewards = T([1.0, 0.0])
    mask = T([[1, 1, 0, 0], [1, 1, 1, 1]])
    obj = DrGRPOObjective(group_size=2)
    prep = obj.prepare(rewards, mask, max_length=10)
    assert close(prep.advantages, [0.5, -0.5])  # no std division
    logp = -torch.rand(2, 4)
    loss, _ = obj.loss(logp, None, None, prep.advantages, prep.mask, prep.norm)
    # -(.5 * 2 tokens - .5 * 4 tokens) / (2 sequences * 10): longer wrong answer weighs more
    assert close(loss, -(0.5 * 2 - 0.5 * 4) / 20)


def test_kl_loss_and_reward_modes():
    mask = T([[1, 1, 0], [1, 1, 1]])
    logp = T([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    ref = T([[-1.5, -1.0, 0.0], [-0.5, -1.5, -0.5]])
    obj = GRPOObjective(group_size=2, kl_coef=0.5, kl_mode="loss", kl_estimator="k1")
    norm = loss_norm(mask)
    loss, stats = obj.loss(logp, logp.detach(), ref, T([0.0, 0.0]), mask, norm)
    # pg = 0 (A = 0); k1 per token row0 [.5, -1] mean -.25, row1 [0, 1, 0] mean 1/3
    assert close(loss, 0.5 * (-0.25 + 1 / 3) / 2)
    assert close(stats["kl_mean"], (0.5 - 1 + 1) / 5)
    with pytest.raises(ValueError, match="ref_logp"):
        obj.loss(logp, None, None, T([0.0, 0.0]), mask, norm)
    # reward mode: r_i - coef * sum_t k1 -> [1 - .5*(-.5), 1 - .5*1] = [1.25, .5] -> group mean +-.375
    r = ReinforceObjective(group_size=2, kl_coef=0.5, kl_mode="reward", kl_estimator="k1")
    assert close(
        r.advantages(T([1.0, 1.0]), mask=mask, old_logp=logp.detach(), ref_logp=ref), [0.375, -0.375]
    )


def test_uses_reference_and_validation():
    assert GRPOObjective().uses_reference
    assert not GRPOObjective(kl_coef=0.0).uses_reference
    assert not GRPOObjective(kl_coef=0.1, kl_mode="none").uses_reference
    assert not DAPOObjective().uses_reference and not ExpertIterationObjective().uses_reference
    assert ReinforcePPObjective().uses_reference
    with pytest.raises(ValueError, match="kl_mode"):
        GRPOObjective(kl_mode="both")
    with pytest.raises(ValueError, match="kl_estimator"):
        GRPOObjective(kl_estimator="k9")


# --- micro-batch invariance ------------------------------------------------------------------

OBJECTIVES = {
    "reinforce": lambda: ReinforceObjective(group_size=3, kl_coef=0.1, kl_mode="loss"),
    "rloo": lambda: RLOOObjective(group_size=3, kl_coef=0.1, kl_mode="reward", kl_estimator="k2"),
    "grpo": lambda: GRPOObjective(group_size=3, kl_coef=0.1),
    "dr_grpo": lambda: DrGRPOObjective(group_size=3, kl_coef=0.1, kl_mode="loss"),
    "dapo": lambda: DAPOObjective(group_size=3),
    "dapo_kl": lambda: DAPOObjective(group_size=3, kl_coef=0.2, kl_mode="loss", kl_estimator="k1"),
    "reinforce_pp": lambda: ReinforcePPObjective(group_size=3),
    "reinforce_pp_baseline": lambda: ReinforcePPObjective(group_size=3, baseline=True, kl_mode="loss"),
    "ppo_clip": lambda: PPOClipObjective(group_size=3, kl_coef=0.1, kl_mode="loss"),
}


@pytest.mark.parametrize("key", sorted(OBJECTIVES))
def test_micro_batch_invariance(key):
    obj = OBJECTIVES[key]()
    torch.manual_seed(1)
    n, width = 12, 7  # 4 prompts x G=3, one zero-variance group
    rewards = T([1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.2, 0.0, 1.0, 0.0, 0.0])
    lengths = torch.randint(1, width + 1, (n,))
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    params = (-torch.rand(n, width) * 2).requires_grad_(True)
    old = params.detach() + 0.3 * torch.randn(n, width)  # ratios spread across both clip edges
    ref = params.detach() + 0.3 * torch.randn(n, width)
    entropy = torch.rand(n, width)
    prep = obj.prepare(rewards, mask, old_logp=old, ref_logp=ref, max_length=9)

    def grads(sizes):
        params.grad = None
        totals: dict[str, float] = {}
        start = 0
        for size in sizes:
            idx = slice(start, start + size)
            loss, stats = obj.loss(
                params[idx],
                old[idx],
                ref[idx],
                prep.advantages[idx],
                prep.mask[idx],
                prep.norm,
                entropy=entropy[idx],
            )
            loss.backward()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            start += size
        assert start == n
        return params.grad.clone(), totals

    full, full_stats = grads([n])
    assert full.abs().sum() > 0
    if obj.clip_eps_low > 0:  # the case exercises clipping on both sides
        assert full_stats["clip_frac_low"] > 0 and full_stats["clip_frac_high"] > 0
    for size in (1, 2, 3):
        g, s = grads([size] * (n // size))
        assert torch.allclose(g, full, atol=1e-6, rtol=0), (size, (g - full).abs().max())
        assert all(abs(s[k] - full_stats[k]) < 1e-5 for k in full_stats)
    g, _ = grads([5, 1, 6])  # uneven split
    assert torch.allclose(g, full, atol=1e-6, rtol=0)


# --- expert iteration ------------------------------------------------------------------------


def test_select_for_sft():
    pids = ["a", "a", "a", "b", "b", "c", "a"]
    correct = [True, False, True, False, False, True, True]
    lengths = [30, 5, 12, 3, 4, 7, 12]
    assert select_for_sft(pids, correct, lengths, "all") == [0, 2, 5, 6]
    assert select_for_sft(pids, correct, lengths, "shortest") == [2, 5]  # tie 12/12: first sampled
    ei = ExpertIterationObjective(rounds=2, samples_per_problem=4, keep="all")
    assert ei.select(pids, correct, lengths) == [0, 2, 5, 6] and ei.group_size == 4
    with pytest.raises(ValueError, match="keep"):
        select_for_sft(pids, correct, lengths, "longest")
    with pytest.raises(ValueError, match="differ"):
        select_for_sft(pids, correct[:3], lengths)


@pytest.mark.parametrize("target, kwargs, ok", [
    ("grpo.GRPOObjective", {}, False), ("dr_grpo.DrGRPOObjective", {}, False), ("dapo.DAPOObjective", {}, False),
    ("ppo_clip.PPOClipObjective", {}, False), ("rloo.RLOOObjective", {}, False),
    ("reinforce.ReinforceObjective", {"baseline": True}, False),
    ("reinforce.ReinforceObjective", {"baseline": False}, True), ("reinforce_pp.ReinforcePPObjective", {}, True),
])
def test_group_baselines_need_two_samples_per_prompt(target, kwargs, ok):
    import importlib

    module, cls = target.split(".")
    objective = getattr(importlib.import_module(f"metacot.rl.objectives.{module}"), cls)
    if ok:
        assert objective(group_size=1, **kwargs).group_size == 1
    else:
        with pytest.raises(ValueError, match="needs algo.group_size >= 2, got 1"):
            objective(group_size=1, **kwargs)
