"""Fault injection for reliability tests (PREDICTOR_FAULT_INJECTION); never set in production."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

FAULTS = ("oom-once", "oom-batches", "oom-always", "crash-once")


class InjectedCrash(BaseException):
    """Not an Exception, so the handler does not wrap it: what a bug in the batch loop would raise."""


def fault_hook(spec: str) -> Callable[[int], None]:
    """A handler.fault_hook that raises an allocation failure as torch reports it.

    oom-once: the first forward pass of two or more inputs; oom-batches: every pass of two or more
    inputs (the handler's split reaches single inputs, which succeed); oom-always: every pass (507);
    crash-once: the first forward pass raises InjectedCrash.
    """
    if spec not in FAULTS:
        raise ValueError(f"PREDICTOR_FAULT_INJECTION: expected one of {', '.join(FAULTS)}, got {spec!r}")
    lock = threading.Lock()
    fired = False

    def hook(batch_size: int) -> None:
        nonlocal fired
        if spec == "oom-always" or (batch_size > 1 and spec == "oom-batches"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)")
        with lock:
            if spec == "crash-once" and not fired:
                fired = True
                raise InjectedCrash("injected crash in the batch loop")
            if spec == "oom-once" and batch_size > 1 and not fired:
                fired = True
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)")

    logger.warning("fault injection active: %s (test setting; never use in production)", spec)
    return hook
