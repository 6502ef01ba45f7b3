"""Build a dataset of linearized search traces: parallel, cached by config hash, atomic.

    build_dataset(task, search, linearization, options, root) -> Path

The directory name is `<task>-<search>-<linearization>-<hash12>`; the hash covers what shapes the
data (the three objects' `describe()` and `options.key()`). A directory is built in a temporary
sibling and renamed into place only when complete, so an interrupted build leaves nothing that a
later run trusts. The same options give byte-identical files whatever the number of workers.

Two parallel phases over a process pool: (1) sample problems in chunks, then drop duplicates and
problems another split already has, topping up until each split has its count; (2) search,
render, count tokens and write each shard in the worker (one large write per shard).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from metacot import interrupts
from metacot.atomic import umask
from metacot.data import shards
from metacot.data.options import DataOptions
from metacot.data.records import (
    BUILD_STATS,
    DATASET_VERSION,
    MANIFEST,
    SPLITS,
    TOKENIZER_DIR,
    make_manifest,
    shard_name,
    why_untrusted,
)
from metacot.data.tokenizer import load_tokenizer_dir, make_tokenizer
from metacot.ranks import is_rank_zero

MAX_ROUNDS = 50
TOP_UP_MIN = 64  # problems drawn per split in a top-up round (a short answer reveals exhaustion)
STALE_ROUNDS = 3  # a split whose sampling finds nothing new this many rounds running is exhausted
WAIT_TIMEOUT_S = float(os.environ.get("METACOT_DATA_WAIT_S", 4 * 3600))
_HOST = socket.gethostname().replace("-", "_")


def dataset_key(task: Any, search: Any, linearization: Any, options: DataOptions) -> dict[str, Any]:
    """Everything that shapes the dataset, as plain JSON (also stored in the manifest)."""
    key: dict[str, Any] = {"version": DATASET_VERSION, "task": task.describe(), "search": search.describe(),
                           "linearization": linearization.describe(), "data": options.key(),
                           "code": engine_digest(type(task), type(search), type(linearization))}
    if options.tokenizer.path is not None:  # a pretrained tokenizer: hash its content, not its path
        blob = (load_tokenizer_dir(options.tokenizer.path) / "tokenizer.json").read_bytes()
        key["tokenizer_sha"] = hashlib.sha256(blob).hexdigest()
    return json.loads(json.dumps(key, sort_keys=True, default=_plain))


ENGINE_SOURCES = ("tasks", "search", "linearization", "data/build.py", "data/shards.py", "data/records.py",
                  "data/tokenizer.py", "data/options.py")  # what writes a dataset (not what reads it)


def engine_digest(*classes: type) -> str:
    """A hash of the code that writes a dataset: metacot's trace engine (`ENGINE_SOURCES`) and the
    source of `classes` and their bases from outside metacot (a user's own task, search or format).
    A dataset built by other code is another dataset: editing a task's alphabet or a format's
    render must not silently reuse traces the old code wrote (`describe()` sees only options).
    Files are named by their place in metacot or their module, so the hash is the same wherever the
    code is installed."""
    package = _package()
    files = dict(_metacot_engine_files())
    for cls in classes:
        for base in cls.__mro__:
            source = getattr(sys.modules.get(base.__module__), "__file__", None)
            if not source or not source.endswith(".py"):
                continue
            path = Path(source).resolve()
            if not path.is_relative_to(package) and not _installed(path):
                files[f"module:{base.__module__}"] = path
    return _digest_files(tuple(sorted(files.items())))


def _installed(path: Path) -> bool:
    """Whether `path` is Python's own library or an installed package (`abc`, `typing`, a pip
    package's base class): versioned code that differs between machines in ways that do not change
    a dataset, and would give each Python install its own dataset directory."""
    return any(path.is_relative_to(root) for root in _library_roots())


@functools.cache
def _library_roots() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple({Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths})


def _package() -> Path:
    return Path(__file__).resolve().parents[1]


@functools.cache
def _metacot_engine_files() -> tuple[tuple[str, Path], ...]:
    package, found = _package(), []
    for name in ENGINE_SOURCES:
        path = package / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            found.append((file.relative_to(package).as_posix(), file))
    return tuple(found)


def _digest_files(files: tuple[tuple[str, Path], ...]) -> str:
    h = hashlib.sha256()
    for label, path in files:
        h.update(label.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _plain(obj: Any) -> Any:
    """JSON for what describe() left as objects; refuse reprs that change from run to run."""
    if hasattr(obj, "describe"):
        return obj.describe()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    text = repr(obj)
    if " at 0x" in text:
        raise TypeError(f"{text} cannot enter the dataset hash (its repr changes between runs): "
                        "describe() must return plain values (numbers, strings, lists, dicts)")
    return text


def dataset_hash(key: dict[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()[:12]


def dataset_path(task: Any, search: Any, linearization: Any, options: DataOptions, root: str | Path) -> Path:
    digest = dataset_hash(dataset_key(task, search, linearization, options))
    return Path(root) / f"{task.name}-{search.name}-{linearization.name}-{digest}"


class ConfigError(ValueError):
    """The task, search and format fail on a first problem, before any worker started: a
    configuration mistake (e.g. a search option that names a field this task's problems lack)."""


def check_options(search: Any, options: DataOptions) -> None:
    """Option combinations that cannot work (ValueError with what to change)."""
    if options.traces_per_problem > 1 and not getattr(search, "shuffle", False):
        raise ValueError(
            f"data.traces_per_problem={options.traces_per_problem} needs distinct traces per problem: "
            "set search.shuffle=true (randomised tie-breaks and child order)"
        )


def build_dataset(task: Any, search: Any, linearization: Any, options: DataOptions, root: str | Path) -> Path:
    """The dataset directory for these objects and options, built unless a trusted one exists."""
    check_options(search, options)
    key = dataset_key(task, search, linearization, options)
    digest = dataset_hash(key)
    target = Path(root) / f"{task.name}-{search.name}-{linearization.name}-{digest}"
    if not is_rank_zero():
        return _wait_for(target, digest)
    reason = why_untrusted(target, digest)
    if reason is None:
        return target
    if target.exists():
        print(f"datagen: rebuilding {target} because {reason}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{_HOST}-{os.getpid()}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; a dataset is as readable as any file
    try:
        _build_into(tmp, task, search, linearization, options, key, digest)
        _install(tmp, target, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _install(tmp: Path, target: Path, digest: str) -> None:
    """Rename the finished build into place (replacing an untrusted directory)."""
    if target.exists():
        if why_untrusted(target, digest) is None:  # a concurrent build finished first: keep it
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, target)


def _remove_dead_builds(target: Path) -> None:
    """Delete temporary directories left by killed builds of this dataset on this host."""
    for tmp in target.parent.glob(f".{target.name}.tmp-{_HOST}-*-*"):
        pid = tmp.name[len(f".{target.name}.tmp-{_HOST}-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for(target: Path, digest: str) -> Path:
    start = time.monotonic()
    while why_untrusted(target, digest) is not None:
        if time.monotonic() - start > WAIT_TIMEOUT_S:
            raise TimeoutError(
                f"rank {os.environ.get('RANK')} waited {WAIT_TIMEOUT_S:.0f}s for rank 0 to build {target}; "
                "build it first with `python train.py stage=datagen ...` (or raise METACOT_DATA_WAIT_S)"
            )
        time.sleep(2.0)
    return target


def _build_into(tmp: Path, task: Any, search: Any, lin: Any, options: DataOptions,
                key: dict[str, Any], digest: str) -> None:
    start = time.perf_counter()
    tokenizer = make_tokenizer(task, lin, options.tokenizer.numbers, options.tokenizer.path,
                               model_max_length=options.max_tokens)
    tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    init_args = (task, search, lin, str(tmp / TOKENIZER_DIR / "tokenizer.json"), options, str(tmp))
    _preflight(init_args)
    shards_needed = -(-sum(options.counts.values()) // options.shard_size)
    workers = max(1, min(options.num_workers(), shards_needed))  # no idle processes for small builds
    pool = _pool(workers, init_args)
    froze = pool is None and not gc.get_freeze_count()  # in this process, unless the caller froze:
    if froze:  # keep the collector off what is alive now (see shards.init_pool_worker)
        gc.freeze()
    try:
        problems, sample_cpu = _sample_all(pool, task, options)
        t_sampled = time.perf_counter()
        results = _render_all(pool, problems, options)
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if froze:
            gc.unfreeze()
        shards._STATE.clear()
    seconds = time.perf_counter() - start
    manifest = make_manifest(key, digest, options, {k: len(v) for k, v in problems.items()}, results)
    traces = sum(r.traces for r in results)
    cpu = sample_cpu + sum(r.cpu_seconds for r in results)  # the workers' CPU: robust to a busy machine
    stats = {"seconds": round(seconds, 3), "sample_seconds": round(t_sampled - start, 3),
             "traces": traces, "traces_per_s": round(traces / max(seconds, 1e-9), 1), "workers": workers,
             "worker_cpu_seconds": round(cpu, 3), "sample_cpu_seconds": round(sample_cpu, 3),
             "cpu_us_per_trace": round(1e6 * cpu / max(traces, 1), 1)}
    (tmp / BUILD_STATS).write_text(json.dumps(stats, indent=1) + "\n")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks it complete


def _preflight(init_args: tuple) -> None:
    """Run the workers' code on one problem here first, so that a combination that cannot work is
    one ConfigError rather than a traceback from inside the pool. It writes nothing, and every
    random choice is seeded from the job (`shards.derive_seed`), so the dataset does not change."""
    task, search, lin, _tokenizer, options = init_args[:5]
    splits = [s for s in SPLITS if options.counts[s] > 0]
    if not splits:
        return
    shards.init_worker(*init_args)
    try:
        shards.preflight(splits)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{e} (task={task.name} search={search.name} linearization={lin.name})") from e
    finally:
        shards._STATE.clear()


def _pool(workers: int, init_args: tuple) -> Any:
    """A process pool (fork where available: the engine objects are inherited, not pickled), or
    None for one worker, which runs the same code in this process."""
    if workers <= 1:
        shards.init_worker(*init_args)
        return None
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = None
    try:
        # a SIGTERM that struck while forking would be swallowed by another library's at-fork hook
        # (the run went on to its end): it waits, and stops the run as soon as the pool is up
        with interrupts.sigterm_deferred():
            pool = mp.get_context(method).Pool(workers, initializer=shards.init_pool_worker, initargs=init_args)
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    return pool


def _map(pool: Any, fn: Any, jobs: list, progress: tqdm | None = None, weight: Any = None) -> list:
    """fn over jobs in order; a progress bar advances as jobs finish (rank 0 only builds)."""
    it = map(fn, jobs) if pool is None else pool.imap(fn, jobs, chunksize=1)
    out = []
    for job, result in zip(jobs, it, strict=True):
        interrupts.raise_if_received()
        out.append(result)
        if progress is not None:
            progress.update(weight(job) if weight else 1)
    return out


def _sample_all(pool: Any, task: Any, options: DataOptions) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """Distinct problems per split, none in two splits. Each split draws a stream of chunks (chunk
    k always holds the same problems); train takes the first distinct problems of its stream, val
    the first ones train did not take, test_unseen likewise. So the result depends neither on the
    pool nor on how chunks are scheduled. A split left short by duplicates draws more. Also returns
    the workers' CPU seconds."""
    streams: dict[str, list[tuple[str, dict[str, Any]]]] = {s: [] for s in SPLITS}
    next_chunk = dict.fromkeys(SPLITS, 0)
    exhausted = dict.fromkeys(SPLITS, False)
    stale = dict.fromkeys(SPLITS, 0)  # consecutive rounds that found no new problem
    chosen = _select(streams, options.counts)
    cpu = 0.0
    for round_ in range(MAX_ROUNDS):
        jobs = []
        for split in SPLITS:
            missing = options.counts[split] - len(chosen[split])
            if missing <= 0 or exhausted[split]:
                continue
            sizes = [max(missing, TOP_UP_MIN)] if round_ else \
                [min(options.shard_size, missing - i) for i in range(0, missing, options.shard_size)]
            for n in sizes:
                jobs.append((split, next_chunk[split], n))
                next_chunk[split] += 1
        if not jobs:
            break
        desc = "sampling" if round_ == 0 else f"sampling (top-up {round_})"
        with tqdm(total=sum(j[2] for j in jobs), desc=desc, unit="problem", dynamic_ncols=True,
                  mininterval=0.5, leave=False) as bar:
            results = _map(pool, shards.sample_chunk, jobs, bar, weight=lambda j: j[2])
        for (split, _k, n), (problems, seconds) in zip(jobs, results, strict=True):
            cpu += seconds
            exhausted[split] |= len(problems) < n  # the task has no more problems for this split
            streams[split].extend((task.problem_id(p), p) for p in problems)
        before = {s: len(chosen[s]) for s in SPLITS}
        chosen = _select(streams, options.counts)
        for split in SPLITS:
            stale[split] = 0 if len(chosen[split]) > before[split] else stale[split] + 1
            exhausted[split] |= stale[split] >= STALE_ROUNDS
    for split in SPLITS:
        if len(chosen[split]) < options.counts[split]:
            print(f"datagen: split {split} has {len(chosen[split])} distinct problems, "
                  f"{options.counts[split]} were asked for (the task has no more)", file=sys.stderr)
    return chosen, cpu


def _select(streams: dict[str, list[tuple[str, dict[str, Any]]]], counts: dict[str, int]) -> dict[str, list]:
    taken: set[str] = set()
    chosen: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        picked = chosen[split] = []
        for pid, problem in streams[split]:
            if len(picked) == counts[split]:
                break
            if pid not in taken:
                taken.add(pid)
                picked.append(problem)
    return chosen


def _render_all(pool: Any, problems: dict[str, list[dict[str, Any]]], options: DataOptions) -> list:
    jobs = []
    for split in SPLITS:
        per_shard = options.shard_size
        if split == "train":
            per_shard = max(1, options.shard_size // options.traces_per_problem)
        items = problems[split]
        for k, first in enumerate(range(0, len(items), per_shard)):
            jobs.append((split, k, shard_name(split, k), first, items[first:first + per_shard]))
    total = sum(len(j[4]) for j in jobs)
    with tqdm(total=total, desc="datagen", unit="problem", dynamic_ncols=True, mininterval=0.5) as bar:
        return _map(pool, shards.render_shard, jobs, bar, weight=lambda j: len(j[4]))
