"""Model factories: sizes, special ids, SDPA, context length, FLOPs, and local pretrained loading."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2LMHeadModel, LlamaForCausalLM, PreTrainedTokenizerFast

from metacot.models import GPT2Factory, LlamaFactory, PretrainedFactory, flops_per_token, num_parameters

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def make_tokenizer(n_words: int) -> PreTrainedTokenizerFast:
    vocab = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(n_words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def factory(option: str):
    return instantiate(OmegaConf.load(CONF / f"{option}.yaml"))


def meta_build(option: str, tokenizer, max_seq_len: int = 1024):
    """Build on the meta device: parameter shapes without allocating (or initialising) weights."""
    with torch.device("meta"):
        return factory(option).build(tokenizer, max_seq_len)


@pytest.mark.parametrize("option", ["tiny", "small", "base", "gpt2", "pretrained"])
def test_option_instantiates_with_its_name(option):
    assert factory(option).name == option


@pytest.mark.parametrize(
    "option, low, high",
    [("tiny", 0.3e6, 2e6), ("small", 20e6, 30e6), ("base", 85e6, 125e6), ("gpt2", 2e6, 15e6)],
)
def test_sizes(option, low, high):
    model = meta_build(option, make_tokenizer(996))
    assert low <= num_parameters(model) <= high


@pytest.mark.parametrize("option, cls", [("tiny", LlamaForCausalLM), ("gpt2", GPT2LMHeadModel)])
def test_vocab_special_ids_sdpa_and_context(option, cls):
    tok = make_tokenizer(300)
    model = factory(option).build(tok, max_seq_len=777)
    cfg = model.config
    assert isinstance(model, cls)
    assert cfg.vocab_size == len(tok) == 304
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert cfg._attn_implementation == "sdpa"
    assert (getattr(cfg, "max_position_embeddings", None) or cfg.n_positions) >= 777
    logits = model(torch.randint(0, len(tok), (2, 9))).logits
    assert logits.shape == (2, 9, len(tok))


def test_tiny_ties_embeddings():
    model = factory("tiny").build(make_tokenizer(100), 64)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_parameter_count_and_flops_by_hand():
    tok = make_tokenizer(96)  # V = 100
    model = LlamaFactory(d_model=16, n_layers=2, n_heads=2, d_ff=48, tie_embeddings=True).build(tok, 32)
    per_layer = 4 * 16 * 16 + 3 * 16 * 48 + 2 * 16  # q,k,v,o + gate,up,down + two RMSNorm weights
    body = 2 * per_layer + 16  # + final norm
    assert num_parameters(model, exclude_embeddings=True) == body
    assert num_parameters(model) == body + 100 * 16  # the tied table counts once
    # The tied table still does the output matmul: 6 (body + V d) + 12 L d T.
    assert flops_per_token(model, seq_len=32) == 6 * (body + 1600) + 12 * 2 * 16 * 32

    untied = LlamaFactory(d_model=16, n_layers=2, n_heads=2, d_ff=48, tie_embeddings=False).build(tok, 32)
    assert num_parameters(untied) == body + 2 * 1600
    assert flops_per_token(untied, seq_len=32) == flops_per_token(model, seq_len=32)


def test_gpt2_flops_skip_position_table():
    tok = make_tokenizer(96)
    model = GPT2Factory(d_model=16, n_layers=1, n_heads=2).build(tok, 40)
    assert num_parameters(model) - num_parameters(model, exclude_embeddings=True) == 100 * 16 + 40 * 16
    n_matmul = num_parameters(model, exclude_embeddings=True) + 100 * 16
    assert flops_per_token(model, seq_len=8) == 6 * n_matmul + 12 * 1 * 16 * 8


def test_llama_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        LlamaFactory(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        LlamaFactory(d_model=128, n_heads=4, n_kv_heads=3)


@pytest.mark.parametrize("factory", [LlamaFactory, GPT2Factory])
@pytest.mark.parametrize("bad, match", [({"n_layers": 0}, "model.n_layers must be an integer >= 1"),
                                        ({"d_model": -8}, "model.d_model"), ({"n_heads": 2.5}, "model.n_heads"),
                                        ({"dropout": 1.0}, r"model.dropout must be in \[0, 1\)")])
def test_bad_sizes_are_refused_with_the_option_named(factory, bad, match):
    with pytest.raises(ValueError, match=match):
        factory(**bad)


@pytest.fixture
def saved_model(tmp_path):
    tok = make_tokenizer(50)
    torch.manual_seed(0)
    model = GPT2Factory(d_model=32, n_layers=2, n_heads=2).build(tok, 64).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path, model, tok


def test_pretrained_loads_model_and_tokenizer(saved_model):
    path, original, tok = saved_model
    fac = PretrainedFactory(path=str(path))
    loaded_tok = fac.load_tokenizer()
    assert loaded_tok.get_vocab() == tok.get_vocab()
    assert loaded_tok.eos_token_id == tok.eos_token_id
    model = fac.build(loaded_tok, max_seq_len=64).eval()
    assert model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[1, 5, 9, 7]])
    torch.testing.assert_close(model(ids).logits, original(ids).logits)


def test_pretrained_context_too_short(saved_model):
    path, _, tok = saved_model
    with pytest.raises(ValueError, match="at most 64 positions"):
        PretrainedFactory(path=str(path)).build(tok, max_seq_len=65)


def test_pretrained_grows_embeddings_for_a_larger_tokenizer(saved_model):
    path, _, _ = saved_model
    model = PretrainedFactory(path=str(path)).build(make_tokenizer(60), max_seq_len=64)
    assert model.get_input_embeddings().num_embeddings == 64


def test_pretrained_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match=r"model\.path="):
        PretrainedFactory().build(make_tokenizer(5), 16)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        PretrainedFactory(path=str(tmp_path / "missing")).build(make_tokenizer(5), 16)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        PretrainedFactory(path=str(tmp_path)).load_tokenizer()


def test_pretrained_takes_pad_id_from_tokenizer(tmp_path):
    tok = make_tokenizer(20)
    model = GPT2Factory(d_model=16, n_layers=1, n_heads=2).build(tok, 32)
    model.config.pad_token_id = None
    model.save_pretrained(tmp_path)
    assert PretrainedFactory(path=str(tmp_path)).build(tok, 32).config.pad_token_id == 0  # not eos (2)


def test_pretrained_model_is_in_train_mode_like_a_built_one(saved_model):
    """from_pretrained returns eval mode; SFT must fine-tune with the checkpoint's dropout on (and
    Lightning warns about modules in eval mode at the start of training)."""
    path, _, tok = saved_model
    built = GPT2Factory(d_model=32, n_layers=2, n_heads=2).build(tok, 64)
    loaded = PretrainedFactory(path=str(path)).build(tok, max_seq_len=64)
    assert built.training and all(m.training for m in built.modules())
    assert loaded.training and all(m.training for m in loaded.modules())
