"""The dataset builder: counts, manifest, records, splits, overlong and unsolved policies,
determinism (byte-identical, any worker count), atomicity and the cache check."""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
from pathlib import Path

import pytest

from metacot.data import build as build_mod
from metacot.data import shards
from metacot.data.build import build_dataset, dataset_path
from metacot.data.options import DataOptions
from metacot.data.records import RECORD_FIELDS, SPLITS, read_manifest, read_split, why_empty, why_untrusted
from metacot.data.tokenizer import load_tokenizer
from metacot.linearization.base import Linearization, ParsedTrace
from metacot.search.astar import AStarSearch
from metacot.tasks.base import SPLITS as TASK_SPLITS
from tests.unit.toy_tasks import GraphTask


class EventsLinearization(Linearization):
    """A minimal test format: one line per event, then the answer."""

    name = "events"

    def render(self, task, problem, trace):
        lines = [f"{e.kind} {e.node} {task.state_text(problem, e.state) if e.state is not None else ''}"
                 for e in trace.events]
        lines.append("answer " + " ".join(trace.solution or ["none"]))
        return task.prompt_text(problem), "\n".join(lines)

    def parse(self, task, problem, text):
        return ParsedTrace()

    def keywords(self):
        return ["generate", "expand", "dead_end", "goal", "budget", "answer", "go", "none", "from", "to", "edges"]


class PoolTask(GraphTask):
    """Each split draws (with replacement across seeds) from a fixed pool of `pool` problems, and
    train and val share half their pools: the builder must dedupe and keep splits disjoint."""

    name = "pool"

    def __init__(self, pool: int = 30):
        super().__init__()
        self.pool = pool

    def sample_problems(self, split, n, seed):
        start = {"train": 0, "val": self.pool // 2, "test_unseen": 10 * self.pool}[split]
        ids = list(range(start, start + self.pool))
        picked = random.Random(seed).sample(ids, min(n, len(ids)))
        return [self.make_problem(i) for i in picked]


def small(**kw) -> DataOptions:
    base = dict(train=60, val=12, test_unseen=12, shard_size=25, workers=1, max_tokens=10_000)
    base.update(kw)
    return DataOptions(**base)


ENGINE = (GraphTask(), AStarSearch(), EventsLinearization())


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "build_stats.json"}


def test_end_to_end_counts_manifest_and_records(tmp_path):
    opts = small(keep_unsolved=True)
    d = build_dataset(*ENGINE, opts, tmp_path)
    assert d.name.startswith("graph-astar-events-") and len(d.name.rsplit("-", 1)[1]) == 12
    m = read_manifest(d)
    assert m["complete"] is True and m["config_hash"] == d.name.rsplit("-", 1)[1]
    assert m["counts"] == m["problems"] == m["traces"] == {"train": 60, "val": 12, "test_unseen": 12}
    assert m["shards"]["train"] == ["train-00000.jsonl", "train-00001.jsonl", "train-00002.jsonl"]
    tok = load_tokenizer(d / "tokenizer")
    ids_by_split = {}
    for split in SPLITS:
        recs = read_split(d, split)
        assert len(recs) == m["counts"][split]
        assert [r["id"] for r in recs] == list(range(len(recs)))
        solved = 0
        for r in recs:
            assert set(RECORD_FIELDS) <= set(r)
            assert r["trace_tokens"] == len(tok(r["completion"], add_special_tokens=False)["input_ids"])
            assert r["prompt_tokens"] == len(tok(r["prompt"], add_special_tokens=False)["input_ids"])
            assert set(r["stats"]) == {"nodes", "expansions", "backtracks", "max_depth"}
            assert (r["solution_length"] is not None) == r["solved"]
            if r["solved"]:
                assert r["optimal_length"] is not None and r["solution_length"] >= r["optimal_length"]
            solved += r["solved"]
        assert m["symbolic_solve_rate"][split] == pytest.approx(solved / len(recs))
        ids_by_split[split] = {ENGINE[0].problem_id(r["problem"]) for r in recs}
        assert len(ids_by_split[split]) == len(recs)
    assert not ids_by_split["train"] & ids_by_split["val"]
    assert not (ids_by_split["train"] | ids_by_split["val"]) & ids_by_split["test_unseen"]
    all_tokens = sorted(r["trace_tokens"] for s in SPLITS for r in read_split(d, s))
    assert m["trace_tokens"]["max"] == all_tokens[-1]
    assert m["trace_tokens"]["mean"] == pytest.approx(sum(all_tokens) / len(all_tokens), abs=0.01)
    assert m["trace_tokens"]["p50"] == all_tokens[(len(all_tokens) - 1) // 2]
    assert m["config"]["data"]["train"] == 60 and "workers" not in m["config"]["data"]
    stats = json.loads((d / "build_stats.json").read_text())
    assert stats["traces"] == 84 and stats["traces_per_s"] > 0
    assert 0 < stats["sample_cpu_seconds"] <= stats["worker_cpu_seconds"]
    assert stats["cpu_us_per_trace"] == pytest.approx(1e6 * stats["worker_cpu_seconds"] / 84, abs=1e6 * 5e-4 / 84 + 0.1)


def test_unsolved_dropped_from_train_only(tmp_path):
    m = read_manifest(build_dataset(*ENGINE, small(), tmp_path))
    assert 0 < m["unsolved_dropped"]["train"] < 60  # the toy graphs are sometimes disconnected
    assert m["counts"]["train"] == round(60 * m["symbolic_solve_rate"]["train"]) == 60 - m["unsolved_dropped"]["train"]
    assert m["counts"]["val"] == 12 and m["unsolved_dropped"]["val"] == 0
    assert all(r["solved"] for r in read_split(tmp_path / dataset_path(*ENGINE, small(), tmp_path).name, "train"))


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_overlong_policy(tmp_path, policy):
    full = build_dataset(*ENGINE, small(keep_unsolved=True), tmp_path / "full")
    lengths = {s: [r["prompt_tokens"] + r["trace_tokens"] + 2 for r in read_split(full, s)] for s in SPLITS}
    limit = sorted(lengths["train"])[len(lengths["train"]) // 2]  # about half the traces do not fit
    d = build_dataset(*ENGINE, small(keep_unsolved=True, max_tokens=limit, overlong=policy), tmp_path / "cut")
    m = read_manifest(d)
    for split in SPLITS:
        over = sum(n > limit for n in lengths[split])
        assert m["overlong"]["count"][split] == over
        kept = [r["prompt_tokens"] + r["trace_tokens"] + 2 for r in read_split(d, split)]
        if policy == "drop":
            assert m["counts"][split] == len(lengths[split]) - over and max(kept, default=0) <= limit
        else:
            assert kept == lengths[split]
    assert m["overlong"]["count"]["train"] > 0 and m["overlong"]["policy"] == policy


def test_same_seed_byte_identical_and_worker_count_invariant(tmp_path):
    a = build_dataset(*ENGINE, small(workers=1), tmp_path / "a")
    b = build_dataset(*ENGINE, small(workers=2), tmp_path / "b")
    c = build_dataset(*ENGINE, small(workers=1, seed=1), tmp_path / "c")
    assert a.name == b.name != c.name
    fa, fb = files(a), files(b)
    assert set(fa) == set(fb) and "tokenizer/tokenizer.json" in fa
    assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]
    assert read_split(a, "train") != read_split(c, "train")
    assert json.loads((b / "build_stats.json").read_text())["workers"] == 2


def test_problems_deduped_topped_up_and_splits_disjoint(tmp_path):
    task = PoolTask(pool=30)  # chunks of 5 drawn from 30 problems overlap, val overlaps train
    d = build_dataset(task, AStarSearch(), EventsLinearization(),
                      small(train=20, val=8, test_unseen=40, shard_size=5, keep_unsolved=True), tmp_path)
    m = read_manifest(d)
    ids = {s: [task.problem_id(r["problem"]) for r in read_split(d, s)] for s in SPLITS}
    assert len(ids["train"]) == len(set(ids["train"])) == 20
    assert len(ids["val"]) == len(set(ids["val"])) == 8 and not set(ids["train"]) & set(ids["val"])
    assert m["problems"]["test_unseen"] == 30  # the task ran out of problems: no more, no hang


def test_traces_per_problem(tmp_path):
    with pytest.raises(ValueError, match="search.shuffle=true"):
        build_dataset(*ENGINE[:1], AStarSearch(), EventsLinearization(), small(traces_per_problem=3), tmp_path)
    task = GraphTask(num_nodes=9, edge_prob=0.5, unit_costs=True)
    d = build_dataset(task, AStarSearch(shuffle=True), EventsLinearization(),
                      small(train=20, val=4, test_unseen=4, traces_per_problem=3, shard_size=12), tmp_path)
    train = read_split(d, "train")
    assert len({r["id"] for r in train}) == len(train) > 20  # shuffled ties give distinct traces
    by_problem: dict = {}
    for r in train:
        assert r["id"] // 3 < 20
        by_problem.setdefault(r["id"] // 3, []).append(r["completion"])
    assert all(len(c) == len(set(c)) for c in by_problem.values())
    assert len(read_split(d, "val")) <= 4  # evaluation splits get one trace per problem


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(job):
        calls.append(job)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(job)

    real = shards.render_shard
    monkeypatch.setattr(shards, "render_shard", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_dataset(*ENGINE, small(), tmp_path)
    assert list(tmp_path.iterdir()) == []  # no final directory, no temporary one left behind
    monkeypatch.setattr(shards, "render_shard", real)
    d = build_dataset(*ENGINE, small(), tmp_path)
    assert why_untrusted(d, d.name.rsplit("-", 1)[1]) is None


def overwrite_inside(shard: Path, n: int = 20) -> None:
    """Damage `n` bytes in the middle of `shard`, keeping its size (a bad disk, a stray write)."""
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + n] = b"#" * n
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["missing", "corrupt", "mismatched", "incomplete", "truncated_shard",
                                    "same_size_shard"])
def test_untrusted_directory_is_rebuilt(tmp_path, capsys, damage):
    opts = small()
    d = build_dataset(*ENGINE, opts, tmp_path)
    good = files(d)
    manifest = d / "manifest.json"
    if damage == "missing":
        manifest.unlink()
    elif damage == "corrupt":
        manifest.write_text('{"complete": tr')
    elif damage in ("mismatched", "incomplete"):
        m = json.loads(manifest.read_text())
        m.update(config_hash="0" * 12) if damage == "mismatched" else m.update(complete=False)
        manifest.write_text(json.dumps(m))
    elif damage == "truncated_shard":
        shard = d / "train-00000.jsonl"
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        overwrite_inside(d / "train-00000.jsonl")
    capsys.readouterr()
    assert build_dataset(*ENGINE, opts, tmp_path) == d
    err = capsys.readouterr().err
    assert "rebuilding" in err
    if damage == "same_size_shard":
        assert "because shard train-00000.jsonl does not match its checksum" in err
    assert files(d) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [d.name]


def test_trusted_directory_is_reused(tmp_path, monkeypatch):
    d = build_dataset(*ENGINE, small(), tmp_path)
    monkeypatch.setattr(build_mod, "_build_into", lambda *a, **k: pytest.fail("rebuilt a trusted dataset"))
    assert build_dataset(*ENGINE, small(workers=2), tmp_path) == d  # workers do not change the data


def test_other_ranks_wait_for_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(build_mod, "WAIT_TIMEOUT_S", 0.0)
    with pytest.raises(TimeoutError, match="rank 0"):
        build_dataset(*ENGINE, small(), tmp_path)
    assert not any(tmp_path.iterdir())  # rank 1 never writes
    monkeypatch.setenv("RANK", "0")
    d = build_dataset(*ENGINE, small(), tmp_path)
    monkeypatch.setenv("RANK", "1")
    assert build_dataset(*ENGINE, small(), tmp_path) == d


def test_options_validation():
    for bad in (dict(overlong="split"), dict(train=-1), dict(shard_size=0), dict(workers=0),
                dict(tokenizer={"numbers": "bytes"})):
        with pytest.raises(ValueError, match="data."):
            DataOptions(**bad)
    assert DataOptions(tokenizer={"numbers": "digits"}).tokenizer.numbers == "digits"
    assert "workers" not in DataOptions().key() and TASK_SPLITS == SPLITS


def test_dead_build_leftovers_are_removed(tmp_path):
    target = dataset_path(*ENGINE, small(), tmp_path)
    dead = tmp_path / f".{target.name}.tmp-{build_mod._HOST}-999999999-abc"  # no such pid
    live = tmp_path / f".{target.name}.tmp-{build_mod._HOST}-1-abc"  # pid 1 is alive
    dead.mkdir()
    live.mkdir()
    build_dataset(*ENGINE, small(), tmp_path)
    assert not dead.exists() and live.exists()


def test_pretrained_tokenizer_path(tmp_path):
    from metacot.data.tokenizer import build_tokenizer

    pre = tmp_path / "pretrained"
    build_tokenizer(["generate", "expand", "goal"], numbers="digits").save_pretrained(str(pre))
    opts = small(tokenizer={"path": str(pre)})
    d = build_dataset(*ENGINE, opts, tmp_path / "data")
    assert (d / "tokenizer" / "tokenizer.json").read_bytes() != b""
    tok = load_tokenizer(d / "tokenizer")
    assert tok.convert_ids_to_tokens(tok("goal 12", add_special_tokens=False)["input_ids"]) == ["goal", "1", "##2"]
    r = read_split(d, "train")[0]
    assert r["trace_tokens"] == len(tok(r["completion"], add_special_tokens=False)["input_ids"])
    # the hash follows the tokenizer's content, not its path
    build_tokenizer(["generate"], numbers="digits").save_pretrained(str(pre))
    assert dataset_path(*ENGINE, opts, tmp_path / "data") != d
    with pytest.raises(FileNotFoundError, match="data.tokenizer.path"):
        build_dataset(*ENGINE, small(tokenizer={"path": str(tmp_path / "nope")}), tmp_path / "data")


def test_dataset_key_is_stable_or_refused():
    class Opaque:
        pass

    class Described:
        def describe(self):
            return {"p": 1}

    lin = EventsLinearization()
    lin.dropping = Described()
    key = build_mod.dataset_key(ENGINE[0], ENGINE[1], lin, small())
    assert key["linearization"]["dropping"] == {"p": 1}
    lin.dropping = Opaque()
    with pytest.raises(TypeError, match="describe"):
        build_mod.dataset_key(ENGINE[0], ENGINE[1], lin, small())


def test_manifest_records_each_shard_sha256(tmp_path):
    d = build_dataset(*ENGINE, small(), tmp_path)
    m = read_manifest(d)
    names = [n for s in SPLITS for n in m["shards"][s]]
    assert sorted(m["shard_sha256"]) == sorted(names) == sorted(m["shard_bytes"])
    assert all(m["shard_sha256"][n] == hashlib.sha256((d / n).read_bytes()).hexdigest() for n in names)


def test_manifest_without_checksums_is_trusted_on_sizes_and_a_bad_line_names_its_shard(tmp_path):
    d = build_dataset(*ENGINE, small(), tmp_path)
    digest = d.name.rsplit("-", 1)[1]
    m = read_manifest(d)
    del m["shard_sha256"]  # as a dataset built before checksums were recorded
    (d / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    shard = d / "train-00000.jsonl"
    lines = shard.read_bytes().split(b"\n")
    lines[3] = lines[3][:10] + b"#" * 20 + lines[3][30:]  # same size, no longer JSON
    shard.write_bytes(b"\n".join(lines))
    assert why_untrusted(d, digest) is None  # no checksum to compare: sizes only, as before
    with pytest.raises(ValueError, match=r"train-00000\.jsonl line 4 is not valid JSON .*delete .*rebuild"):
        read_split(d, "train")
    bad = bytearray(shard.read_bytes())
    bad[5] = 0xFF  # not UTF-8 either
    shard.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"train-00000\.jsonl line 1 is not valid JSON"):
        read_split(d, "train")


def test_empty_split_says_why():
    base = {"counts": {"train": 0, "val": 3}, "problems": {"train": 50, "val": 3}, "traces": {"train": 50, "val": 3},
            "unsolved_dropped": {"train": 0, "val": 0}, "config": {"data": {"train": 50, "val": 3}},
            "overlong": {"policy": "drop", "max_tokens": 10, "count": {"train": 50, "val": 0}}}
    assert why_empty(base, "val") is None
    assert why_empty(base, "train") == ("50 of its 50 traces were longer than data.max_tokens=10 and dropped "
                                        "(data.overlong=drop): raise data.max_tokens or set data.overlong=keep")
    unsolved = {**base, "overlong": {"policy": "drop", "max_tokens": 10, "count": {"train": 0}},
                "unsolved_dropped": {"train": 50}}
    assert "50 of its 50 traces were unsolved and dropped (data.keep_unsolved=false)" in why_empty(unsolved, "train")
    none_asked = {**base, "problems": {"train": 0}, "traces": {"train": 0}, "config": {"data": {"train": 0}}}
    assert why_empty(none_asked, "train") == "data.train=0 asks for no train problems"


class BrokenSearch(AStarSearch):
    """A search option this task's problems cannot satisfy (as search=dfs_sos on mazes)."""

    def run(self, task, problem, seed):
        raise ValueError("search.prune_threshold='target' names no numeric field of the problem")


def test_preflight_turns_a_combination_that_cannot_work_into_one_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(build_mod, "_pool", lambda *a: pytest.fail("started workers for a config that cannot work"))
    with pytest.raises(build_mod.ConfigError, match="names no numeric field.*task=graph search=astar"):
        build_dataset(ENGINE[0], BrokenSearch(), ENGINE[2], small(workers=2), tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_preflight_samples_every_split_asked_for(tmp_path):
    class NoVal(GraphTask):
        def sample_problems(self, split, n, seed):
            if split == "val":
                raise ValueError("val_fraction=0 leaves val empty")
            return super().sample_problems(split, n, seed)

    with pytest.raises(build_mod.ConfigError, match="val_fraction=0 leaves val empty"):
        build_dataset(NoVal(), AStarSearch(), EventsLinearization(), small(), tmp_path)
    d = build_dataset(NoVal(), AStarSearch(), EventsLinearization(), small(val=0), tmp_path)
    assert read_manifest(d)["counts"]["val"] == 0


@pytest.mark.parametrize("workers", [1, 2])  # 1: the check and the build share this process
def test_preflight_changes_no_byte(tmp_path, monkeypatch, workers):
    calls = []
    real = shards.preflight
    monkeypatch.setattr(shards, "preflight", lambda splits: (calls.append(splits), real(splits)))
    with_check = build_dataset(*ENGINE, small(workers=workers), tmp_path / "a")
    assert calls == [list(SPLITS)]
    monkeypatch.setattr(shards, "preflight", lambda splits: None)
    without = build_dataset(*ENGINE, small(workers=workers), tmp_path / "b")
    assert with_check.name == without.name and files(with_check) == files(without)


def test_a_dataset_is_as_readable_as_the_umask_allows(tmp_path):
    old = os.umask(0o027)
    try:
        d = build_dataset(*ENGINE, small(train=10, val=2, test_unseen=2), tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o750  # mkdtemp's 0700 opened up as far as the umask says
    assert stat.S_IMODE((d / "train-00000.jsonl").stat().st_mode) == 0o640


def test_code_that_writes_traces_is_part_of_the_dataset_key(tmp_path, monkeypatch):
    """Editing a format's render (here a user's own format, outside metacot) gives another dataset:
    `describe()` sees only options, so the key also hashes the engine's and the plugin's source."""
    import importlib
    import sys

    plugin = tmp_path / "my_format.py"
    source = ("from tests.unit.test_build import EventsLinearization\n\n\n"
              "class MyFormat(EventsLinearization):\n    name = 'mine'\n")
    plugin.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("my_format")
    monkeypatch.setitem(sys.modules, "my_format", module)  # removed again after the test
    before = dataset_path(ENGINE[0], ENGINE[1], module.MyFormat(), small(), tmp_path)
    assert before == dataset_path(ENGINE[0], ENGINE[1], module.MyFormat(), small(), tmp_path)  # stable
    plugin.write_text(source + "    # a changed render\n")
    assert dataset_path(ENGINE[0], ENGINE[1], module.MyFormat(), small(), tmp_path) != before
    key = build_mod.dataset_key(*ENGINE, small())
    assert key["code"] == build_mod.engine_digest(type(ENGINE[0]), type(ENGINE[1]), type(ENGINE[2]))


def test_the_code_hash_leaves_out_pythons_own_library(monkeypatch):
    """Every engine class derives from abc.ABC: the standard library (different on each Python
    install) must not give each machine its own dataset directory."""
    import abc

    before = build_mod.engine_digest(type(ENGINE[2]))
    monkeypatch.setattr(build_mod, "_digest_files", lambda files: [label for label, _ in files])
    labels = build_mod.engine_digest(type(ENGINE[2]))
    assert "module:abc" not in labels and "module:tests.unit.test_build" in labels
    assert abc.ABC in type(ENGINE[2]).__mro__ and isinstance(before, str)


def test_shards_are_hashed_once_per_process_while_unchanged(tmp_path, monkeypatch):
    """Every stage of a pipeline checks its dataset: the sha256 of GBs of shards is computed once,
    and again only when a shard file was rewritten (size, mtime or inode changed)."""
    from metacot.data import records

    d = build_dataset(*ENGINE, small(), tmp_path)
    digest = read_manifest(d)["config_hash"]
    hashed = []
    real = records.file_sha256
    monkeypatch.setattr(records, "file_sha256", lambda p: (hashed.append(p.name), real(p))[1])
    monkeypatch.setattr(records, "_VERIFIED", set())
    assert why_untrusted(d, digest) is None and hashed
    n = len(hashed)
    assert why_untrusted(d, digest) is None and len(hashed) == n  # unchanged: not hashed again
    shard = d / "train-00000.jsonl"
    overwrite_inside(shard)
    os.utime(shard, ns=(1, 1))  # even a rewrite that kept the size and forged the time: other mtime
    assert "checksum" in why_untrusted(d, digest)


def test_content_digest_follows_the_bytes_not_the_directory(tmp_path):
    from metacot.data.records import content_digest

    a = build_dataset(*ENGINE, small(), tmp_path / "a")
    b = build_dataset(*ENGINE, small(), tmp_path / "b")
    assert content_digest(a) == content_digest(b) is not None  # same traces and tokenizer
    assert content_digest(build_dataset(*ENGINE, small(train=12), tmp_path / "a")) != content_digest(a)
    m = json.loads((a / "manifest.json").read_text())
    del m["shard_sha256"]
    (a / "manifest.json").write_text(json.dumps(m))
    assert content_digest(a) is None  # built before checksums: unknown
