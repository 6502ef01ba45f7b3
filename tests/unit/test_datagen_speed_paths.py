"""The datagen fast paths give exactly what the plain paths give: counting while rendering, stats
counted during the DFS, shared events, the record writer, the lazily seeded RNG and Countdown's
caches. (Speed itself is measured by scripts/bench_datagen.py, never asserted here.)"""

from __future__ import annotations

import copy
import json
import pickle
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from metacot.config import build
from metacot.data import shards
from metacot.data.options import DataOptions
from metacot.data.shards import _dumps, json_record
from metacot.data.tokenizer import TokenCounter, make_tokenizer
from metacot.linearization.sos import SoSLinearization
from metacot.search.base import LazyRandom
from metacot.search.dfs import DFSSearch
from metacot.search.trace import DEAD_END, EXPAND, GOAL, SearchTrace, TraceEvent, search_stats, shared_event
from metacot.tasks import countdown_solver
from metacot.tasks.base import Task
from metacot.tasks.countdown import CountdownTask
from tests.unit.toy_tasks import GraphTask

CONF = Path(__file__).resolve().parents[2] / "conf"
SOS4 = ["task.num_count=4", "task.max_number=99"]
# (task, search, overrides): the headline case, its variants, and searches/tasks with other shapes
CASES = [
    ("countdown", "dfs", [*SOS4, "search.prune_threshold=target"]),
    ("countdown", "dfs", [*SOS4, "task.heuristic=mult", "search.max_expansions=40"]),
    ("countdown", "dfs", ["search.shuffle=true", "search.closed_set=true"]),
    ("countdown", "bfs", []),
    ("maze", "dfs", []),
    ("maze", "astar", ["search.shuffle=true"]),
    ("maze", "mcts", []),
]


def engine(task: str, search: str, overrides: list[str], lin: str = "sos"):
    cfg = OmegaConf.create({"task": OmegaConf.load(CONF / "task" / f"{task}.yaml"),
                            "search": OmegaConf.load(CONF / "search" / f"{search}.yaml"),
                            "linearization": OmegaConf.load(CONF / "linearization" / f"{lin}.yaml")})
    cfg.merge_with_dotlist(overrides)
    return build(cfg.task), build(cfg.search), build(cfg.linearization)


def traces(task, search, n: int, seed: int = 0):
    problems = task.sample_problems("train", n, seed)
    return [(p, search.run(task, p, seed + i)) for i, p in enumerate(problems)]


# --- counting while rendering ------------------------------------------------------------------
@pytest.mark.parametrize("numbers", ["words", "digits"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{len(c[2])}")
def test_render_counted_is_render_and_exact_counts(case, numbers):
    task, search, lin = engine(*case)
    hf = make_tokenizer(task, lin, numbers)
    counter = TokenCounter(hf)
    for k, (problem, trace) in enumerate(traces(task, search, 60)):
        prompt, completion, n_prompt, n_trace = lin.render_counted(task, problem, trace, counter)
        assert (prompt, completion) == lin.render(task, problem, trace)
        assert (n_prompt, n_trace) == (counter.count(prompt), counter.count(completion))
        if k < 15:  # the tokenizer itself, the ground truth (slow)
            assert n_trace == len(hf(completion, add_special_tokens=False)["input_ids"])


def test_render_counted_default_and_with_dropping():
    task, search, _ = engine("countdown", "dfs", [])
    for name in ("compact", "metacot", "searchformer", "dualformer"):
        _, _, lin = engine("countdown", "dfs", [], lin=name)
        counter = TokenCounter(make_tokenizer(task, lin))
        for problem, trace in traces(task, search, 5):
            prompt, completion = lin.render(task, problem, trace)
            assert lin.render_counted(task, problem, trace, counter) == (
                prompt, completion, counter.count(prompt), counter.count(completion))


def test_count_within_falls_back_to_count_on_anything_unusual():
    task = CountdownTask(num_count=4, max_number=99)
    lin = SoSLinearization()
    counter = TokenCounter(make_tokenizer(task, lin))  # words: 0..9801 are one token each
    kw = lin.words
    cases = [
        ("explore 5 + 7 = 12 -> 12\nno solution", ["5 + 7 = 12", "12"]),
        ("current state 99999 3", ["99999 3"]),  # beyond the alphabet: several pieces
        ("current state 3  4", ["3  4"]),  # a double space inside a fragment
        ("current state \t3", ["\t3"]),
        ("current state é", ["é"]),
        ("current state ", [""]),  # an empty fragment leaves an edge space
        ("", []),
        ("answer\nend", []),
    ]
    for text, fragments in cases:
        assert counter.count_within(text, fragments, kw) == counter.count(text), text
    assert "5 + 7 = 12" in counter._whole_fragments and "99999 3" not in counter._whole_fragments
    assert counter.count_within("5 + 7 = 12\n12", ["5 + 7 = 12", "12"]) == 7  # no keywords
    for _ in range(300):  # fragments that keep failing pause the check: the counts stay exact
        assert counter.count_within("current state 99999 3", ["99999 3"], kw) == counter.count("current state 99999 3")
    assert counter._pause > 0
    for text, fragments in cases:
        assert counter.count_within(text, fragments, kw) == counter.count(text), text
    digits = TokenCounter(make_tokenizer(task, lin, "digits"))  # "12", "10".."63" are not whole
    text = "move to # 0 12\ncurrent state 3 12"
    assert digits.count_within(text, ["3 12"], kw) == digits.count(text) == 12  # "12": 1, ##2


# --- stats counted by the DFS --------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), closed=st.booleans(), shuffle=st.booleans(),
       depth=st.sampled_from([None, 1, 2, 5]), budget=st.sampled_from([1, 3, 10_000]),
       threshold=st.sampled_from([None, 1.0, 4.0]))
def test_dfs_stats_are_a_pass_over_its_events(seed, closed, shuffle, depth, budget, threshold):
    task = GraphTask(num_nodes=9, edge_prob=0.45, heuristic="noisy")
    problem = task.make_problem(seed)
    dfs = DFSSearch(closed_set=closed, shuffle=shuffle, max_depth=depth, max_expansions=budget,
                    prune_threshold=threshold)
    trace = dfs.run(task, problem, seed)
    assert trace.stats() == search_stats(trace.events)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] == "dfs"], ids=lambda c: f"{c[0]}-{len(c[2])}")
def test_dfs_stats_on_tasks_and_forgotten_when_events_change(case):
    task, search, _ = engine(*case)
    for _, trace in traces(task, search, 40):
        assert trace.stats() == search_stats(trace.events)
    trace.events.append(TraceEvent(EXPAND, 0))  # no longer what the search counted
    assert trace.stats() == search_stats(trace.events)
    trace.events = trace.events[:3]
    assert trace.stats() == search_stats(trace.events)


# --- shared events -------------------------------------------------------------------------------
def test_shared_events_equal_fresh_ones_and_cannot_change():
    for kind in (EXPAND, DEAD_END, GOAL):
        e = shared_event(kind, 7)
        assert e == TraceEvent(kind, 7) and TraceEvent(kind, 7) == e
        assert e != TraceEvent(kind, 8) and e != TraceEvent(kind, 7, state=(1,))
        assert repr(e) == repr(TraceEvent(kind, 7)) and e.to_dict() == {"kind": kind, "node": 7}
        assert copy.deepcopy(e) is e and pickle.loads(pickle.dumps(e)) is e
        with pytest.raises(AttributeError, match="immutable"):
            e.state = (1, 2)
    assert shared_event(EXPAND, 10**6) == TraceEvent(EXPAND, 10**6)  # beyond the shared range


def test_dfs_traces_round_trip_and_copy():
    task, search, _ = engine(*CASES[0])
    for _, trace in traces(task, search, 10):
        assert SearchTrace.from_json(trace.to_json()) == trace
        assert copy.deepcopy(trace) == trace and copy.deepcopy(trace).stats() == trace.stats()


# --- the record writer ---------------------------------------------------------------------------
TEXT = st.lists(st.sampled_from([*'ab 9\n"\\\t\x00\x7fé\u2028', '"completion":""']), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, prompt=TEXT, where=st.integers(0, 4), drop=st.booleans())
def test_json_record_is_json_dumps(text, prompt, where, drop):
    items = [("id", 3), ("prompt", prompt), ("problem", {"completion": "", "n": [1, 2]}), ("stats", {"a": 1})]
    items.insert(where, ("completion", text))
    record = dict(items)
    if drop:
        del record["completion"]
    assert json_record(record) == json.dumps(record, separators=(",", ":")).encode()


def test_shard_records_are_the_plain_paths_records(tmp_path):
    """render_shard (render_counted, count_within, json_record) against render + count + json.dumps."""
    task, search, lin = engine(*CASES[0])
    options = DataOptions(train=30, val=0, test_unseen=0, keep_unsolved=True, overlong="keep")
    make_tokenizer(task, lin).save_pretrained(str(tmp_path / "tok"))
    shards.init_worker(task, search, lin, str(tmp_path / "tok" / "tokenizer.json"), options, str(tmp_path))
    try:
        problems = task.sample_problems("train", 30, 5)
        res = shards.render_shard(("train", 0, "s.jsonl", 100, problems))
    finally:
        shards._STATE.clear()
    counter = TokenCounter(Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json")))
    expected = []
    for i, (problem, optimal) in enumerate(zip(problems, task.optimal_lengths(problems), strict=True), start=100):
        trace = search.run(task, problem, shards.derive_seed(options.seed, "train", i, 0))
        prompt, completion = lin.render(task, problem, trace)
        expected.append(json.dumps({
            "id": i, "prompt": prompt, "completion": completion, "problem": problem, "solved": trace.solved,
            "solution_length": len(trace.solution) if trace.solved else None, "optimal_length": optimal,
            "trace_tokens": counter.count(completion), "prompt_tokens": counter.count(prompt),
            "stats": search_stats(trace.events)}, separators=(",", ":")))
    assert (tmp_path / "s.jsonl").read_text() == "\n".join(expected) + "\n" and res.records == 30


def test_derive_seed_is_the_json_blake2b_seed():
    import hashlib
    for parts in [(0, "train", 12, 0), (7,), ("é", None, 1.5, [1, "a"]), ()]:
        blob = json.dumps(parts, separators=(",", ":")).encode()
        assert shards.derive_seed(*parts) == int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 1
    assert _dumps((1, "a")) == "[1,\"a\"]"


# --- the lazily seeded RNG -----------------------------------------------------------------------
def test_lazy_random_draws_what_random_draws():
    lazy, plain = LazyRandom(11), random.Random(11)
    xs, ys = list(range(30)), list(range(30))
    lazy.shuffle(xs)
    plain.shuffle(ys)
    assert xs == ys
    assert [lazy.random() for _ in range(5)] == [plain.random() for _ in range(5)]
    assert lazy.choices(range(9), k=6) == plain.choices(range(9), k=6) and lazy.getstate() == plain.getstate()
    assert copy.deepcopy(lazy).random() == copy.deepcopy(plain).random()
    assert pickle.loads(pickle.dumps(LazyRandom(3))).random() == random.Random(3).random()
    with pytest.raises(AttributeError):
        lazy._randbelow  # noqa: B018  (private names are not forwarded)


# --- Countdown's caches --------------------------------------------------------------------------
class PlainScoring(CountdownTask):
    scored_successors = Task.scored_successors


@pytest.mark.parametrize("heuristic", ["sum", "mult"])
def test_countdown_caches_restart_without_changing_results(monkeypatch, heuristic):
    monkeypatch.setattr(countdown_solver, "MOVES_CACHE", 7)  # restarts every few pairs
    monkeypatch.setattr("metacot.tasks.countdown.TEXT_CACHE", 5)
    kw = {"num_count": 4, "max_number": 30, "heuristic": heuristic}
    fused, plain = CountdownTask(**kw), PlainScoring(**kw)
    rng = random.Random(heuristic)
    for _ in range(300):
        state = tuple(sorted(rng.randint(0, 30) for _ in range(rng.randint(1, 4))))
        problem = {"target": rng.randint(1, 60), "numbers": list(state)}
        max_h = rng.choice([float("inf"), 3.0, 12.0])
        assert fused.scored_successors(problem, state, max_h) == [
            r for r in plain.scored_successors(problem, state) if r[0] <= max_h]
        assert fused.state_text(problem, state) == " ".join(map(str, state))
    assert len(countdown_solver._MOVES) <= 7
    assert fused.state_text({}, [3, 4]) == "3 4"  # an unhashable state is written, not remembered
