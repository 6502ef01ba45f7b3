"""scripts/bench_generation.py on CPU: the comparison runs end to end on tiny sizes (identical greedy
outputs reported) and `--floor` times the fast path's matmuls over every length of the run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_generation", ROOT / "scripts" / "bench_generation.py")
B = importlib.util.module_from_spec(_spec)
sys.modules["bench_generation"] = B
_spec.loader.exec_module(B)


def test_cpu_comparison_with_floor_runs_and_reports_identical_outputs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_generation.py", "--model", "tiny", "--batch", "2", "--device", "cpu",
                                      "--new-tokens", "40", "--repeats", "1", "--threads", "1", "--floor"])
    threads = torch.get_num_threads()
    try:
        B.main()
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "identical greedy outputs: 2/2 vs generate, 2/2 vs generic" in out
    assert "floor: the step's matmuls alone take" in out and "(fast path: True)" in out


def test_floor_times_every_length_of_the_run(monkeypatch):
    class Args:
        vocab, prompt_len, new_tokens, dtype = 64, 20, 50, "float32"

    _, model, _ = B.build(Args(), "tiny", 3, torch.device("cpu"))
    timed_blocks = []
    real_repeat = B.timeit.repeat

    def repeat(fn, number, repeat):  # one quick timing, recording the attention spans asked for
        timed_blocks.append(fn)
        return real_repeat(fn, number=1, repeat=1)

    monkeypatch.setattr(B.timeit, "repeat", repeat)
    floor = B.matmul_floor(model, 3, Args.prompt_len, Args.new_tokens)
    # lengths 20..68 span blocks 1..3 of 32 positions: one attention timing each, then the projections
    assert len(timed_blocks) == 3 + 1
    assert floor["total"] == floor["gemm"] + floor["attention"] and min(floor.values()) > 0
