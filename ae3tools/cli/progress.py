"""Progress of long transfers on stderr: bars in a terminal, plain lines in a log.

A CI job or a production log has no terminal: a live bar there is printed once, at the
end, all bars at once. There each transfer gets lines of text instead, as esptool
prints its percentages: at the start and the end, at each 10 % but not more than once
a second (a small image is done in a line or two), and every 10 s while it moves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ae3tools.cli.common import err

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ae3tools.device.discovery import AttachedCamera
    from ae3tools.dfu.builder import FlashObserver

PLAIN_STEP_PERCENT = 10
PLAIN_MIN_SECONDS = 1.0  # between two lines, but for the last
PLAIN_EVERY_SECONDS = 10.0  # a line at least this often while bytes move


class PlainProgress:
    """A FlashObserver writing a transfer's progress as lines, for logs."""

    def __init__(
        self,
        say: Callable[[str], None],
        prefix: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say, self.prefix, self.clock = say, prefix, clock
        self.label, self.total = "", 0
        self.next_percent, self.last_time, self.last_done = 0, 0.0, -1

    def begin(self, label: str, total: int) -> None:
        self.label, self.total, self.next_percent, self.last_done = label, total, 0, -1
        self.last_time = self.clock()
        self.advance(0)

    def advance(self, done: int) -> None:
        percent = 100 * done // self.total if self.total else 100
        now = self.clock()
        since = now - self.last_time
        step = percent >= self.next_percent and since >= PLAIN_MIN_SECONDS
        overdue = since >= PLAIN_EVERY_SECONDS and done != self.last_done
        first_or_last = done == 0 or done == self.total
        if done != self.last_done and (first_or_last or step or overdue):
            self.say(f"{self.prefix}{self.label}: {percent}% ({done} of {self.total} bytes)")
            self.next_percent = (percent // PLAIN_STEP_PERCENT + 1) * PLAIN_STEP_PERCENT
            self.last_time, self.last_done = now, done

    def end(self) -> None:
        pass


_Bars = TypeVar("_Bars", bound="_LiveBars")


class _LiveBars:
    """Rich bars on stderr while the `with` block runs, when there are any (`progress`
    is None off a terminal, or when progress is not shown)."""

    progress: Progress | None = None

    def __enter__(self: _Bars) -> _Bars:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    @staticmethod
    def bars(label_width: int, *, time_left: bool = False) -> Progress:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        return Progress(
            TextColumn(f"{{task.description:<{label_width}}}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            *([TimeRemainingColumn()] if time_left else []),
            console=err,
        )


class ProgressBars(_LiveBars):
    """A FlashObserver for one camera: a rich bar per transfer in a terminal, plain
    lines otherwise, nothing when not `enabled` (--json)."""

    def __init__(self, enabled: bool) -> None:
        self.plain = PlainProgress(err.print) if enabled and not err.is_terminal else None
        if enabled and self.plain is None:
            self.progress = self.bars(16, time_left=True)
        self.task: Any = None

    def begin(self, label: str, total: int) -> None:
        if self.plain is not None:
            self.plain.begin(label, total)
        elif self.progress is not None:
            self.task = self.progress.add_task(label, total=total)

    def advance(self, done: int) -> None:
        if self.plain is not None:
            self.plain.advance(done)
        elif self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=done)

    def end(self) -> None:
        self.task = None


class CameraRows(_LiveBars):
    """Many cameras: a progress line per camera while it is flashed and a line when it
    finishes, on stderr; in a log, plain lines prefixed by the camera."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.lock = threading.Lock()  # plain lines from many workers, one at a time
        if enabled and err.is_terminal:
            self.progress = self.bars(42)
        self.rows: dict[str, TaskID] = {}

    def say(self, text: str) -> None:
        """A line above the rows (or in the log)."""
        with self.lock:
            err.print(text, soft_wrap=True)

    def observer(self, camera: AttachedCamera) -> FlashObserver:
        if self.progress is None:
            return PlainProgress(self.say, f"{camera.label}: ")
        task = self.progress.add_task(f"{camera.label} reaching", total=None)
        self.rows[camera.label] = task
        return _Row(self.progress, task, camera.label)

    def done(self, camera: str, line: str) -> None:
        """A camera finished: its row goes, its result line stays."""
        task = self.rows.pop(camera, None)
        if task is not None and self.progress is not None:
            self.progress.remove_task(task)
        self.say(line)


class _Row:
    def __init__(self, progress: Progress, task: TaskID, camera: str) -> None:
        self.progress, self.task, self.camera = progress, task, camera

    def begin(self, label: str, total: int) -> None:
        self.progress.update(
            self.task, description=f"{self.camera} {label}", total=total, completed=0
        )

    def advance(self, done: int) -> None:
        self.progress.update(self.task, completed=done)

    def end(self) -> None:
        pass
