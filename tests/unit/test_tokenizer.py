"""The word-level tokenizer: ids of special tokens, words vs digits, HF loading, round trips on
fuzzed text and on real renders of every format, and the fast exact token counter."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from metacot.data.tokenizer import (
    SPECIAL_TOKENS,
    TokenCounter,
    build_tokenizer,
    load_tokenizer,
    make_tokenizer,
    normalize_text,
    vocabulary,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
ALPHABET = [str(i) for i in range(100)] + ["+", "-", "*", "/", "=", "3,4", "10,2", "c12"]
KEYWORDS = ["create", "close", "plan", "goal", "State:", "->"]


def ids(tok, text):
    return tok(text, add_special_tokens=True)["input_ids"]


def test_special_tokens_and_newline():
    tok = build_tokenizer(ALPHABET + KEYWORDS)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens(ids(tok, "create\nclose")) == ["create", "\n", "close"]
    # encoding adds nothing: a training sequence is <s> prompt completion </s>, added by the caller
    assert ids(tok, "") == []


def test_words_mode_one_token_per_alphabet_word():
    tok = build_tokenizer(ALPHABET + KEYWORDS, numbers="words")
    assert tok.convert_ids_to_tokens(ids(tok, "create 3,4 c12 99 + 7")) == ["create", "3,4", "c12", "99", "+", "7"]
    # a number beyond the alphabet splits greedily into known pieces, and decodes back
    assert tok.convert_ids_to_tokens(ids(tok, "12345")) == ["12", "##3", "##4", "##5"]
    assert tok.decode(ids(tok, "12345")) == "12345"
    assert tok.unk_token_id not in ids(tok, "12345 zebra_9 @!")


def test_digits_mode_spells_out_numbers_and_cells():
    tok = build_tokenizer(ALPHABET + KEYWORDS, numbers="digits")
    pieces = tok.convert_ids_to_tokens(ids(tok, "create 3,4 c12 99 + 7"))
    assert pieces == ["create", "3", "##,", "##4", "c", "##1", "##2", "9", "##9", "+", "7"]
    vocab = set(vocabulary(ALPHABET + KEYWORDS, "digits"))
    assert not any(len(w) > 1 and any(c.isdigit() for c in w) and not w.startswith("##") for w in vocab)
    assert len(build_tokenizer(ALPHABET, "digits")) < len(build_tokenizer(ALPHABET, "words"))


def test_vocabulary_is_deterministic_and_rejects_bad_mode():
    assert vocabulary(ALPHABET + KEYWORDS) == vocabulary(list(ALPHABET + KEYWORDS))
    assert vocabulary(["a b", "b"]) == vocabulary(["a", "b"])  # words with spaces are several words
    with pytest.raises(ValueError, match="numbers"):
        vocabulary(ALPHABET, numbers="bytes")


@pytest.mark.parametrize("numbers", ["words", "digits"])
def test_saved_directory_loads_with_both_hf_classes(tmp_path, numbers):
    tok = build_tokenizer(ALPHABET + KEYWORDS, numbers=numbers, model_max_length=512)
    tok.save_pretrained(str(tmp_path))
    text = "State: 3,4 -> 10,2\ncreate 3,4 c12 c0\nplan 123"
    for loaded in (PreTrainedTokenizerFast.from_pretrained(str(tmp_path)),
                   AutoTokenizer.from_pretrained(str(tmp_path)), load_tokenizer(tmp_path)):
        assert ids(loaded, text) == ids(tok, text)
        assert (loaded.pad_token_id, loaded.eos_token_id, loaded.model_max_length) == (0, 2, 512)
        assert normalize_text(loaded.decode(ids(loaded, text))) == normalize_text(text)


def test_make_tokenizer_from_a_local_path(tmp_path):
    class Source:  # only alphabet()/keywords()/task_keywords() are used
        def alphabet(self):
            return ["zz", "yy"]

        def keywords(self):
            return ["ww"]

        def task_keywords(self, task):
            return []

    built = make_tokenizer(Source(), Source(), "words")
    assert built.convert_ids_to_tokens(ids(built, "zz ww")) == ["zz", "ww"]
    build_tokenizer(["pretrained_word"]).save_pretrained(str(tmp_path))
    loaded = make_tokenizer(Source(), Source(), "words", path=str(tmp_path))
    assert loaded.convert_ids_to_tokens(ids(loaded, "pretrained_word")) == ["pretrained_word"]
    with pytest.raises(FileNotFoundError, match="data.tokenizer.path"):
        make_tokenizer(Source(), Source(), path=str(tmp_path / "missing"))


def test_normalize_text():
    assert normalize_text("a  b \n  c\t d \n") == "a b\nc d\n"
    assert normalize_text(" x ") == "x"


WORD = st.one_of(st.sampled_from(ALPHABET + KEYWORDS),
                 st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, min_size=1, max_size=8),
                 st.integers(0, 10**9).map(str))
SPACE = st.sampled_from([" ", "  ", "\n", " \n ", "\t", "\n\n", "\r", "\x0b", "\x1c"])


@st.composite
def texts(draw):
    words = draw(st.lists(WORD, max_size=30))
    out = draw(st.sampled_from(["", " ", "\n"]))
    for w in words:
        out += w + draw(SPACE)
    return out


@pytest.mark.parametrize("numbers", ["words", "digits"])
@settings(max_examples=120, deadline=None)
@given(text=texts())
def test_round_trip_fuzz_and_counter(numbers, text):
    assume(not any(special in text for special in SPECIAL_TOKENS))  # HF matches these in raw text
    tok = _tokenizer(numbers)
    enc = ids(tok, text)
    assert tok.unk_token_id not in enc
    assert normalize_text(tok.decode(enc)) == normalize_text(text)
    assert _counter(numbers).count(text) == len(enc)


def test_counter_agrees_with_encode_on_unicode_and_other_tokenizers():
    tok = _tokenizer("words")
    counter = TokenCounter(tok)
    assert counter.word_level
    for text in ["é 3,4\n\u00a0x", "plan 3,4\u2028 5", "ünïcödé"]:
        assert counter.count(text) == len(ids(tok, text))
    bpe = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2, "[UNK]": 3}, merges=[("a", "b")], unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    other = TokenCounter(bpe)
    assert not other.word_level
    assert other.count_batch(["ab a b", "abab"]) == [3, 2]


_CACHE: dict = {}


def _counter(numbers):
    if ("counter", numbers) not in _CACHE:
        _CACHE["counter", numbers] = TokenCounter(_tokenizer(numbers))
    return _CACHE["counter", numbers]


def _tokenizer(numbers):
    if numbers not in _CACHE:
        _CACHE[numbers] = build_tokenizer(ALPHABET + KEYWORDS, numbers=numbers)
    return _CACHE[numbers]


# --- real renders of every format ----------------------------------------------------------------

def _real_engines():
    """(task, search, linearization) options that exist in conf/ (the trace engine is others' work)."""
    tasks = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
    lins = sorted(p.stem for p in (CONF / "linearization").glob("*.yaml"))
    search = {"countdown": "dfs", "maze": "astar"}
    return [(t, search.get(t, "bfs"), lin) for t in tasks for lin in lins]


REAL = _real_engines()


@pytest.mark.parametrize(("task", "search", "lin"), REAL, ids=["-".join(r) for r in REAL])
@pytest.mark.parametrize("numbers", ["words", "digits"])
def test_real_renders_round_trip_without_unk(task, search, lin, numbers):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    task_obj, search_obj, lin_obj = (instantiate(OmegaConf.load(CONF / group / f"{option}.yaml"), _convert_="all")
                                     for group, option in (("task", task), ("search", search), ("linearization", lin)))
    tok = make_tokenizer(task_obj, lin_obj, numbers)
    counter = TokenCounter(tok)
    problems = task_obj.sample_problems("train", 4, seed=1) + task_obj.sample_problems("test_unseen", 2, seed=1)
    assert problems
    for problem in problems:
        trace = search_obj.run(task_obj, problem, seed=0)
        for text in lin_obj.render(task_obj, problem, trace):
            enc = ids(tok, text)
            assert tok.unk_token_id not in enc, tok.convert_ids_to_tokens(enc)
            assert normalize_text(tok.decode(enc)) == normalize_text(text)
            assert counter.count(text) == len(enc)
    if numbers == "words":  # every alphabet word is one token
        words = [w for w in task_obj.alphabet() if w.strip() and " " not in w]
        assert all(len(ids(tok, w)) == 1 for w in words[:500])
