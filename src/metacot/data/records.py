"""A dataset on disk: its manifest (made here), its splits, and whether it can be trusted.

A dataset directory is trusted only when `manifest.json` is complete, its `config_hash` is the
one asked for, and every shard it lists is on disk with the size and (when recorded, as builds
since `shard_sha256` do) the sha256 it recorded (see docs/ARCHITECTURE.md, "Dataset on disk").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATASET_VERSION = 1
MANIFEST = "manifest.json"
BUILD_STATS = "build_stats.json"  # timings: not part of the (byte-identical) dataset
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val", "test_unseen")
RECORD_FIELDS = ("id", "prompt", "completion", "problem", "solved", "solution_length",
                 "optimal_length", "trace_tokens", "prompt_tokens", "stats")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.jsonl"


def read_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset_dir} has no {MANIFEST}: it is not a built dataset "
            "(build it with `python train.py stage=datagen ...`)"
        )
    return json.loads(path.read_text())


def why_untrusted(dataset_dir: str | Path, config_hash: str) -> str | None:
    """None when the dataset at `dataset_dir` is complete and matches `config_hash`, else why not."""
    d = Path(dataset_dir)
    if not d.is_dir():
        return "it does not exist"
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except FileNotFoundError:
        return f"it has no {MANIFEST} (an interrupted build?)"
    except (OSError, ValueError) as e:
        return f"its {MANIFEST} is unreadable ({e})"
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        return f"its {MANIFEST} does not say complete"
    if manifest.get("version") != DATASET_VERSION:
        return f"it has dataset version {manifest.get('version')!r}, this metacot writes {DATASET_VERSION}"
    if manifest.get("config_hash") != config_hash:
        return f"its config hash {manifest.get('config_hash')!r} is not {config_hash!r}"
    if not (d / TOKENIZER_DIR / "tokenizer.json").is_file():
        return "its tokenizer is missing"
    sizes = manifest.get("shard_bytes", {})
    names = [(split, name) for split, split_names in manifest.get("shards", {}).items() for name in split_names]
    stats = []
    for split, name in names:  # sizes first: a cheap check that catches truncated and missing shards
        path = d / name
        if not path.is_file():
            return f"shard {name} of split {split} is missing"
        st = path.stat()
        if st.st_size != sizes.get(name):
            return f"shard {name} has {st.st_size} bytes, the manifest says {sizes.get(name)}"
        stats.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    digests = manifest.get("shard_sha256")  # absent in datasets built before it was recorded
    verified = (str(d.resolve()), config_hash, tuple(stats))
    if digests is not None and verified not in _VERIFIED:
        for _split, name in names:
            if file_sha256(d / name) != digests.get(name):
                return f"shard {name} does not match its checksum (corrupted on disk?)"
        _VERIFIED.add(verified)
    return None


# Datasets whose shards this process hashed and found intact, with the files' sizes, times and
# inodes then: every stage of a pipeline checks its dataset, and hashing GBs of shards once is enough
# while no file was rewritten since.
_VERIFIED: set[tuple] = set()


def content_digest(dataset_dir: str | Path) -> str | None:
    """A hash of what a model trained on the dataset saw: its shards' bytes (the manifest's sha256s)
    and its tokenizer. The same for a dataset rebuilt byte for byte (e.g. after a refactor that changed
    the directory's code hash but no trace); None for datasets built before shard sha256s existed."""
    d = Path(dataset_dir)
    digests = read_manifest(d).get("shard_sha256")
    if digests is None:
        return None
    h = hashlib.sha256(json.dumps(digests, sort_keys=True).encode())
    h.update(file_sha256(d / TOKENIZER_DIR / "tokenizer.json").encode())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def iter_split(dataset_dir: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """Records of `split` in order (one JSON object per line, shard after shard)."""
    manifest = read_manifest(dataset_dir)
    if split not in manifest["shards"]:
        raise KeyError(f"split {split!r} is not in {dataset_dir} (it has {sorted(manifest['shards'])})")
    for name in manifest["shards"][split]:
        path = Path(dataset_dir) / name
        with open(path, "rb") as f:  # bytes: json.loads decodes UTF-8, and bad bytes fail there too
            for number, line in enumerate(f, start=1):
                if line.strip():
                    yield _record(line, path, number)


def _record(line: bytes, path: Path, number: int) -> dict[str, Any]:
    """One JSON line; a damaged one is an error that names the shard, the line and the way out."""
    try:
        return json.loads(line)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(
            f"{path} line {number} is not valid JSON ({e}): the dataset is damaged; delete {path.parent} "
            "and run again to rebuild it"
        ) from None


def read_split(dataset_dir: str | Path, split: str) -> list[dict[str, Any]]:
    return list(iter_split(dataset_dir, split))


def why_empty(manifest: dict[str, Any], split: str) -> str | None:
    """Why `split` of a built dataset holds no record, and what to change (None when it holds some)."""
    if manifest["counts"].get(split):
        return None
    if manifest.get("config", {}).get("data", {}).get(split) == 0:
        return f"data.{split}=0 asks for no {split} problems"
    if not manifest["problems"].get(split):
        return f"the task gave no {split} problems"
    traces, overlong = manifest["traces"].get(split, 0), manifest["overlong"]
    reasons = []
    if overlong["policy"] == "drop" and overlong["count"].get(split):
        reasons.append(f"{overlong['count'][split]} of its {traces} traces were longer than data.max_tokens="
                       f"{overlong['max_tokens']} and dropped (data.overlong=drop): raise data.max_tokens "
                       "or set data.overlong=keep")
    if manifest["unsolved_dropped"].get(split):
        reasons.append(f"{manifest['unsolved_dropped'][split]} of its {traces} traces were unsolved and dropped "
                       "(data.keep_unsolved=false): set data.keep_unsolved=true or give the search more budget")
    return "; ".join(reasons) or f"none of its {traces} traces was kept"


def token_stats(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "max": None}
    v = sorted(values)
    return {"n": len(v), "mean": round(sum(v) / len(v), 2), "p50": v[(len(v) - 1) // 2],
            "p95": v[min(len(v) - 1, int(0.95 * len(v)))], "max": v[-1]}


def make_manifest(key: dict[str, Any], digest: str, options: Any, problems: dict[str, int],
                  results: list) -> dict[str, Any]:
    """The manifest of a finished build (`results`: the workers' `ShardResult`s, in shard order)."""
    by_split = {s: [r for r in results if r.split == s] for s in SPLITS}

    def total(split: str, attr: str) -> int:
        return sum(getattr(r, attr) for r in by_split[split])

    def tokens(split_list: list[str], attr: str) -> list[int]:
        return [n for s in split_list for r in by_split[s] for n in getattr(r, attr)]

    trace_tokens = token_stats(tokens(list(SPLITS), "trace_tokens"))
    trace_tokens["by_split"] = {s: token_stats(tokens([s], "trace_tokens")) for s in SPLITS}
    trace_tokens["max_sequence"] = max(tokens(list(SPLITS), "sequence_tokens"), default=None)
    trace_tokens["exact"] = True  # every record was counted with the dataset's tokenizer
    return {
        "version": DATASET_VERSION,
        "config_hash": digest,
        "config": key,
        "counts": {s: total(s, "records") for s in SPLITS},
        "problems": {s: problems[s] for s in SPLITS},
        "traces": {s: total(s, "traces") for s in SPLITS},
        "symbolic_solve_rate": {s: round(total(s, "solved") / total(s, "traces"), 6) if total(s, "traces") else None
                                for s in SPLITS},
        "unsolved_dropped": {s: total(s, "unsolved_dropped") for s in SPLITS},
        "trace_tokens": trace_tokens,
        "overlong": {"policy": options.overlong, "max_tokens": options.max_tokens,
                     "count": {s: total(s, "overlong") for s in SPLITS}},
        "shards": {s: [r.name for r in by_split[s]] for s in SPLITS},
        "shard_bytes": {r.name: r.bytes for r in results},
        "shard_sha256": {r.name: r.sha256 for r in results},
        "complete": True,
    }
