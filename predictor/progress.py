"""Progress of long steps: a tqdm bar on a terminal, plain INFO log lines (every 10%) otherwise."""

from __future__ import annotations

import logging
import sys
from types import TracebackType

logger = logging.getLogger(__name__)


class Progress:
    """Counts `total` units of work; `bar=None` means "a bar if stderr is a terminal"."""

    def __init__(self, total: float, desc: str, *, unit: str = "it", bar: bool | None = None) -> None:
        self.total = max(total, 1e-9)
        self.desc = desc
        self.done = 0.0
        self._logged_decile = -1
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def update(self, amount: float = 1.0, note: str = "") -> None:
        """Advance by `amount`; `note` is appended to the log line or shown after the bar."""
        self.done = min(self.total, self.done + amount)
        if self._bar is not None:
            self._bar.update(amount)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            return
        decile = int(10 * self.done / self.total)
        if decile > self._logged_decile:
            self._logged_decile = decile
            logger.info("%s: %d%%%s", self.desc, 10 * decile, f" ({note})" if note else "")

    def close(self) -> None:
        """Finish the bar (or the log lines)."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
