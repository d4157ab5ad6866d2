"""A self-contained demo: a synthetic shop warehouse, a local webhook receiver and a runner.

It exists so ``make demo`` shows real segments flowing to real (local) destinations on a fresh
clone, with no accounts, network or credentials. Nothing here is used by the engine itself.
"""

from syncer.demo.receiver import DemoReceiver, start_receiver
from syncer.demo.shop import SEGMENTS, advance, build, segment_members, segment_sizes

__all__ = [
    "SEGMENTS",
    "DemoReceiver",
    "advance",
    "build",
    "segment_members",
    "segment_sizes",
    "start_receiver",
]
