"""Progress display and Ctrl-C for command lines: a small bar on a terminal, plain lines otherwise (no torch,
no tqdm)."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

BAR_WIDTH = 24  # characters of the bar


class ProgressBar:
    """Shows `sg2v.progress.Progress` events on `stream`: a bar redrawn in place when it is a terminal, one
    line per event otherwise; does nothing when not `enabled`. Leaving it as a context ends an open bar."""

    def __init__(self, stream: IO[str], prefix: str, enabled: bool = True):
        self.stream, self.prefix, self.enabled = stream, prefix, enabled
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._open = 0  # characters of the bar line on screen, 0: none

    def show(self, event: Any) -> None:
        """Draw one event."""
        pct = f"{100.0 * event.fraction:3.0f}%"
        if not self.tty:
            self.stream.write(f"{self.prefix}: {pct} {event.describe()}\n")
        else:
            filled = round(event.fraction * BAR_WIDTH)
            line = f"{self.prefix}: [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {pct} {event.describe()}"
            self.stream.write("\r" + line.ljust(self._open))
            self._open = len(line)
            if event.fraction >= 1.0:
                self.stream.write("\n")
                self._open = 0
        self.stream.flush()

    def part(self, first: int, stop: int, count: int) -> Callable[[Any], None] | None:
        """The progress callback of a call that generates videos first..stop of `count` (None when
        disabled): its events shown with the run's video numbers and share of the whole run."""
        if not self.enabled:
            return None
        def shown(event: Any) -> None:
            lo, hi = event.videos
            self.show(dataclasses.replace(event, videos=(first + lo, first + hi),
                                          fraction=(first + (stop - first) * event.fraction) / count))

        return shown

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = 0


@contextlib.contextmanager
def cancel_on_sigint(event: threading.Event) -> Iterator[threading.Event]:
    """Inside: the first Ctrl-C sets `event` (a generation given it stops at its next stage or step), a
    second raises KeyboardInterrupt. Only in the main thread; elsewhere signals stay as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
