"""Batched KV-cache sampling (eval and RL rollouts): `Sampler(model, eos, pad).generate(...)`."""

from metacot.generation.sampler import SampleOutput, Sampler
from metacot.generation.sampling import pick_tokens, top_p_filter

__all__ = ["SampleOutput", "Sampler", "pick_tokens", "top_p_filter"]
