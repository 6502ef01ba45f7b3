"""The evaluator with a fake sampler producing known completions (correct, wrong, illegal,
garbage) gives exact metric values, and never crashes on garbage. Steps are replayed by the
project's `linearization.fidelity.replay`; a fake format and task keep the numbers hand-countable."""

import math
from dataclasses import dataclass

import pytest
import torch

from metacot.eval import evaluator as ev
from metacot.eval.evaluator import EvalOptions, evaluate
from metacot.linearization.base import Linearization, ParsedTrace, ParseError
from metacot.search.trace import GENERATE, TraceEvent
from metacot.tasks.base import Successor, Task

VOCAB = ["<pad>", "<s>", "</s>", "ans", "end", "+1", "+2", "+7", "@@", "#"]
ID = {w: i for i, w in enumerate(VOCAB)}


class LineTask(Task):
    """Walk from 0 to `goal` with steps of +1 or +2."""

    name = "line"

    def sample_problems(self, split, n, seed):
        return [{"goal": g} for g in range(1, n + 1)]

    def initial_state(self, problem):
        return 0

    def successors(self, problem, state):
        return [Successor(a, state + d) for a, d in (("+1", 1), ("+2", 2)) if state + d <= problem["goal"]]

    def is_goal(self, problem, state):
        return state == problem["goal"]

    def heuristic(self, problem, state):
        return (problem["goal"] - state) / 2

    def optimal_length(self, problem):
        return (problem["goal"] + 1) // 2

    def prompt_text(self, problem):
        return f"goal {problem['goal']}"

    def state_text(self, problem, state):
        return str(state)

    def parse_state(self, problem, text):
        return int(text) if text.isdigit() else None


class AnswerLinearization(Linearization):
    """`ans <actions> end`; anything else is an error. Each action is also a claimed search step
    (a node generated from the previous one, its state = the running sum)."""

    name = "answer"

    def render(self, task, problem, trace):
        raise NotImplementedError("not needed here")

    def parse(self, task, problem, text):
        words = text.split()
        if not words or words[0] != "ans":
            return ParsedTrace(errors=[ParseError(0, "no answer section")])
        complete = "end" in words
        answer = words[1 : words.index("end")] if complete else words[1:]
        events, state = [TraceEvent(GENERATE, 0, state=0)], 0
        for k, action in enumerate(answer, start=1):
            state += int(action[1:]) if action[1:].isdigit() else 0
            events.append(TraceEvent(GENERATE, k, parent=k - 1, state=state, action=action))
        return ParsedTrace(events=events, answer=answer, complete=complete,
                           errors=[] if complete else [ParseError(0, "no end")])


class FakeTokenizer:
    eos_token_id, pad_token_id = ID["</s>"], ID["<pad>"]

    def decode(self, ids, skip_special_tokens=False):
        words = [VOCAB[i] if 0 <= i < len(VOCAB) else "<unk>" for i in ids]
        if skip_special_tokens:
            words = [w for w in words if w not in ("<pad>", "<s>", "</s>")]
        return " ".join(words)


def encode_prompt(tokenizer, prompt):
    return [ID["<s>"], 100 + int(prompt.split()[1])]


def ids(text):
    return [ID[w] for w in text.split()]


@dataclass
class Out:
    tokens: list
    finished: list


class FakeSampler:
    """Greedy: one fixed completion per prompt; sampled: a fixed list of n per prompt."""

    def __init__(self, greedy, samples=None):
        self.greedy, self.samples, self.calls = greedy, samples or {}, []

    def generate(self, prompts, max_new_tokens, num_samples=1, temperature=0.0, top_p=1.0, seed=None,
                 batch_size=None):
        self.calls.append(dict(n=len(prompts), max_new_tokens=max_new_tokens, num_samples=num_samples,
                               temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size))
        tokens = []
        for p in prompts:
            goal = p[1] - 100
            outs = [self.greedy[goal]] if temperature == 0 else self.samples[goal]
            assert len(outs) == num_samples
            tokens += outs
        return Out(tokens, [True] * len(tokens))


def record(goal, solved=True, trace_tokens=20, stats=None):
    task = LineTask()
    best = task.optimal_length({"goal": goal})
    return {"prompt": f"goal {goal}", "completion": "", "problem": {"goal": goal}, "solved": solved,
            "solution_length": best if solved else None, "optimal_length": best, "trace_tokens": trace_tokens,
            "stats": stats or {"nodes": 4, "expansions": 2, "backtracks": 0, "max_depth": 2}}


RECORDS = [record(4), record(3, trace_tokens=30), record(2, solved=False), record(5), record(6)]
GREEDY = {
    4: ids("ans +2 +2 end </s>")[:-1],  # correct and optimal: 4 tokens
    3: ids("ans +1 +1 +1 end"),  # correct, length 3 vs l* 2: 5 tokens
    2: ids("ans +1 end"),  # well-formed but wrong: 3 tokens
    5: [ID["@@"], 999, ID["<pad>"], ID["#"], ID["+2"], -5, ID["@@"], ID["#"]],  # garbage: 8 tokens
    6: ids("ans +2 +7 end"),  # well-formed, second step illegal: 4 tokens, 2 of 3 steps valid
}
C, W, G = ids("ans +2 +2 end"), ids("ans +1 end"), [ID["#"], ID["@@"]]
SAMPLES = {  # 4 samples per problem; correct counts 2, 0, 4, 1, 1
    4: [C, W, C, G],
    3: [W, W, G, G],
    2: [ids("ans +2 end"), ids("ans +1 +1 end"), ids("ans +2 end"), ids("ans +1 +1 end")],
    5: [G, ids("ans +1 +2 +2 end"), W, G],
    6: [W, W, ids("ans +2 +2 +2 end"), W],
}


def run(options=None, sampler=None, **kw):
    sampler = sampler or FakeSampler(GREEDY, SAMPLES)
    model = kw.pop("model", None)
    out = evaluate(model, FakeTokenizer(), LineTask(), AnswerLinearization(), kw.pop("records", RECORDS),
                   options, sampler=sampler, encode_prompt=encode_prompt, replay=kw.pop("replay", None))
    return out, sampler


def test_greedy_metrics_are_exact():
    out, sampler = run(EvalOptions(max_new_tokens=33, batch_size=7))
    assert sampler.calls == [dict(n=5, max_new_tokens=33, num_samples=1, temperature=0.0, top_p=1.0, seed=None,
                                  batch_size=7)]
    assert out["num_problems"] == 5
    assert out["solve_rate"] == pytest.approx(2 / 5)
    assert out["optimal_rate"] == pytest.approx(1 / 5)
    assert out["swc"] == pytest.approx((1 + 2 / 3) / 5)
    # ILR: solved problems whose record was solved: 20/4 and 30/5.
    assert out["ilr"] == pytest.approx((20 / 4 + 30 / 5) / 2)
    assert out["tokens_per_problem"] == pytest.approx((4 + 5 + 3 + 8 + 4) / 5)
    assert out["tokens_per_solve"] == pytest.approx(24 / 2)
    # Steps: 3/3, 4/4, 2/2, none (garbage), 2/3 (the +7 step is illegal).
    assert out["fidelity"] == pytest.approx(11 / 12)
    assert out["invalid_format_rate"] == pytest.approx(1 / 5)
    assert out["model_nodes"] == pytest.approx((3 + 4 + 2 + 0 + 3) / 5)
    assert out["model_depth"] == pytest.approx((2 + 3 + 1 + 0 + 2) / 5)
    assert out["model_backtracks"] == 0 and out["model_expansions"] == 0
    assert out["symbolic_solve_rate"] == pytest.approx(4 / 5)
    assert out["symbolic_optimal_rate"] == pytest.approx(4 / 5)
    assert out["symbolic_tokens"] == pytest.approx(110 / 5)
    assert out["symbolic_nodes"] == 4 and out["symbolic_depth"] == 2
    assert not any(k.startswith("pass@") for k in out)
    assert all(isinstance(v, float) for v in out.values())


def test_passk_pass_is_exact():
    out, sampler = run(EvalOptions(num_samples=4, temperature=0.7, top_p=0.9, seed=3))
    assert sampler.calls[1]["num_samples"] == 4
    assert (sampler.calls[1]["temperature"], sampler.calls[1]["top_p"], sampler.calls[1]["seed"]) == (0.7, 0.9, 3)
    assert out["pass@1"] == pytest.approx((2 + 0 + 4 + 1 + 1) / 20)
    assert out["pass@2"] == pytest.approx((5 / 6 + 0 + 1 + 1 / 2 + 1 / 2) / 5)
    assert out["pass@4"] == pytest.approx(4 / 5)
    assert out["solve_rate"] == pytest.approx(2 / 5)  # the greedy numbers are unchanged by sampling


def test_passk_in_chunks_gives_the_same_numbers(monkeypatch):
    whole, _ = run(EvalOptions(num_samples=4, seed=10))
    monkeypatch.setattr(ev, "PASSK_SEQUENCES_PER_CALL", 8)  # two problems per call
    chunked, sampler = run(EvalOptions(num_samples=4, seed=10))
    assert [c["n"] for c in sampler.calls] == [5, 2, 2, 1]
    assert len({c["seed"] for c in sampler.calls[1:]}) == 3  # chunks draw different streams
    assert dict(chunked) == pytest.approx(dict(whole))


def test_examples_rows():
    out, _ = run(EvalOptions(num_examples=3))
    assert len(out.examples) == 3
    assert out.examples[0] == {"prompt": "goal 4", "completion": "ans +2 +2 end", "verdict": "correct, optimal"}
    assert out.examples[1]["verdict"] == "correct, length 3"
    assert out.examples[2]["verdict"].startswith("wrong: ")


def test_n_problems_and_options_from_dict():
    out, sampler = run({"n_problems": 2, "num_samples": 0, "_target_": "ignored"})
    assert out["num_problems"] == 2 and sampler.calls[0]["n"] == 2
    assert out["solve_rate"] == 1.0
    with pytest.raises(ValueError, match="unknown eval options"):
        run({"max_tokens": 3})


class RaisingLinearization(AnswerLinearization):
    def parse(self, task, problem, text):
        if "@@" in text:
            raise RuntimeError("parser bug")
        return super().parse(task, problem, text)


class RaisingTask(LineTask):
    def verify(self, problem, actions):
        if problem["goal"] == 3:
            raise KeyError("verifier bug")
        return super().verify(problem, actions)


def broken_replay(task, problem, parsed, reference_length=None):
    raise ValueError("replay bug")


@pytest.mark.parametrize("replay", [None, broken_replay], ids=["project_replay", "broken_replay"])
def test_never_crashes_on_garbage_or_component_bugs(replay):
    sampler = FakeSampler(GREEDY, SAMPLES)
    out = evaluate(None, FakeTokenizer(), RaisingTask(), RaisingLinearization(), RECORDS,
                   EvalOptions(num_samples=4), sampler=sampler, encode_prompt=encode_prompt, replay=replay)
    assert out["solve_rate"] == pytest.approx(1 / 5)  # only goal 4; goal 3's verifier raised
    assert out["invalid_format_rate"] == pytest.approx(1 / 5)  # the garbage the parser choked on
    assert out["pass@4"] == pytest.approx(4 / 5)  # every goal but 3 keeps a correct sample
    if replay is None:  # goal 3's replay raised (its verifier did): steps of goals 4, 2, 6 only
        assert out["fidelity"] == pytest.approx(7 / 8)
    else:  # no step could be replayed
        assert math.isnan(out["fidelity"]) and out["model_nodes"] == 0.0


def test_model_mode_is_restored():
    model = torch.nn.Linear(2, 2)
    model.train()
    seen = []

    class ModeSampler(FakeSampler):
        def generate(self, *a, **k):
            seen.append(model.training)
            return super().generate(*a, **k)

    run(model=model, sampler=ModeSampler(GREEDY, SAMPLES))
    assert seen == [False] and model.training
    model.eval()
    run(model=model, sampler=ModeSampler(GREEDY, SAMPLES))
    assert not model.training


class OracleSampler:
    """Returns each record's own completion (the symbolic algorithm's trace), optionally cut."""

    def __init__(self, tokenizer, records, keep=1.0):
        from metacot.data.collate import encode_prompt as project_encode

        self.table = {}
        for r in records:
            ids = tokenizer.encode(r["completion"], add_special_tokens=False)
            self.table[tuple(project_encode(tokenizer, r["prompt"]))] = ids[: int(len(ids) * keep)]

    def generate(self, prompts, max_new_tokens, num_samples=1, **kw):
        tokens = [self.table[tuple(p)] for p in prompts for _ in range(num_samples)]
        return Out(tokens, [True] * len(tokens))


@pytest.mark.parametrize(("task", "search", "lin"), [("maze", "astar", "searchformer"), ("countdown", "dfs", "sos")])
def test_symbolic_traces_score_as_the_symbolic_algorithm(tmp_path, task, search, lin):
    """Contract with the real data layer, tokenizer, formats and replay: a 'model' that writes the
    symbolic trace back solves what the algorithm solved, with its search statistics, fidelity 1
    and ILR 1; the same traces cut in half are malformed and solve nothing."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from metacot.data.build import build_dataset
    from metacot.data.options import DataOptions
    from metacot.data.records import read_split
    from metacot.data.tokenizer import load_tokenizer

    conf = Path(__file__).resolve().parents[2] / "conf"
    t, s, ln = (instantiate(OmegaConf.load(conf / g / f"{o}.yaml"), _convert_="all")
                for g, o in (("task", task), ("search", search), ("linearization", lin)))
    data = build_dataset(t, s, ln, DataOptions(train=4, val=12, test_unseen=4, workers=1, max_tokens=100_000),
                         tmp_path)
    tokenizer, records = load_tokenizer(data / "tokenizer"), read_split(data, "val")
    from metacot.search.bfs import BFSSearch

    refs = {search: s, "bfs": BFSSearch()}
    out = evaluate(None, tokenizer, t, ln, records, EvalOptions(num_samples=2),
                   sampler=OracleSampler(tokenizer, records), reference_searches=refs)
    assert out["num_problems"] == len(records) == 12
    # the model's trace is the algorithm's, rendered: identical search order, problem by problem
    assert out[f"order_similarity/{search}"] == 1.0
    assert all(r["order_similarity"][search] == 1.0 for r in out.problems)
    assert out["order_similarity/bfs"] < 1.0
    assert [r["id"] for r in out.problems] == [r["id"] for r in records]
    assert [r["num_correct"] for r in out.problems] == [2 * r["solved"] for r in records]
    assert [r["symbolic_stats"] for r in out.problems] == [r["stats"] for r in records]
    assert out["solve_rate"] == out["symbolic_solve_rate"] == out["pass@2"]
    assert out["optimal_rate"] == out["symbolic_optimal_rate"]
    assert out["fidelity"] == 1.0 and out["invalid_format_rate"] == 0.0 and out["ilr"] == 1.0
    assert out["tokens_per_problem"] == out["symbolic_tokens"]
    for k in ("nodes", "expansions", "backtracks", "depth"):
        assert out[f"model_{k}"] == out[f"symbolic_{k}"]

    cut = evaluate(None, tokenizer, t, ln, records, EvalOptions(), sampler=OracleSampler(tokenizer, records, 0.5),
                   reference_searches=refs)
    assert cut["solve_rate"] == 0.0 and cut["invalid_format_rate"] == 1.0
    assert 0.0 < cut[f"order_similarity/{search}"] < 1.0  # half a search: a prefix of the order


def test_no_records_gives_nan_rates_and_no_sampling():
    out, sampler = run(EvalOptions(num_samples=4), records=[])
    assert sampler.calls == [] and out["num_problems"] == 0
    assert math.isnan(out["solve_rate"]) and math.isnan(out["pass@1"])


def test_shard_takes_every_world_th_record(monkeypatch):
    monkeypatch.setattr(ev, "_rank_world", lambda: (1, 2))  # rank 1 of 2 (no process group: no sync)
    out, sampler = run(EvalOptions(shard=True))
    assert sampler.calls[0]["n"] == 2  # goals 3 and 5
    assert out["num_problems"] == 2 and out["solve_rate"] == 0.5


# --- per-problem rows ---------------------------------------------------------------------------

def test_problem_rows_match_the_aggregates():
    import json

    records = [{**r, "id": 100 + i} for i, r in enumerate(RECORDS)]
    out, _ = run(EvalOptions(num_samples=4), records=records)
    rows = out.problems
    assert [r["id"] for r in rows] == [100, 101, 102, 103, 104]
    assert json.loads(json.dumps(rows)) == rows  # plain JSON types only
    n = len(rows)
    assert sum(r["correct"] for r in rows) / n == out["solve_rate"]
    assert sum(r["optimal"] for r in rows) / n == out["optimal_rate"]
    assert sum(r["tokens"] for r in rows) / n == out["tokens_per_problem"]
    assert sum(not r["well_formed"] for r in rows) / n == out["invalid_format_rate"]
    assert sum(r["symbolic_solved"] for r in rows) / n == out["symbolic_solve_rate"]
    assert sum(r["model_stats"]["nodes"] for r in rows) / n == pytest.approx(out["model_nodes"])
    assert [r["correct"] for r in rows] == [True, True, False, False, False]
    assert [r["tokens"] for r in rows] == [4, 5, 3, 8, 4]
    assert [r["length"] for r in rows] == [2, 3, None, None, None]  # only a correct answer has a length
    assert [r["optimal_length"] for r in rows] == [2, 2, 1, 3, 3]
    assert [r["num_samples"] for r in rows] == [4] * 5
    assert [r["num_correct"] for r in rows] == [2, 0, 4, 1, 1]
    assert sum(r["num_correct"] for r in rows) / (4 * n) == pytest.approx(out["pass@1"])
    assert rows[0]["model_stats"] == {"nodes": 3, "expansions": 0, "backtracks": 0, "max_depth": 2}
    assert rows[3]["model_stats"] == {"nodes": 0, "expansions": 0, "backtracks": 0, "max_depth": 0}  # garbage
    assert [r["symbolic_tokens"] for r in rows] == [20, 30, 20, 20, 20]
    assert rows[0]["symbolic_stats"] == RECORDS[0]["stats"]
    assert all(r["order_similarity"] == {} for r in rows)
    assert not any(k.startswith("order_similarity") for k in out)


def test_problem_rows_without_passk_and_with_sharding(monkeypatch):
    out, _ = run(EvalOptions(n_problems=4))
    assert len(out.problems) == 4
    assert [r["id"] for r in out.problems] == [0, 1, 2, 3]  # records without ids: their position
    assert all(r["num_samples"] == 0 and r["num_correct"] is None for r in out.problems)
    monkeypatch.setattr(ev, "_rank_world", lambda: (1, 2))
    out, _ = run(EvalOptions(shard=True))
    assert [r["id"] for r in out.problems] == [1, 3]  # this rank's records, numbered globally
    assert run(EvalOptions(), records=[])[0].problems == []


class ChainSearch:
    """A reference 'algorithm' that generates 0, step, 2*step, ... up to the goal (no EXPAND)."""

    def __init__(self, step):
        self.step, self.seeds = step, []

    def run(self, task, problem, seed=0):
        from metacot.search.trace import SearchTrace

        self.seeds.append(seed)
        states = list(range(0, problem["goal"] + 1, self.step))
        events = [TraceEvent(GENERATE, i, i - 1 if i else None, s) for i, s in enumerate(states)]
        return SearchTrace(task.name, "chain", problem, events, None, False)


def test_order_similarity_per_problem_and_mean():
    """The fake format writes only GENERATE steps, so orders compare by generation (states
    0, 2, 4 for `ans +2 +2`); the garbage completion parsed to nothing and is left out."""
    ones, twos = ChainSearch(1), ChainSearch(2)
    out = evaluate(None, FakeTokenizer(), LineTask(), AnswerLinearization(), RECORDS, EvalOptions(seed=7),
                   sampler=FakeSampler(GREEDY, SAMPLES), encode_prompt=encode_prompt,
                   reference_searches={"ones": ones, "twos": twos})
    sims = [r["order_similarity"] for r in out.problems]
    # goal 4: [0,2,4] vs [0..4]; goal 3: [0..3] both; goal 2: [0,1] vs [0,1,2]; goal 6: [0,2,9] vs [0..6]
    assert [s["ones"] for s in sims] == pytest.approx([3 / 5, 1.0, 2 / 3, None, 2 / 7])
    assert [s["twos"] for s in sims] == pytest.approx([1.0, 2 / 4, 1 / 2, None, 2 / 4])
    assert out["order_similarity/ones"] == pytest.approx((3 / 5 + 1 + 2 / 3 + 2 / 7) / 4)
    assert out["order_similarity/twos"] == pytest.approx((1 + 0.5 + 0.5 + 0.5) / 4)
    assert ones.seeds == [7] * 4  # the greedy pass only (no pass@k here), never for the unparsed one
    assert out["solve_rate"] == pytest.approx(2 / 5)  # the other metrics do not move


def test_a_failing_reference_is_logged_not_fatal(caplog):
    class Broken:
        def run(self, task, problem, seed=0):
            raise RuntimeError("search bug")

    out = evaluate(None, FakeTokenizer(), LineTask(), AnswerLinearization(), RECORDS, EvalOptions(),
                   sampler=FakeSampler(GREEDY, SAMPLES), encode_prompt=encode_prompt,
                   reference_searches={"broken": Broken()})
    assert all(r["order_similarity"] == {"broken": None} for r in out.problems)
    assert math.isnan(out["order_similarity/broken"])
    assert "search bug" in caplog.text


def test_behaviour_option_is_accepted_but_evaluate_runs_no_reference():
    out, _ = run({"behaviour": ["bfs", "astar"], "num_samples": 0})
    assert EvalOptions.from_any({"behaviour": ["bfs"]}).behaviour == ["bfs"]
    assert not any(k.startswith("order_similarity") for k in out)
    assert all(r["order_similarity"] == {} for r in out.problems)


class ModeOracle:
    """Continues each prompt (which ends with a forced mode line) with the rest of the record's own
    completion in that mode: the trace for `slow`, the answer lines only for `fast`."""

    def __init__(self, tokenizer, records, prefix, fast):
        from metacot.data.collate import encode_prompt as project_encode

        self.prompts, self.table = [], {}
        for r in records:
            lines = r["completion"].split("\n")[1:]  # the stored completion starts with `slow`
            if fast:
                lines = [ln for ln in lines if ln.startswith("plan") or ln == "end"]
            ids = tokenizer.encode("\n".join(lines), add_special_tokens=False)
            self.table[tuple(project_encode(tokenizer, r["prompt"]) + prefix)] = ids

    def generate(self, prompts, max_new_tokens, num_samples=1, **kw):
        self.prompts += prompts
        tokens = [self.table[tuple(p)] for p in prompts for _ in range(num_samples)]
        return Out(tokens, [True] * len(tokens))


def test_force_mode_feeds_the_dualformer_mode_word(tmp_path):
    """eval.force_mode=slow|fast: every prompt ends with the mode line, and what is scored is that
    line plus the model's continuation (a trace in slow mode, the plan alone in fast mode)."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from metacot.data.build import build_dataset
    from metacot.data.options import DataOptions
    from metacot.data.records import read_split
    from metacot.data.tokenizer import load_tokenizer
    from metacot.eval.evaluator import forced_prefix

    conf = Path(__file__).resolve().parents[2] / "conf"
    t, s, ln = (instantiate(OmegaConf.load(conf / g / f"{o}.yaml"), _convert_="all")
                for g, o in (("task", "maze"), ("search", "astar"), ("linearization", "dualformer")))
    data = build_dataset(t, s, ln, DataOptions(train=4, val=8, test_unseen=4, workers=1, max_tokens=100_000),
                         tmp_path)
    tokenizer, records = load_tokenizer(data / "tokenizer"), read_split(data, "val")
    for mode in ("slow", "fast"):
        prefix = forced_prefix(tokenizer, ln, mode)
        assert tokenizer.convert_ids_to_tokens(prefix) == [mode, "\n"]
        oracle = ModeOracle(tokenizer, records, prefix, fast=mode == "fast")
        out = evaluate(None, tokenizer, t, ln, records, EvalOptions(force_mode=mode, num_samples=2), sampler=oracle)
        assert oracle.prompts and all(p[-len(prefix):] == prefix for p in oracle.prompts)
        assert out.examples[0]["completion"].split("\n")[0].strip() == mode
        assert out["solve_rate"] == out["symbolic_solve_rate"] == out["pass@2"] > 0
        assert out["invalid_format_rate"] == 0.0
        if mode == "fast":  # no search written: far fewer tokens than the symbolic trace
            assert out["tokens_per_problem"] < out["symbolic_tokens"] / 2
        else:
            assert out["tokens_per_problem"] == out["symbolic_tokens"] and out["fidelity"] == 1.0
    with pytest.raises(ValueError, match="linearization=dualformer"):
        run(EvalOptions(force_mode="fast"))  # a format without mode words


def test_force_mode_is_checked_before_any_work():
    """Every stage builds its format through `trace_engine`: a mode the format cannot write fails there."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from metacot.stages.common import trace_engine

    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        bad = compose(config_name="config", overrides=["linearization=compact", "eval.force_mode=fast"])
        good = compose(config_name="config", overrides=["linearization=dualformer", "eval.force_mode=slow"])
    with pytest.raises(ValueError, match="eval.force_mode='fast'.*linearization=dualformer"):
        trace_engine(bad)
    assert trace_engine(good)[2].dropping.mode_token
