"""Model factories for the `model=` group: `.build(tokenizer, max_seq_len) -> PreTrainedModel`."""

from metacot.models.common import flops_per_token, num_parameters
from metacot.models.gpt2 import GPT2Factory
from metacot.models.llama import LlamaFactory
from metacot.models.pretrained import PretrainedFactory

__all__ = ["GPT2Factory", "LlamaFactory", "PretrainedFactory", "flops_per_token", "num_parameters"]
