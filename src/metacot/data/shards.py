"""The work a datagen worker does: sample a chunk of problems, or search, render and write one shard.

Each worker process holds the trace engine in module state (`init_worker`), so a job carries only
a few problems. Every random choice is seeded from the job itself (`derive_seed`), never from the
worker, so the dataset does not depend on how many workers built it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from metacot import interrupts
from metacot.data.options import DataOptions
from metacot.data.tokenizer import TokenCounter

_STATE: dict[str, Any] = {}
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-able parts (stable across runs, processes and platforms)."""
    blob = _dumps(parts).encode()  # = json.dumps(parts, separators=(",", ":")), without a new encoder
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 1


def init_worker(task: Any, search: Any, linearization: Any, tokenizer_file: str,
                options: DataOptions, out_dir: str) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _STATE.update(task=task, search=search, lin=linearization, options=options, out_dir=Path(out_dir),
                  counter=TokenCounter(Tokenizer.from_file(tokenizer_file)))


def init_pool_worker(*args: Any) -> None:
    """`init_worker` for a pool process, which then freezes what is alive (modules, tokenizer,
    engine: it lives as long as the process) so that garbage collections, triggered every few
    hundred of the ~1e3 objects a trace allocates, no longer walk it.
    Signals are the parent's to handle: a forked worker inherits train.py's SIGTERM handler, which
    would print a traceback per worker when the pool is terminated; it dies quietly instead, and
    leaves Ctrl-C (sent to the whole terminal group) to the parent, which stops the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts.unblock_sigterm()  # forked with it blocked (build._pool): one sent meanwhile kills now
    init_worker(*args)
    gc.collect()
    gc.freeze()


def sample_chunk(job: tuple[str, int, int]) -> tuple[list[dict[str, Any]], float]:
    """Problems of chunk `k` of `split`: `n` of them from a seed derived from (seed, split, k);
    and the CPU seconds that took."""
    split, k, n = job
    start = time.process_time()
    problems = _STATE["task"].sample_problems(split, n, derive_seed(_STATE["options"].seed, split, "sample", k))
    return problems, time.process_time() - start


_PLAIN = bytes(range(0x20, 0x7F)) + b"\n"  # the ASCII that JSON writes as is, and newlines


def json_record(record: dict[str, Any]) -> bytes:
    """`json.dumps(record, separators=(",", ":")).encode()`, faster for its long "completion": when
    that is printable ASCII and newlines, escaping it is three byte replaces (the C encoder spends
    ~40 instructions per character on it, the largest cost of writing a record)."""
    text = record.get("completion")
    if isinstance(text, str) and text.isascii():
        raw = text.encode("ascii")
        if not raw.translate(None, _PLAIN):
            if b"\\" in raw:
                raw = raw.replace(b"\\", b"\\\\")
            if b'"' in raw:
                raw = raw.replace(b'"', b'\\"')
            keys = list(record)
            k = keys.index("completion")
            head = _dumps({key: record[key] for key in keys[:k]})[:-1]  # "{...", without the "}"
            tail = _dumps({key: record[key] for key in keys[k + 1:]})[1:]  # "...}", without the "{"
            return b"".join((head.encode(), b',"completion":"' if k else b'"completion":"',
                             raw.replace(b"\n", b"\\n"), b'",' if len(tail) > 1 else b'"', tail.encode()))
    return _dumps(record).encode()


@dataclass
class ShardResult:
    split: str
    index: int
    name: str
    bytes: int = 0
    traces: int = 0  # searches run
    solved: int = 0
    unsolved_dropped: int = 0
    overlong: int = 0
    records: int = 0
    cpu_seconds: float = 0.0  # this worker's CPU time for the shard (timing only, not in the manifest)
    trace_tokens: list[int] = field(default_factory=list)
    sequence_tokens: list[int] = field(default_factory=list)
    sha256: str = ""  # of the shard's bytes (hashed here, where they are in memory: cheap)


def render_shard(job: tuple[str, int, str, int, list[dict[str, Any]]]) -> ShardResult:
    """Search, render, count and write one shard; record ids are global problem indices x traces."""
    split, index, name, first, problems = job
    start = time.process_time()
    res = ShardResult(split, index, name)
    lines = render_records(res, first, problems)
    data = b"\n".join(lines) + b"\n" if lines else b""
    with open(_STATE["out_dir"] / name, "wb") as f:
        f.write(data)
    res.records, res.bytes, res.sha256 = len(lines), len(data), hashlib.sha256(data).hexdigest()
    res.cpu_seconds = time.process_time() - start
    return res


def preflight(splits: list[str]) -> None:
    """Sample one problem of each of `splits`, then search, render and count the first one as
    `render_shard` does, writing nothing: a task/search/format combination that cannot work raises
    here, once, in the process that builds, instead of in every worker."""
    searched = False
    for split in splits:
        problems, _ = sample_chunk((split, 0, 1))
        if problems and not searched:
            render_records(ShardResult(split, 0, ""), 0, problems[:1])
            searched = True


def render_records(res: ShardResult, first: int, problems: list[dict[str, Any]]) -> list[bytes]:
    """The JSON lines of `problems` (global indices from `first`) for split `res.split`; counts
    traces, drops and tokens into `res`."""
    split = res.split
    task, search, lin = _STATE["task"], _STATE["search"], _STATE["lin"]
    options: DataOptions = _STATE["options"]
    counter, render = _STATE["counter"], lin.render_counted
    per_problem = options.traces_per_problem if split == "train" else 1
    drop_unsolved = split == "train" and not options.keep_unsolved
    drop_overlong = options.overlong == "drop"
    lines: list[bytes] = []
    optimal_lengths = task.optimal_lengths(problems)  # batched: one vectorised call for some tasks
    for i, (problem, optimal) in enumerate(zip(problems, optimal_lengths, strict=True), start=first):
        seen: set[str] = set()
        for t in range(per_problem):
            trace = search.run(task, problem, derive_seed(options.seed, split, i, t))
            res.traces += 1
            res.solved += trace.solved
            if drop_unsolved and not trace.solved:
                res.unsolved_dropped += 1
                continue
            prompt, completion, n_prompt, n_trace = render(task, problem, trace, counter)
            if per_problem > 1:  # keep distinct traces only
                if completion in seen:
                    continue
                seen.add(completion)
            n_seq = n_prompt + n_trace + 2  # <s> prompt completion </s>
            if n_seq > options.max_tokens:
                res.overlong += 1
                if drop_overlong:
                    continue
            lines.append(json_record({
                "id": i * per_problem + t, "prompt": prompt, "completion": completion,
                "problem": problem, "solved": trace.solved,
                "solution_length": len(trace.solution) if trace.solved and trace.solution is not None else None,
                "optimal_length": optimal, "trace_tokens": n_trace, "prompt_tokens": n_prompt,
                "stats": trace.stats(),
            }))
            res.trace_tokens.append(n_trace)
            res.sequence_tokens.append(n_seq)
    return lines
