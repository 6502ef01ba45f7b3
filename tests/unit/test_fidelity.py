"""Fidelity replay: exact counts on a hand-built trace and on corrupted copies of it, local
validity, answers, cost saturation, and 1.0 for every symbolic trace in every format."""

from __future__ import annotations

import pytest

from metacot.linearization.base import ParsedTrace
from metacot.linearization.fidelity import replay
from metacot.linearization.searchformer import SearchformerLinearization
from metacot.search.astar import AStarSearch
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, GOAL, TraceEvent
from metacot.tasks.countdown import CountdownTask
from tests.unit.test_linearization import FORMATS, HOP, TRACES, HopTask, hand_trace

TASK = HopTask()


def run(events, answer=("* 2", "+ 3"), cap=None, reference_length=None, complete=True):
    parsed = ParsedTrace(events=events, answer=None if answer is None else list(answer), complete=complete,
                         cost_cap=cap)
    return replay(TASK, HOP, parsed, reference_length)


def test_hand_trace_is_fully_valid():
    f = run(hand_trace().events)
    assert (f.valid_steps, f.total_steps, f.fraction) == (10, 10, 1.0)  # 5 creates, 3 moves, 2 leaves
    assert (f.nodes, f.expansions, f.backtracks, f.max_depth) == (5, 3, 1, 2)
    assert f.answer_correct and f.answer_optimal and f.well_formed and f.invalid == []
    assert f.as_dict()["fraction"] == 1.0


def corrupt(index, **changes):
    events = hand_trace().events
    for k, v in changes.items():
        setattr(events[index], k, v)
    return events


@pytest.mark.parametrize(("events", "why"), [
    (corrupt(5, state=3), "the action does not give the claimed state"),  # 4 - 2 is 2
    (corrupt(2, action="* 3"), "illegal action"),
    (corrupt(8, g=4.0), "wrong cost-so-far g"),  # g(2) = 2 (a * 2 costs 2) + 1
    (corrupt(5, h=0.0), "wrong heuristic h"),  # |5 - 2| / 2 = 1.5
    (corrupt(8, parent=9), "parent was never generated"),
    (corrupt(7, node=7), "expands a node never generated"),
    (corrupt(9, node=3), "not a goal"),
    (corrupt(9, kind=DEAD_END), "a goal declared a dead end"),
    (corrupt(6, node=4), "refers to an unknown node"),  # node 4 comes later
])
def test_each_corruption_costs_exactly_one_step(events, why):
    f = run(events)
    assert (f.valid_steps, f.total_steps) == (9, 10)
    assert [w for _, w in f.invalid] == [why]


def test_a_wrong_root_makes_its_children_wrong_too():
    f = run(corrupt(0, state=2))  # from 2, * 2 gives 4 (not 2) and + 3 gives 5 (not 4)
    assert f.invalid == [(0, "a root that is not the initial state"),
                         (2, "the action does not give the claimed state"),
                         (3, "the action does not give the claimed state")]
    assert (f.valid_steps, f.fraction) == (7, 0.7)


def test_repeated_and_extra_steps():
    events = hand_trace().events
    events.insert(2, TraceEvent(GENERATE, 9, None, 1, None, 0.0, 2.0))  # a second root
    events.insert(4, TraceEvent(GENERATE, 1, 0, 2, "+ 1", 1.0, 1.5))  # node 1 again
    events.append(TraceEvent(BUDGET, -1))  # not a step
    f = run(events)
    assert (f.valid_steps, f.total_steps) == (10, 12)
    assert f.invalid == [(2, "a second root"), (4, "node generated twice")]


def test_steps_are_checked_from_the_claimed_parent_state():
    events = corrupt(3, state=3)  # the model believes 1 + 3 = 3 ...
    events[5].state = 1  # ... so 3 - 2 = 1 is a legal step from what it believes
    events[6].node = 3
    f = run(events)
    assert [i for i, _ in f.invalid] == [3]
    events[5].state = 2  # but 2 is not what - 2 gives from the claimed 3
    assert [i for i, _ in run(events).invalid] == [3, 5]


def test_claimed_states_and_costs_on_moves_and_leaves():
    events = hand_trace().events
    events[4].state, events[4].g, events[4].h = 4, 1, 1  # close 4 c1 c1: all right (0.5 -> 1)
    assert run(events).invalid == []
    events[4].state = 2
    events[7].g = 3
    events[6].state = 5  # node 3 is 2, not 5
    assert run(events).invalid == [(4, "the claimed state is not the node's"), (6, "the claimed state is not the node's"),
                                   (7, "wrong cost-so-far g")]


def test_state_only_steps_accept_any_step_that_reaches_the_state():
    # 1 + 1 (cost 1) and 1 * 2 (cost 2) both reach 2: g 1 and g 2 are both right, g 3 is not
    root = TraceEvent(GENERATE, 0, None, 1, None, 0.0, 2.0)
    for g, ok in ((1.0, True), (2.0, True), (3.0, False)):
        f = run([root, TraceEvent(EXPAND, 0), TraceEvent(GENERATE, 1, 0, 2, None, g, 1.5)], answer=None)
        assert (f.valid_steps == 3) == ok
    f = run([root, TraceEvent(EXPAND, 0), TraceEvent(GENERATE, 1, 0, 6, None)], answer=None)
    assert f.invalid == [(2, "not a successor of its parent")]


def test_answers():
    assert run([], answer=None).verdict.error == "no answer"
    f = run([])
    assert (f.total_steps, f.fraction, f.answer_correct, f.answer_optimal) == (0, 1.0, True, True)
    assert not run([], reference_length=1).answer_optimal
    f = run([], answer=["+ 1", "+ 1", "+ 1", "+ 1"])
    assert f.answer_correct and not f.answer_optimal and run([], answer=["+ 1", "+ 1", "+ 1", "+ 1"],
                                                             reference_length=4).answer_optimal
    f = run([], answer=["+ 3", "* 5"])
    assert not f.answer_correct and "illegal" in f.verdict.error
    assert not run(hand_trace().events, complete=False).well_formed


def test_parsed_text_with_saturated_costs():
    cd = CountdownTask(num_count=3)
    problem = {"target": 24, "numbers": [3, 25, 25]}
    lin = SearchformerLinearization(max_cost=10)
    text = lin.render(cd, problem, AStarSearch(max_expansions=20).run(cd, problem))[1]
    f = replay(cd, problem, lin.parse(cd, problem, text))
    assert f.fraction == 1.0 and f.total_steps > 20  # c10 = ">= 10" matches h = 311.5
    bad = text.replace("create 3 625 c1 c10", "create 3 625 c1 c9")
    f = replay(cd, problem, lin.parse(cd, problem, bad))
    assert [w for _, w in f.invalid] == ["wrong heuristic h"]
    assert f.valid_steps == f.total_steps - 1


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_symbolic_trace_is_fully_faithful(fmt):
    lin = FORMATS[fmt]()
    for task, problem, trace in TRACES:
        parsed = lin.parse(task, problem, lin.render(task, problem, trace)[1])
        f = replay(task, problem, parsed)
        assert f.invalid == [] and f.fraction == 1.0 and f.well_formed, (trace.algorithm, f.invalid[:3])
        assert f.answer_correct == trace.solved
        if fmt == "solution":
            assert f.total_steps == 0
        else:
            assert f.total_steps == sum(e.kind != BUDGET for e in trace.events)
            stats = trace.stats()
            assert (f.nodes, f.expansions, f.backtracks, f.max_depth) == (
                stats["nodes"], stats["expansions"], stats["backtracks"], stats["max_depth"])


def test_replay_of_raw_ir_events():
    """Replay also reads IR events directly (unrounded costs): symbolic traces are all valid."""
    for task, problem, trace in TRACES:
        f = replay(task, problem, ParsedTrace(events=trace.events, answer=trace.solution, complete=True))
        assert f.invalid == [], (trace.algorithm, f.invalid[:3])
    kinds = {e.kind for _, _, t in TRACES for e in t.events}
    assert kinds == {GENERATE, EXPAND, DEAD_END, GOAL, BUDGET}
