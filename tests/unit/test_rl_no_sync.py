"""Which gradient-sync context an RL micro-batch gets: DDP's no_sync, never FSDP's (it must be
entered outside the root's forward, and a whole RL step runs inside it: it raised on a GPU)."""

from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

from lightning.pytorch.strategies import FSDPStrategy

from metacot.modules.rl import RLModule


def no_sync_of(strategy):
    return RLModule._no_sync(SimpleNamespace(_trainer=SimpleNamespace(strategy=strategy) if strategy else None))


def test_fsdp_gets_no_context():
    strategy = FSDPStrategy()
    strategy.block_backward_sync = lambda: (_ for _ in ()).throw(AssertionError("FSDP no_sync entered"))
    assert isinstance(no_sync_of(strategy), nullcontext)


def test_ddp_like_strategy_blocks_the_all_reduce():
    entered = []

    @contextmanager
    def block():
        entered.append(True)
        yield

    with no_sync_of(SimpleNamespace(block_backward_sync=block)):
        pass
    assert entered == [True]


def test_no_trainer_gets_no_context():
    assert isinstance(no_sync_of(None), nullcontext)
