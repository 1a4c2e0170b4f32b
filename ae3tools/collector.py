"""Pausing Python's cycle collector around work that makes very many objects and no
cycles (a crafted ROMFS image lists 250,000 entries): the collections their number
sets off would each walk every one of them, a fifth to a third of the work."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the collector for the block; restored as found (a caller may have paused
    it already), whatever the block raises."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
