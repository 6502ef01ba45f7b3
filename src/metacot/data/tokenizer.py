"""A word-level tokenizer built from the task's alphabet and the format's keywords.

Traces are whitespace-separated words, one event per line, so the vocabulary is known before any
data exists: every word the task and the format can write, plus `\\n`, plus one piece per
character (word-start `c` and continuation `##c`) so any other word still encodes without
`<unk>`. It is a WordPiece model: a word in the vocabulary is one token, anything else splits
greedily into the longest known pieces (a number beyond the alphabet splits into digits).

`numbers="digits"` leaves every multi-character word that holds a digit out of the vocabulary,
so numbers and cells (`37`, `3,4`, `c12`) are spelled out character by character.

Saved as a Hugging Face tokenizer directory (`AutoTokenizer.from_pretrained(dir)` loads it).
Encoding adds no special tokens; a training sequence is `<s> prompt completion </s>`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order
NEWLINE = "\n"
PREFIX = "##"  # WordPiece continuation prefix
NUMBER_MODES = ("words", "digits")
FRAGMENT_CACHE = 1 << 18  # fragments count_within remembers (~25 MB); the cache restarts when full
# Every non-newline character Python's str.split() treats as whitespace in ASCII text, so that
# TokenCounter's split() agrees exactly with the tokenizer's pre-tokenizer.
_SPACE = r"(?:[^\S\n]|[\x1c-\x1f])+"
_BASE_CHARS = [c for c in string.printable if not c.isspace()]


def vocabulary(words: Iterable[str], numbers: str = "words") -> list[str]:
    """Tokens in id order: specials, newline, single characters, continuation pieces, words."""
    if numbers not in NUMBER_MODES:
        raise ValueError(f"tokenizer numbers must be one of {NUMBER_MODES}, got {numbers!r}")
    pieces = [w for word in words for w in str(word).split()]  # a "word" with spaces is several
    chars = sorted(set(_BASE_CHARS).union(*(set(w) for w in pieces)))
    tokens = [*SPECIAL_TOKENS, NEWLINE, *chars, *(PREFIX + c for c in chars)]
    seen = set(tokens)
    for w in pieces:
        if w in seen or (numbers == "digits" and len(w) > 1 and any(c.isdigit() for c in w)):
            continue
        seen.add(w)
        tokens.append(w)
    return tokens


def build_tokenizer(words: Iterable[str], numbers: str = "words",
                    model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer whose vocabulary is `vocabulary(words, numbers)`."""
    vocab = {tok: i for i, tok in enumerate(vocabulary(words, numbers))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100_000))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPACE), behavior="removed"),
        pre_tokenizers.Split(NEWLINE, behavior="isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix=PREFIX, cleanup=False)
    kwargs: dict[str, Any] = {}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        clean_up_tokenization_spaces=False, **kwargs,
    )


def task_words(task: Any, linearization: Any) -> list[str]:
    """The words a (task, format) pair can write: the vocabulary's source, no data needed."""
    return [*task.alphabet(), *linearization.keywords(), *linearization.task_keywords(task)]


def make_tokenizer(task: Any, linearization: Any, numbers: str = "words", path: str | None = None,
                   model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """Build the task/format tokenizer, or load a pretrained one from the local `path`."""
    if path is not None:
        return load_tokenizer(path)
    return build_tokenizer(task_words(task, linearization), numbers, model_max_length)


def load_tokenizer_dir(path: str | Path) -> Path:
    """`path` if it is a Hugging Face tokenizer directory, else a FileNotFoundError saying what to do."""
    path = Path(path).expanduser()
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer at {path} (expected a Hugging Face tokenizer directory with tokenizer.json); "
            "set data.tokenizer.path to such a directory, or null to build one from the task"
        )
    return path


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast.from_pretrained(str(load_tokenizer_dir(path)))
    if tok.pad_token is None:  # many pretrained causal-LM tokenizers have no pad token
        tok.pad_token = tok.eos_token
    return tok


def normalize_text(text: str) -> str:
    """Text modulo the whitespace a decode may change: runs of spaces collapse, none around newlines."""
    text = re.sub(r"[^\S\n]+", " ", text)
    return re.sub(r" ?\n ?", "\n", text).strip(" ")


class TokenCounter:
    """Counts tokens fast and exactly. For a tokenizer built here a text's count is the sum of its
    words' piece counts plus its newlines, and words repeat a lot, so a per-word cache (filled by
    the same greedy longest-match WordPiece runs) replaces the much slower full encode. Most texts
    hold vocabulary words only (one token each: the greedy match takes a whole vocabulary word
    first), which one C-level set check confirms, so their count is just words + newlines. Other
    tokenizers are encoded in batches."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast | Tokenizer):
        self.backend = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else tokenizer
        self.word_level = _is_word_level(self.backend)
        if self.word_level:
            self._pieces: dict[str, int] = _PieceCache(self.backend)
            self._whole = self._pieces.vocab  # words that are one token each
            self._whole_fragments: set[str] = set()  # texts seen made of whole words only (count_within)
            self._keywords_checked: dict[tuple[str, ...], bool] = {}  # keyword tuples: all clean?
            self._failures = self._pause = 0  # count_within: fallbacks in a row, calls left to skip

    def count(self, text: str) -> int:
        if self.word_level and text.isascii():
            words = text.split()
            if self._whole.issuperset(words):
                return len(words) + text.count(NEWLINE)
            return sum(map(self._pieces.__getitem__, words)) + text.count(NEWLINE)
        return len(self.backend.encode(text, add_special_tokens=False).ids)

    def count_within(self, text: str, fragments: Iterable[str], keywords: tuple[str, ...] = ()) -> int:
        """`count(text)` for a text that is `fragments` and `keywords` joined by single spaces and
        newlines (each used any number of times: a format passes the task texts it wrote, and its
        keywords, a tuple checked once). When every fragment is printable ASCII made of whole
        vocabulary words, single-spaced, the count is words + newlines: two C-level counts instead
        of splitting ~1,600 words. Fragments are checked in bulk and remembered; when they keep
        failing (numbers beyond the vocabulary), the check pauses for a while and `count` runs."""
        if not self.word_level:
            return self.count(text)
        if keywords not in self._keywords_checked:
            self._keywords_checked[keywords] = self._clean(keywords)
        if self._pause or not self._keywords_checked[keywords]:
            self._pause = max(0, self._pause - 1)
            return self.count(text)
        known = self._whole_fragments
        new = [f for f in fragments if f not in known]
        if new:
            if not self._clean(new):
                self._failures += 1
                if self._failures >= 8:  # the fast path rarely applies here: stop trying for a while
                    self._pause, self._failures = 256, 0
                return self.count(text)
            if len(known) + len(new) > FRAGMENT_CACHE:
                known.clear()
            known.update(new)
        self._failures = 0
        raw = text.encode("ascii")  # (ASCII: it is made of ASCII fragments)
        return raw.count(b" ") + 2 * raw.count(b"\n") + 1 if raw else 0  # words = separators + 1

    def _clean(self, fragments: list[str] | tuple[str, ...]) -> bool:
        """Every fragment non-empty printable ASCII, single-spaced, each word one token."""
        if not fragments:
            return True
        joined = " ".join(fragments)
        words = joined.split(" ")  # an empty word: an empty fragment or odd spacing
        return joined.isascii() and joined.isprintable() and all(words) and self._whole.issuperset(words)

    def count_batch(self, texts: list[str]) -> list[int]:
        if self.word_level:
            return [self.count(t) for t in texts]
        return [len(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=False)]


class _PieceCache(dict):
    """word -> number of WordPiece tokens (a whole word that cannot be pieced is one `<unk>`)."""

    MAX_ENTRIES = 1 << 20  # beyond this, words are counted but not remembered

    def __init__(self, backend: Tokenizer):
        super().__init__()
        model = json.loads(backend.to_str())["model"]
        self.vocab = frozenset(model["vocab"])
        self.prefix = model["continuing_subword_prefix"]
        self.max_chars = model["max_input_chars_per_word"]
        self.longest = max(map(len, self.vocab))

    def __missing__(self, word: str) -> int:
        n = self.pieces(word)
        if len(self) < self.MAX_ENTRIES:
            self[word] = n
        return n

    def pieces(self, word: str) -> int:
        if len(word) > self.max_chars:
            return 1
        vocab, prefix, n, start = self.vocab, self.prefix, 0, 0
        while start < len(word):
            for end in range(min(len(word), start + self.longest), start, -1):
                if (word[start:end] if start == 0 else prefix + word[start:end]) in vocab:
                    break
            else:
                return 1  # no piece matches here: HF maps the whole word to <unk>
            n += 1
            start = end
        return n


def _is_word_level(backend: Tokenizer) -> bool:
    """True for tokenizers made by `build_tokenizer` (whose counts decompose over words)."""
    pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    splits = pre.get("pretokenizers") or [{}]
    return (isinstance(backend.model, models.WordPiece) and backend.normalizer is None
            and splits[0].get("pattern") == {"Regex": _SPACE})
