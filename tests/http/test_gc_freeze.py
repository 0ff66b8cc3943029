"""After loading, the long-lived objects are out of the garbage collector's reach; later garbage is still collected."""

from __future__ import annotations

import gc
import weakref

from predictor.serving.kserve_model import freeze_loaded_objects


class Node:
    """A reference cycle, which only the cycle collector can free."""

    def __init__(self) -> None:
        self.me = self


def test_loaded_objects_are_frozen_and_new_cycles_still_collected() -> None:
    try:
        frozen = freeze_loaded_objects()
        assert frozen == gc.get_freeze_count() > 10_000  # pytest, torch, kserve... are all loaded here
        node = Node()
        alive = weakref.ref(node)
        del node
        gc.collect()
        assert alive() is None
        assert gc.get_freeze_count() == frozen  # a collection leaves the frozen objects alone
    finally:
        gc.unfreeze()
