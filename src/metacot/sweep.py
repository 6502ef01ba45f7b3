"""Jobs and sweeps: every run writes `results.json`; a sweep is re-runnable and survives failures.

- Each run directory gets `results.json` (status, config and its hash, overrides, timings, every
  stage's summary). `python -m metacot.report` reads these files and nothing else.
- A sweep's directory is named after its command line (`logs/sweeps/<overrides>-<hash>`) and each
  job's after its own overrides, the swept keys first (a long name is shortened from its end, so
  what tells a sweep's jobs apart stays readable), so running the same `-m` command again lands in
  the same directories: jobs whose `results.json` says complete for the same config are skipped (pass
  `rerun=true` to run them again), and jobs never collide, however many start in the same second.
- Under `-m`, a job that raises is recorded as failed (with its traceback) and the sweep goes on;
  `SweepSummary` prints a table at the end and exits non-zero if any job failed.

This module is part of the Hydra edge (with `train.py`, `config.py` and `stages/`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from metacot.atomic import write_json

log = logging.getLogger(__name__)

RESULTS = "results.json"
RESULTS_VERSION = 1
# Overrides that say how or where to run, not what: they do not change a job's identity.
NON_IDENTITY_KEYS = ("rerun", "paths.root_dir")
MAX_NAME = 96
# The keys a `-m` command sweeps, found where the command line is (the launching process) and
# handed to the jobs, which may run in other processes (submitit), through the environment.
SWEPT_ENV = "METACOT_SWEPT_KEYS"
SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(")


# --- names -------------------------------------------------------------------------------------
def _name(text: str, empty: str = "default") -> str:
    """A file-system-safe, readable directory name for `text`, with a hash suffix when shortened
    (two different override sets never map to one name)."""
    safe = re.sub(r"[^A-Za-z0-9=,._+@%-]+", "_", text).strip("_.")
    if not safe:
        return empty
    if len(safe) <= MAX_NAME and safe == text:
        return safe
    digest = hashlib.blake2b(text.encode(), digest_size=4).hexdigest()
    return f"{safe[: MAX_NAME - 9]}-{digest}"


def _identity_overrides(args: list[str]) -> list[str]:
    """Command-line overrides that define what a sweep runs (no flags, no hydra.* settings)."""
    out = []
    skip_next = False
    for a in args:
        if skip_next:
            skip_next = False
            continue
        if a.startswith("-"):
            skip_next = a in ("-cn", "-cp", "-cd", "--config-name", "--config-path", "--config-dir",
                              "--experimental-rerun")
            continue
        key = a.split("=", 1)[0].lstrip("+~")
        if key.startswith(("hydra.", "hydra/")) or key in NON_IDENTITY_KEYS:
            continue
        out.append(a)
    return out


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys of `overrides` whose value is a sweep (`a,b`, `range(..)`, `choice(..)`, ...);
    a list value such as `x=[1,2]` is not one."""
    keys = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and (value.startswith(SWEEP_FUNCTIONS) or _top_level_comma(value)):
            keys.append(key.lstrip("+~"))
    return keys


def _top_level_comma(value: str) -> bool:
    depth, quote = 0, ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def sweep_id() -> str:
    """The sweep directory's name: this command's overrides (resolved once, in the launching
    process; Hydra copies the cached value to every job). Also records the swept keys for `job_id`."""
    identity = _identity_overrides(sys.argv[1:])
    os.environ[SWEPT_ENV] = ",".join(swept_keys(identity))
    return _name(",".join(sorted(identity)))


def job_id(override_dirname: str, params: Any = None) -> str:
    """A job directory's name: its overrides, the swept ones first. Swept are the command line's
    sweeps and the keys of `hydra.sweeper.params` (`params`: what an experiment file sweeps)."""
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    if params:
        swept += [str(k).lstrip("+~") for k in params if str(k).lstrip("+~") not in swept]
    return _name(swept_first(str(override_dirname), swept))


def swept_first(override_dirname: str, swept: list[str]) -> str:
    """`a=1,search=mcts,seed=2` with `search` swept -> `search=mcts,a=1,seed=2` (else unchanged)."""
    if not swept or not override_dirname:
        return override_dirname
    items = re.split(r",(?=[+~]?[A-Za-z_][\w.+/-]*=)", override_dirname)  # a comma that starts `key=`
    first = [i for i in items if i.split("=", 1)[0].lstrip("+~") in swept]
    return ",".join(first + [i for i in items if i not in first])


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("metacot.sweep_id"):
        OmegaConf.register_new_resolver("metacot.sweep_id", sweep_id, use_cache=True)
    if not OmegaConf.has_resolver("metacot.job_id"):
        OmegaConf.register_new_resolver("metacot.job_id", job_id)


# --- results.json --------------------------------------------------------------------------------
def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain data, with every path relative to `<root>` (moving the
    project or METACOT_ROOT does not change a job) and without `hydra` and `rerun`."""
    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra", None)
    data.pop("rerun", None)
    data.setdefault("paths", {}).update(root_dir="<root>", run_dir=None)
    return OmegaConf.to_container(OmegaConf.create(data), resolve=True)


def job_hash(cfg: DictConfig) -> str:
    blob = json.dumps(job_config(cfg), sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json, or None when absent or unreadable (a partial file is treated as
    absent: the job runs again)."""
    try:
        data = json.loads((Path(run_dir) / RESULTS).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


class JobRecord:
    """Writes one run's results.json as it goes: running -> complete | failed | interrupted."""

    def __init__(self, cfg: DictConfig, run_dir: Path, overrides: list[str]):
        self.path = Path(run_dir) / RESULTS
        self.data: dict[str, Any] = {
            "version": RESULTS_VERSION, "status": "running", "config_hash": job_hash(cfg),
            "overrides": list(overrides), "config": job_config(cfg), "run_dir": str(run_dir),
            "started": _now(), "finished": None, "wall_s": None, "error": None, "stages": {},
        }
        self._t0 = dt.datetime.now()

    def previous(self) -> dict[str, Any] | None:
        """The complete results of this same job from an earlier run, if any."""
        old = read_results(self.path.parent)
        if old and old.get("status") == "complete" and old.get("config_hash") == self.data["config_hash"]:
            return old
        return None

    def start(self) -> None:
        write_json(self.path, self.data)

    def skip(self, previous: dict[str, Any]) -> None:
        """Mark the complete `previous` results skipped by this run, keeping when it ran and how long
        it took (what the report's wall_s column shows)."""
        self.data = {**previous, "skipped": True, "skipped_at": _now()}
        write_json(self.path, self.data)

    def finish(self, status: str, stages: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        self.data.update(status=status, finished=_now(), error=format_error(error) if error else None,
                         error_message=error_message(error) if error else None,
                         wall_s=(dt.datetime.now() - self._t0).total_seconds())
        if stages is not None:
            self.data["stages"] = stages
        write_json(self.path, self.data)


def stage_summaries(stage_name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """`{stage name: summary}`: a pipeline's summary already is that mapping (plus `objective`)."""
    if stage_name.startswith("pipeline"):
        return {k: v for k, v in summary.items() if isinstance(v, dict)}
    return {stage_name: summary}


def error_message(exc: BaseException) -> str:
    """`Type: first line of the message` (the sweep table's one-line reason)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()


def format_error(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:]


# --- end of sweep --------------------------------------------------------------------------------
class SweepSummary(Callback):
    """At the end of a `-m` sweep: a table of every job (status, objective, directory), written
    to `<sweep dir>/sweep.json` too; exits non-zero when a job failed (after all of them ran)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = []
        for path in sorted(sweep_dir.glob(f"*/{RESULTS}")):
            r = read_results(path.parent) or {"status": "unreadable"}
            objective = objective_of(r.get("stages") or {})
            rows.append({"job": path.parent.name, "status": r.get("status"), "skipped": bool(r.get("skipped")),
                         "objective": objective, "wall_s": r.get("wall_s"),
                         "error": r.get("error_message")})
        write_json(sweep_dir / "sweep.json", {"sweep_dir": str(sweep_dir), "jobs": rows})
        width = max([len(r["job"]) for r in rows] + [3])
        lines = [f"sweep {sweep_dir}: {len(rows)} jobs", f"  {'job':<{width}}  {'status':<12} objective"]
        for r in rows:
            status = "skipped" if r["skipped"] else str(r["status"])
            obj = "-" if r["objective"] is None else f"{r['objective']:.4f}"
            lines.append(f"  {r['job']:<{width}}  {status:<12} {obj}" + (f"   {r['error']}" if r["error"] else ""))
        lines.append(f"report: python -m metacot.report {sweep_dir}")
        print("\n".join(lines), flush=True)
        failed = [r["job"] for r in rows if r["status"] != "complete"]
        if failed:
            raise SystemExit(f"{len(failed)} of {len(rows)} sweep jobs did not complete ({', '.join(failed)}); "
                             f"their tracebacks are in <job dir>/{RESULTS}. Re-run the same command to retry "
                             "them: complete jobs are skipped.")


def objective_of(stages: dict[str, Any]) -> float | None:
    for summary in reversed(list(stages.values())):
        if isinstance(summary, dict) and isinstance(summary.get("objective"), (int, float)):
            return float(summary["objective"])
    return None
