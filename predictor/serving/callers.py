"""Who waits for a piece of work: set per request by each protocol adapter, read by the inference queue."""

from __future__ import annotations

import contextvars
from collections.abc import Callable


class Caller:
    """The client of one request, as its protocol adapter sees it: `leave()` once it is gone.

    Set per request in `current_caller` (HTTP: the request middleware, on http.disconnect; gRPC: when
    the call's context is cancelled); work in the queue registers what stops it with `on_leave`.
    """

    def __init__(self) -> None:
        self.gone = False
        self._on_leave: list[Callable[[], None]] = []

    def on_leave(self, callback: Callable[[], None]) -> None:
        """Run callback (on the event loop) when the client leaves; at once if it already has."""
        if self.gone:
            callback()
        else:
            self._on_leave.append(callback)

    def leave(self) -> None:
        """The client is gone: stop what it was waiting for."""
        if self.gone:
            return
        self.gone = True
        callbacks, self._on_leave = self._on_leave, []
        for callback in callbacks:
            callback()


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("predictor_caller",
                                                                             default=None)
