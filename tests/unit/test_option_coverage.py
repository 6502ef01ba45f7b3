"""Every option a user can pick is covered by the generic tests, or names the file that tests it.

The round-trip, fuzz and fidelity tests (`tests/unit/test_linearization.py`, `test_fidelity.py`), the
trace-IR invariants (`test_search.py`) and the objective math (`test_rl_math.py`) iterate over
hand-written dicts. A new format, search or objective added under `conf/` fails here until it is in
them (or in `OWN_TESTS` with the file that tests it), so nothing ships untested by oversight
(docs/EXTENDING.md)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.unit import test_linearization, test_rl_math, test_search

ROOT = Path(__file__).resolve().parents[2]
# options whose class has a test file of its own instead of a place in the shared dicts
OWN_TESTS = {
    "metacot.linearization.compact.CompactLinearization": "tests/unit/test_compact.py",
    "metacot.search.mixture.MixtureSearch": "tests/unit/test_mixture.py",
    "metacot.rl.objectives.expert_iteration.ExpertIterationObjective": "tests/unit/test_rl_module.py",
}


def targets(group: str) -> dict[str, type]:
    """option name -> the class its `_target_` names."""
    out = {}
    for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
        module, _, name = str(OmegaConf.load(path)["_target_"]).rpartition(".")
        out[path.stem] = getattr(importlib.import_module(module), name)
    return out


def covered(classes: set[type], option: str, cls: type, where: str) -> None:
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls in classes:
        return
    own = OWN_TESTS.get(name)
    assert own is not None, (f"{option} ({name}) is in none of {where}: add it there (docs/EXTENDING.md), "
                             "or list the test file that covers it in OWN_TESTS")
    assert cls.__name__ in (ROOT / own).read_text(), f"{own} does not mention {cls.__name__}"


@pytest.mark.parametrize(("option", "cls"), sorted(targets("linearization").items()))
def test_every_format_is_round_tripped_and_fuzzed(option, cls):
    classes = {type(make()) for make in test_linearization.FORMATS.values()}
    covered(classes, f"linearization={option}", cls, "FORMATS of tests/unit/test_linearization.py")


@pytest.mark.parametrize(("option", "cls"), sorted(targets("search").items()))
def test_every_search_is_checked_for_its_trace_invariants(option, cls):
    for module, where in ((test_search, "test_search.py"), (test_linearization, "test_linearization.py")):
        factories = module.ALGORITHMS.values()
        classes = {type(make(max_expansions=10)) if module is test_search else type(make(10)) for make in factories}
        covered(classes, f"search={option}", cls, f"ALGORITHMS of tests/unit/{where}")


@pytest.mark.parametrize(("option", "cls"), sorted(targets("algo").items()))
def test_every_objective_is_checked_against_hand_computed_numbers(option, cls):
    classes = {type(make()) for make in test_rl_math.OBJECTIVES.values()}
    covered(classes, f"algo={option}", cls, "OBJECTIVES of tests/unit/test_rl_math.py")
