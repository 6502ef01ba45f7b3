"""Find every run's `results.json`, load it tolerantly and flatten it into plain rows.

A run is one directory holding `results.json` (a single run, or one job directory of a sweep).
Everything here reads plain JSON: a missing key is a missing value, never a crash, and an
unreadable file is reported and skipped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = "results.json"
SPLIT_LABELS = {"val": "seen", "test_unseen": "unseen"}
# Overrides that do not define the experiment (averaged over, or only where files go), and
# those already shown in their own column.
_NOT_SETTING = {"seed", "task", "search", "linearization", "model", "rerun"}  # rerun: see sweep.NON_IDENTITY_KEYS
_NOT_SETTING_PREFIX = ("hydra.", "paths.")


def split_label(split: str) -> str:
    return SPLIT_LABELS.get(split, split)


def finite(value: Any) -> float | None:
    """A float, or None for anything missing, non-numeric or NaN/inf (an undefined value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _natural(text: str) -> list[Any]:
    """Sort key under which job `10` comes after job `9`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


@dataclass
class Run:
    """One run directory's results."""

    name: str
    path: Path
    status: str
    overrides: list[str]
    config: dict[str, Any]
    stages: dict[str, Any]
    wall_s: float | None = None
    error: str | None = None
    config_hash: str | None = None
    error_message: str | None = None  # "Type: first line", when the writer recorded it
    common: frozenset[str] = frozenset()  # overrides every run of the report shares (`share_overrides`)

    def option(self, group: str) -> str:
        """The config option a group was composed from (its `name:`), "-" when unknown."""
        name = _dict(self.config.get(group)).get("name")
        return str(name) if name is not None else "-"

    @property
    def task(self) -> str:
        return self.option("task")

    @property
    def search(self) -> str:
        return self.option("search")

    @property
    def linearization(self) -> str:
        return self.option("linearization")

    @property
    def model(self) -> str:
        return self.option("model")

    @property
    def algo(self) -> str:
        return self.option("algo")

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def identity(self) -> list[str]:
        """The overrides that shape the experiment beyond task/search/format/model, seeds excluded:
        runs that differ only in seeds have the same identity and are averaged together."""
        return sorted(o for o in self.overrides if not self._ignored(_override_key(o)))

    @staticmethod
    def _ignored(key: str) -> bool:
        return key in _NOT_SETTING or key.endswith(".seed") or key.startswith(_NOT_SETTING_PREFIX)

    @property
    def setting(self) -> str:
        """The identity overrides not common to every run of the report ("-": none)."""
        kept = [o for o in self.identity if o not in self.common]
        return " ".join(kept) if kept else "-"

    @property
    def label(self) -> str:
        """The run's overrides not common to every run of the report (seeds included): a short,
        readable name for it; the directory name when that says nothing."""
        kept = [o for o in self.overrides if o not in self.common
                and not _override_key(o).startswith(("hydra.", "paths.")) and _override_key(o) != "rerun"]
        return " ".join(kept) if kept else self.name

    @property
    def group(self) -> tuple[str, str, str, str, str]:
        return (self.task, self.search, self.linearization, self.model, self.setting)

    @property
    def error_line(self) -> str:
        """The informative line of the error: `error_message` when recorded, else the exception line
        of a traceback, else the error's first line."""
        if self.error_message:
            return str(self.error_message).strip()
        lines = [line.strip() for line in str(self.error or "").splitlines() if line.strip()]
        if not lines:
            return ""
        return lines[-1] if lines[0].startswith("Traceback") else lines[0]

    @property
    def num_parameters(self) -> int | None:
        value = finite(_dict(self.stages.get("sft")).get("num_parameters"))
        return int(value) if value else None

    @property
    def train_tokens(self) -> int | None:
        """Tokens the SFT stage trained on: its own count, else steps x batch_tokens x grad_accum
        (padding included: an upper bound). None when the run trained nothing."""
        sft = self.stages.get("sft")
        if not isinstance(sft, dict):
            return None
        tokens = finite(sft.get("train_tokens"))
        if tokens is not None:
            return int(tokens)
        cfg = _dict(self.config.get("sft"))
        steps = finite(sft.get("steps"))
        steps = steps if steps is not None else finite(cfg.get("max_steps"))
        batch = finite(cfg.get("batch_tokens"))
        if steps is None or batch is None:
            return None
        return int(steps * batch * (finite(cfg.get("grad_accum")) or 1))


@dataclass
class Evaluation:
    """One evaluated model of one run: a stage summary that has `metrics`."""

    run: Run
    stage: str
    label: str  # "sft", "rl:<algo>", or the stage name
    metrics: dict[str, dict[str, float | None]]
    problems: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def metric(self, split: str, key: str) -> float | None:
        return finite(self.metrics.get(split, {}).get(key))

    @property
    def algo(self) -> str:
        """The RL algo that trained the evaluated model (from its label); "-" for a model no RL
        trained (the SFT model, or a symbolic row: the run config's default `algo` is not its history)."""
        return self.label[3:] if self.label.startswith("rl:") else "-"


def model_label(run: Run, stage: str) -> str:
    """What a metrics stage evaluated: `eval_rl` (or `eval` of an RL model) the RL model, `eval` the
    SFT model; any other stage keeps its own name. An RL model is named by the algo that trained it,
    as the eval recorded it (`model_info`, from the export itself): `stage.source=rl` evaluates the
    latest RL export whatever trained it, so the eval run's own `algo` is only a fallback, for
    results written before `model_info` existed."""
    info = _dict(_dict(run.stages.get(stage)).get("model_info"))
    if info.get("algo"):
        return f"rl:{info['algo']}"
    source = info.get("source") or _dict(run.config.get("stage")).get("source")
    if stage.endswith("_rl") or (stage == "eval" and source == "rl"):
        return f"rl:{run.algo}"
    return "sft" if stage == "eval" else stage


def find_results(dirs: list[str | Path]) -> list[tuple[Path, Path]]:
    """(root, results.json) for every results file under the given directories, each file once.
    A directory that does not exist is an error the user must fix, not an empty report."""
    missing = [str(d) for d in dirs if not Path(d).is_dir()]
    if missing:
        raise SystemExit(f"report: no such directory: {', '.join(missing)} (pass run or sweep directories, "
                         f"e.g. logs/runs/<timestamp> or a sweep directory logs/sweeps/<name>)")
    found, seen, empty = [], set(), []
    for d in dirs:
        root = Path(d)
        paths = sorted((p for p in root.rglob(RESULTS) if p.is_file()), key=lambda p: _natural(str(p)))
        if not paths:
            empty.append(str(d))
        for path in paths:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                found.append((root, path))
    if empty and found:  # (none anywhere: build_report says so with its own message)
        raise SystemExit(f"report: no {RESULTS} under {', '.join(empty)} (a mistyped directory? pass run or "
                         "sweep directories, e.g. logs/runs/<timestamp> or logs/sweeps/<name>)")
    return found


def _run_name(root: Path, path: Path, several_roots: bool, root_names: dict[Path, str] | None = None) -> str:
    rel = path.parent.relative_to(root).as_posix()
    base = (root_names or {}).get(root.resolve(), root.resolve().name)
    if rel == ".":
        return base
    return f"{base}/{rel}" if several_roots else rel


def root_names(roots: list[Path]) -> dict[Path, str]:
    """A short name per root directory: its basename, with as many parent directories as it takes
    to tell apart roots that share one (the same sweep command on two machines: a/sweeps/x, b/sweeps/x)."""
    resolved = sorted({r.resolve() for r in roots})
    names: dict[Path, str] = {}
    for r in resolved:
        depth = 1
        while True:
            name = "/".join(r.parts[-depth:])
            clash = [o for o in resolved if o != r and "/".join(o.parts[-depth:]) == name]
            if not clash or depth >= len(r.parts):
                break
            depth += 1
        names[r] = name
    return names


def load_run(root: Path, path: Path, several_roots: bool = False, names: dict[Path, str] | None = None) -> Run:
    """Parse one results.json; raises ValueError with the reason when it is not a results file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not readable JSON ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    overrides = data.get("overrides")
    return Run(
        name=_run_name(root, path, several_roots, names), path=path.parent,
        status=str(data.get("status", "unknown")),
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
        config=_dict(data.get("config")), stages=_dict(data.get("stages")),
        wall_s=finite(data.get("wall_s")), error=data.get("error"), config_hash=data.get("config_hash"),
        error_message=data.get("error_message"),
    )


def share_overrides(runs: list[Run]) -> list[str]:
    """Record on each run the overrides all runs share (a sweep repeats its fixed ones in every job),
    so settings and labels show only what differs; returns them, sorted."""
    common = frozenset.intersection(*(frozenset(r.overrides) for r in runs)) if runs else frozenset()
    for r in runs:
        r.common = common
    return sorted(common)


def load_runs(dirs: list[str | Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """(runs, unreadable) where unreadable holds (path, reason) for each file that was skipped."""
    found = find_results(dirs)
    several = len({root for root, _ in found}) > 1
    names = root_names([root for root, _ in found])
    runs, bad = [], []
    for root, path in found:
        try:
            runs.append(load_run(root, path, several, names))
        except ValueError as e:
            bad.append((path, str(e)))
    share_overrides(runs)
    return runs, bad


def _metrics(value: Any) -> dict[str, dict[str, float | None]]:
    return {str(s): {str(k): finite(v) for k, v in m.items()} for s, m in _dict(value).items() if isinstance(m, dict)}


def _problems(value: Any) -> dict[str, list[dict[str, Any]]]:
    return {str(s): [r for r in rows if isinstance(r, dict)] for s, rows in _dict(value).items()
            if isinstance(rows, list)}


def evaluations(runs: list[Run]) -> list[Evaluation]:
    """Every metrics stage of every complete run, in run order then stage order."""
    out = []
    for run in runs:
        if run.status != "complete":
            continue
        for stage, summary in run.stages.items():
            if isinstance(summary, dict) and isinstance(summary.get("metrics"), dict):
                out.append(Evaluation(run, stage, model_label(run, stage), _metrics(summary["metrics"]),
                                      _problems(summary.get("problems"))))
    return out


RUN_COLUMNS = ("run", "status", "stage", "label", "split", "task", "search", "linearization", "model", "algo",
               "seed", "overrides", "train_tokens", "num_parameters", "config_hash")


def metric_rows(evals: list[Evaluation]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of runs.csv: one row per (run, evaluated model, split), every metric."""
    from metacot.eval.table import ROWS

    keys: set[str] = set()
    rows = []
    for ev in evals:
        r = ev.run
        for split, metrics in ev.metrics.items():
            keys.update(metrics)
            rows.append({"run": r.name, "status": r.status, "stage": ev.stage, "label": ev.label,
                         "split": split, "task": r.task, "search": r.search, "linearization": r.linearization,
                         "model": r.model, "algo": ev.algo, "seed": r.seed, "overrides": " ".join(r.overrides),
                         "train_tokens": r.train_tokens, "num_parameters": r.num_parameters,
                         "config_hash": r.config_hash, **metrics})
    ordered = [k for k in ROWS if k in keys]
    passk = sorted((k for k in keys if k.startswith("pass@") and k[5:].isdigit()), key=lambda k: int(k[5:]))
    rest = sorted(keys - set(ordered) - set(passk))
    return [*RUN_COLUMNS, *ordered, *passk, *rest], rows
