"""MixtureSearch: weighted per-problem choice of a component (statistics, zero weights, seeds), the
trace is the component's own, solutions replay, describe() / validation, Hydra and plain-dict
construction, every format renders and parses its traces, datagen is worker-count invariant."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metacot.data.build import build_dataset, dataset_key
from metacot.data.options import DataOptions
from metacot.search.astar import AStarSearch
from metacot.search.beam import BeamSearch
from metacot.search.bfs import BFSSearch
from metacot.search.dfs import DFSSearch
from metacot.search.mixture import MixtureSearch
from metacot.tasks.countdown import CountdownTask
from metacot.tasks.maze import MazeTask

CONF = Path(__file__).resolve().parents[2] / "conf"
FORMATS = sorted(p.stem for p in (CONF / "linearization").glob("*.yaml"))
COUNTDOWN = CountdownTask(num_count=3)
COUNTDOWN4 = CountdownTask(num_count=4, max_number=99)
MAZE = MazeTask(size=5)


def default_mixture(**convert) -> MixtureSearch:
    return instantiate(OmegaConf.load(CONF / "search" / "mixture.yaml"), **convert)


def two(w_dfs: float, w_bfs: float) -> MixtureSearch:
    return MixtureSearch([{"weight": w_dfs, "search": DFSSearch()}, {"weight": w_bfs, "search": BFSSearch()}])


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "build_stats.json"}


# --- the draw --------------------------------------------------------------------------------
def test_weights_are_respected_statistically():
    mix = two(1.0, 3.0)
    rng = random.Random(0)
    counts = Counter(mix.choose(rng) for _ in range(2000))
    # 2000 draws at p = 0.75: sd = sqrt(2000 * 0.75 * 0.25) = 19.4 draws; 0.04 is ~4 sd.
    assert abs(counts[1] / 2000 - 0.75) < 0.04, counts
    # the same through search(): the trace's algorithm is the drawn component's name
    problems = MAZE.sample_problems("train", 400, 0)
    algos = Counter(mix.run(MAZE, p, seed=i).algorithm for i, p in enumerate(problems))
    assert set(algos) == {"dfs", "bfs"}
    assert abs(algos["bfs"] / 400 - 0.75) < 0.09, algos  # 400 draws: sd 0.022


def test_draw_is_uniform_over_equal_weights():
    mix = default_mixture()
    counts = Counter(mix.choose(random.Random(s)) for s in range(3000))
    # six components at 1/6 each: sd = sqrt(3000 / 6 * 5 / 6) = 20.4 draws
    assert sorted(counts) == list(range(6))
    assert all(abs(c - 500) < 90 for c in counts.values()), counts


@pytest.mark.parametrize("weights", [(0, 1, 0), (0, 0, 2.5), (3, 0, 0)])
def test_zero_weight_component_is_never_used(weights):
    mix = MixtureSearch([{"weight": w, "search": BeamSearch(width=k + 1, name=f"beam{k + 1}")}
                         for k, w in enumerate(weights)])
    only = f"beam{weights.index(max(weights)) + 1}"
    rng = random.Random(1)
    assert {mix.choose(rng) for _ in range(3000)} == {weights.index(max(weights))}
    problems = MAZE.sample_problems("train", 30, 0)
    assert {mix.run(MAZE, p, seed=i).algorithm for i, p in enumerate(problems)} == {only}
    assert mix.shuffle is False  # one drawable, non-shuffling component: traces cannot differ


def test_same_seed_same_trace_and_the_trace_is_the_components_own():
    mix = default_mixture()
    problems = COUNTDOWN4.sample_problems("train", 40, 3)
    used = set()
    for i, p in enumerate(problems):
        a, b = mix.run(COUNTDOWN4, p, seed=100 + i), mix.run(COUNTDOWN4, p, seed=100 + i)
        assert a.to_json() == b.to_json()
        # the component drawn from Random(seed), searching with the rng right after the draw
        rng = random.Random(100 + i)
        comp = mix.searches[mix.choose(rng)]
        own = comp.search(COUNTDOWN4, p, rng)
        assert a.algorithm == comp.name == a.meta["mixture_component"]
        own.seed, own.meta["mixture_component"] = a.seed, comp.name
        assert own.to_json() == a.to_json()
        used.add(a.algorithm)
    assert len(used) >= 4, used  # 40 seeds over six equal components reach most of them


def test_shuffling_components_get_the_same_rng_stream():
    mix = MixtureSearch([{"weight": 1, "search": AStarSearch(shuffle=True, name="a1")},
                         {"weight": 1, "search": AStarSearch(shuffle=True, name="a2")}])
    problems = MAZE.sample_problems("train", 10, 1)
    for i, p in enumerate(problems):
        assert mix.run(MAZE, p, seed=i).to_json() == mix.run(MAZE, p, seed=i).to_json()
    assert mix.shuffle is True


# --- solutions and formats ---------------------------------------------------------------------
@pytest.mark.parametrize("task", [COUNTDOWN, COUNTDOWN4, MAZE, MazeTask(size=10)], ids=["cd3", "cd4", "maze5", "maze10"])
def test_default_mixture_solutions_replay(task):
    mix = default_mixture()
    problems = task.sample_problems("train", 60, 7)
    solved = Counter()
    for i, p in enumerate(problems):
        trace = mix.run(task, p, seed=i)
        if trace.solved:
            assert task.verify(p, trace.solution).correct, (trace.algorithm, trace.solution)
            solved[trace.algorithm] += 1
        else:
            # sampled problems are solvable and graph DFS is complete: only a beam can miss
            assert trace.solution is None and trace.algorithm.startswith("beam")
    assert solved["dfs"] >= 5 and sum(solved.values()) > solved["dfs"], solved


def _mixture_traces():
    mix = default_mixture()
    out = []
    for task, n in ((COUNTDOWN, 12), (MAZE, 12)):
        for i, p in enumerate(task.sample_problems("val", n, 5)):
            out.append((task, p, mix.run(task, p, seed=i)))
    out.append((COUNTDOWN, {"target": 97, "numbers": [1, 1, 2]}, mix.run(COUNTDOWN, {"target": 97, "numbers": [1, 1, 2]}, 0)))
    return out


TRACES = _mixture_traces()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_mixture_traces(fmt):
    lin = instantiate(OmegaConf.load(CONF / "linearization" / f"{fmt}.yaml"), _convert_="all")
    algos = set()
    for task, problem, trace in TRACES:
        prompt, text = lin.render(task, problem, trace)
        assert prompt == task.prompt_text(problem)
        parsed = lin.parse(task, problem, text)
        assert parsed.errors == [] and parsed.complete, (fmt, trace.algorithm, parsed.errors[:3])
        assert parsed.answer == trace.solution
        if fmt != "solution":
            assert len(parsed.events) > 0
            assert lin.render(task, problem, parsed.to_trace(task.name, "parsed", problem))[1] == text
        algos.add(trace.algorithm)
    assert "dfs" in algos and len(algos) >= 3, algos


# --- describe and validation -------------------------------------------------------------------
def test_describe_names_every_component_and_weight():
    mix = default_mixture()
    d = mix.describe()
    assert d["name"] == "mixture" and len(d["components"]) == 6
    assert d["components"][0] == {"weight": 1.0, "search": mix.searches[0].describe()}
    assert [c["search"]["name"] for c in d["components"]] == ["dfs", "beam1", "beam2", "beam3", "beam4", "beam5"]
    assert [c["search"].get("width") for c in d["components"][1:]] == [1, 2, 3, 4, 5]
    assert d["components"][0]["search"]["closed_set"] is True
    # weights and component options enter the dataset cache key
    opts = DataOptions(train=1, val=1, test_unseen=1)
    keys = {repr(dataset_key(MAZE, m, instantiate(OmegaConf.load(CONF / "linearization" / "sos.yaml")), opts))
            for m in (two(1, 3), two(1, 2), MixtureSearch([{"weight": 1, "search": DFSSearch()},
                                                           {"weight": 3, "search": BFSSearch(shuffle=True)}]))}
    assert len(keys) == 3


@pytest.mark.parametrize(("components", "message"), [
    ([], "empty"),
    ("dfs", "must be a list"),
    ({"weight": 1, "search": DFSSearch()}, "must be a list"),
    ([{"weight": -1, "search": DFSSearch()}], "finite number >= 0"),
    ([{"weight": float("nan"), "search": DFSSearch()}], "finite number >= 0"),
    ([{"weight": True, "search": DFSSearch()}], "finite number >= 0"),
    ([{"weight": "2", "search": DFSSearch()}], "finite number >= 0"),
    ([{"weight": 0, "search": DFSSearch()}, {"weight": 0.0, "search": BFSSearch()}], "sum to 0"),
    ([{"weight": 1, "search": DFSSearch(), "heuristic": "mult"}], r"unknown: \['heuristic'\]"),
    ([{"weight": 1}], r"missing: \['search'\]"),
    ([{"search": DFSSearch()}], r"missing: \['weight'\]"),
    ([DFSSearch()], "must be a mapping"),
    ([{"weight": 1, "search": "dfs"}], "must be a SearchAlgorithm"),
    ([{"weight": 1, "search": {"name": "dfs"}}], "needs `_target_"),
    ([{"weight": 1, "search": {"_target_": "metacot.search.nope.NopeSearch"}}], "cannot import"),
    ([{"weight": 1, "search": {"_target_": "metacot.tasks.maze.MazeTask"}}], "not a SearchAlgorithm"),
    ([{"weight": 1, "search": {"_target_": "metacot.search.dfs.DFSSearch", "depth": 3}}], "does not take"),
    ([{"weight": 1, "search": DFSSearch()}, {"weight": 1, "search": DFSSearch(closed_set=True)}], "distinct"),
])
def test_bad_components_are_clear_errors(components, message):
    with pytest.raises(ValueError, match=message):
        MixtureSearch(components)


def test_plain_dicts_build_the_same_mixture_as_hydra():
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "search" / "mixture.yaml"))
    assert raw.pop("_target_") == "metacot.search.mixture.MixtureSearch"
    plain = MixtureSearch(**raw)  # no Hydra: `_target_` dicts are built by the mixture itself
    assert plain.describe() == default_mixture().describe() == default_mixture(_convert_="all").describe()
    assert isinstance(plain.searches[0], DFSSearch) and isinstance(plain.searches[5], BeamSearch)
    objects = MixtureSearch([{"weight": 2, "search": DFSSearch()}, {"weight": 1, "search": BeamSearch()}], name="mine")
    assert objects.name == "mine" and objects.weights == [2.0, 1.0]


def test_hydra_compose_and_instantiate_the_option():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["search=mixture", "task=countdown"])
    mix = instantiate(cfg.search)
    assert isinstance(mix, MixtureSearch) and mix.name == "mixture" and mix.shuffle is True
    task = instantiate(cfg.task)
    p = task.sample_problems("train", 1, 0)[0]
    trace = mix.run(task, p, seed=0)
    assert trace.meta["mixture_component"] == trace.algorithm


def test_datagen_is_byte_identical_for_any_worker_count(tmp_path):
    lin = instantiate(OmegaConf.load(CONF / "linearization" / "sos.yaml"))
    mix = default_mixture()

    def opts(**kw):
        return DataOptions(**{"train": 40, "val": 8, "test_unseen": 8, "shard_size": 16, "keep_unsolved": True, **kw})

    a = build_dataset(COUNTDOWN, mix, lin, opts(workers=1), tmp_path / "a")
    b = build_dataset(COUNTDOWN, mix, lin, opts(workers=2), tmp_path / "b")
    assert a.name == b.name and a.name.startswith("countdown-mixture-sos-")
    fa, fb = files(a), files(b)
    assert set(fa) == set(fb) and all(fa[k] == fb[k] for k in fa)
