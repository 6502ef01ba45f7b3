"""Every named setup in conf/experiment/ composes, sets only keys that exist, picks the groups it
promises, and its task x search x linearization works on sampled problems (no model is trained)."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# What each setup promises: task, search, linearization, stage (and for sweeps, the swept searches).
PROMISED = {
    "sos_countdown_cpu": ("countdown", "mixture", "sos", "pipeline"),
    "sos_countdown_gpu": ("countdown", "mixture", "sos", "pipeline"),
    "searchformer_maze_cpu": ("maze", "astar", "searchformer", "pipeline"),
    "searchformer_maze_gpu": ("maze", "astar", "searchformer", "pipeline"),
    "metacot_cpu": ("maze", "astar", "metacot", "pipeline_rl"),
    "metacot_gpu": ("maze", "astar", "metacot", "pipeline_rl"),
}
SWEEPS = {"metacot_cpu": ["astar", "mcts"], "metacot_gpu": ["astar", "mcts"]}


@functools.cache
def _composed(overrides: tuple[str, ...], hydra: bool) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def _compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    """The composed config (cached: ~0.3 s a compose); a copy, so callers may modify it."""
    return copy.deepcopy(_composed(tuple(overrides), hydra))


def _raw(name: str) -> DictConfig:
    return OmegaConf.load(CONF / "experiment" / f"{name}.yaml")


def _group_choices(raw: DictConfig) -> list[str]:
    """`override /task: maze` entries of the experiment's defaults list as `task=maze` overrides."""
    out = []
    for entry in raw.get("defaults", []):
        assert isinstance(entry, DictConfig) and len(entry) == 1, f"unexpected defaults entry {entry}"
        (key, value), = entry.items()
        assert key.startswith("override /"), f"defaults entry {key!r} must be `override /<group>`"
        out.append(f"{key[len('override /'):]}={value}")
    return out


def unknown_keys(exp: DictConfig, base: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys the experiment sets that the base config (same groups, no experiment) lacks.
    A dict value is checked key by key where the base has a dict too; anything else replaces the
    base value wholesale (lists, a dict where the base has null) and only its key must exist."""
    bad = []
    for key, value in exp.items():
        if prefix == "" and key == "defaults":
            continue
        path = f"{prefix}{key}"
        if not isinstance(base, DictConfig) or key not in base:
            bad.append(path)
        elif isinstance(value, DictConfig) and isinstance(base[key], DictConfig):
            bad += unknown_keys(value, base[key], path + ".")
    return bad


def test_the_six_setups_exist_and_are_all_described_here():
    assert EXPERIMENTS == sorted(PROMISED), "add a new experiment to PROMISED with the groups it promises"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_header_cites_the_paper_and_gives_command_and_time(name):
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    header = text.split("\ndefaults:")[0]
    assert text.startswith("# @package _global_\n")
    assert f"python train.py {'-m ' if name in SWEEPS else ''}experiment={name}" in header
    assert "wall time" in header.lower() and "min" in header
    paper = {"sos": "Gandhi et al. 2024", "searchformer": "Lehnert et al. 2024", "metacot": "Xiang et al. 2025"}
    assert paper[name.split("_")[0]] in header
    if name.startswith("searchformer"):
        assert "linearization=dualformer" in header and "Su et al. 2024" in header


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_composes_with_the_promised_groups_and_known_keys(name):
    cfg = _compose([f"experiment={name}"], hydra=True)
    task, search, lin, stage = PROMISED[name]
    assert (cfg.task.name, cfg.search.name, cfg.linearization.name, cfg.stage.name) == (task, search, lin, stage)
    scale = name.rsplit("_", 1)[1]
    assert (cfg.model.name, cfg.trainer.name) == (("tiny", "cpu") if scale == "cpu" else (cfg.model.name, "gpu"))
    if scale == "gpu":
        assert cfg.model.name in ("small", "base")
    sweep = cfg.hydra.sweeper.params
    assert (sweep and sorted(sweep["search"].split(","))) == (SWEEPS.get(name) or None)
    raw = _raw(name)
    base = _compose(_group_choices(raw), hydra=True)
    assert unknown_keys(raw, base) == [], f"{name} sets keys that do not exist"
    OmegaConf.resolve(_compose([f"experiment={name}"]))  # every interpolation resolves


def test_unknown_key_check_catches_typos():
    raw = _raw("metacot_cpu")
    base = _compose(_group_choices(raw), hydra=True)
    assert unknown_keys(raw, base) == []
    bad = OmegaConf.merge(raw, {"sft": {"max_stepz": 3}, "rl": {"steps": 3}, "data": {"tokenizer": {"nums": "x"}},
                                "hydra": {"sweeper": {"parms": {}}}, "sweep_name": "x"})
    assert sorted(unknown_keys(bad, base)) == ["data.tokenizer.nums", "hydra.sweeper.parms", "sft.max_stepz",
                                               "sweep_name"]


def _check_engine(cfg: DictConfig, render: bool) -> None:
    """Instantiate task/search/linearization; search 2 sampled problems; render and parse."""
    task, search, lin = (instantiate(cfg[g], _convert_="all") for g in ("task", "search", "linearization"))
    problems = task.sample_problems("train", 2, 0)
    assert len(problems) == 2
    for i, problem in enumerate(problems):
        trace = search.run(task, problem, seed=i)
        assert trace.events and trace.task == cfg.task.name
        if trace.solved:
            assert task.verify(problem, trace.solution).correct
        if render:
            prompt, completion = lin.render(task, problem, trace)
            parsed = lin.parse(task, problem, completion)
            assert parsed.well_formed and parsed.answer == trace.solution, parsed.errors[:3]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_task_search_and_linearization_work_together(name):
    cfg = _compose([f"experiment={name}"])
    for search in SWEEPS.get(name, [cfg.search.name]):
        job = _compose([f"experiment={name}", f"search={search}"])  # what a sweep job composes
        assert job.search.name == search and job.linearization.name == cfg.linearization.name
        _check_engine(job, render=name.endswith("_cpu"))


@pytest.mark.parametrize("name", ["searchformer_maze_cpu", "searchformer_maze_gpu"])
def test_dualformer_is_one_word_away(name):
    cfg = _compose([f"experiment={name}", "linearization=dualformer"])
    assert cfg.linearization.name == "dualformer" and cfg.linearization.dropping is not None
    assert cfg.task.size == _compose([f"experiment={name}"]).task.size
    _check_engine(cfg, render=True)


def test_sos_setups_use_the_sos_dfs_and_beam_widths_one_to_five():
    for name in ("sos_countdown_cpu", "sos_countdown_gpu"):
        mix = instantiate(_compose([f"experiment={name}"]).search)
        dfs = mix.searches[0]
        assert (dfs.name, dfs.prune_threshold, dfs.closed_set) == ("dfs", "target", False)
        assert [s.width for s in mix.searches[1:]] == [1, 2, 3, 4, 5]
        assert len(set(mix.weights)) == 1


def test_multirun_sweeps_both_searches(tmp_path):
    """`python train.py -m experiment=metacot_cpu` launches an A* job and an MCTS job (datagen only,
    a few problems: the sweep itself is what is tested)."""
    env = {**os.environ, "METACOT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "experiment=metacot_cpu", "stage=datagen",
           "data.train=12", "data.val=4", "data.test_unseen=4", "data.workers=1", "hydra/job_logging=disabled"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    built = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "logs" / "data").iterdir()
                   if not p.name.startswith("."))
    assert built == ["maze-astar-metacot", "maze-mcts-metacot"]
