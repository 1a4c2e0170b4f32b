"""`flash --all`, several --serial/--path, `--station`: many cameras, presented.

The work is `ae3tools.device.fleet`'s; this module shows it: a progress line per camera, a
line per finished camera, the final table or JSON report, the streamed JSON events of
`--json-progress`, and the station's `--log` of one JSON line per camera.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ae3tools.board import BOOTLOADER_PID, USB_VID
from ae3tools.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    emit_json,
    envelope,
    err,
    new_table,
    out,
    plural,
    print_table,
    styled,
)
from ae3tools.cli.progress import CameraRows
from ae3tools.cli.target import VIRTUAL_MARK, Target, shut
from ae3tools.fileio import file_sha256, refuse_output_over_input
from ae3tools.findings import DeviceError, UsageError

if TYPE_CHECKING:
    from rich.table import Table

    from ae3tools.device.discovery import AttachedCamera, Selector
    from ae3tools.device.fleet import CameraResult, FlashJob, Station, Worker
    from ae3tools.dfu.builder import FlashObserver
    from ae3tools.release.bundle import BundleImage
    from ae3tools.release.openmv_zip import FlashSource

PROGRESS_STEPS = 50  # --json-progress: at most this many events per transfer


def firmware_versions(images: Sequence[BundleImage]) -> dict[str, Any]:
    """What the firmware images say they are, by role, for reports and logs."""
    from ae3tools.formats.firmware import identities

    found = identities({image.role: image.data for image in images})
    return {role.value: identity.as_dict() for role, identity in found.items()}


class EventStream:
    """`--json-progress`: one JSON object per line on stdout, from any worker thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields})
        with self.lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def observer(self, camera: AttachedCamera) -> FlashObserver:
        return _JsonProgress(self, camera.label)


class _JsonProgress:
    """A camera's transfers as `progress` events: at the start, every 2 %, at the end."""

    def __init__(self, stream: EventStream, camera: str) -> None:
        self.stream, self.camera = stream, camera
        self.step, self.total, self.next_at = "", 0, 0

    def begin(self, label: str, total: int) -> None:
        self.step, self.total, self.next_at = label, total, 0
        self.advance(0)

    def advance(self, done: int) -> None:
        if done >= self.next_at or done == self.total:
            self.next_at = done + max(1, self.total // PROGRESS_STEPS)
            self.stream.emit(
                "progress", camera=self.camera, step=self.step, done=done, total=self.total
            )

    def end(self) -> None:
        pass


def result_line(result: CameraResult) -> str:
    if result.ok:
        return (
            f"{result.camera.label}: {result.outcome} in {result.seconds:.1f} s "
            f"({result.written} of {plural(result.blocks, 'block')} written; {result.after})"
        )
    return f"{result.camera.label}: FAILED after {result.seconds:.1f} s: {result.error}"


class RunLog:
    """`--log FILE`: one JSON line per camera, appended and flushed as each finishes."""

    def __init__(self, path: Path, fields: dict[str, Any]) -> None:
        if path.exists() and not path.is_file():
            # A FIFO blocks with no reader, a tty refuses fsync, /dev/full loses every line:
            # a record of a production run is a file.
            raise UsageError(f"--log {path}: not a regular file")
        if not path.parent.is_dir():
            raise UsageError(f"--log {path}: the directory {path.parent} does not exist")
        try:
            self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"--log {path}: {exc.strerror}") from None
        self.path, self.fields = path, fields
        self.lock = threading.Lock()
        self.lost = 0  # records that could not be written
        self.error: str | None = None  # why the first of them was not

    def write(self, result: CameraResult) -> None:
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = {
            "time": when,
            **self.fields,
            "bootloader_version": result.device.version if result.device else None,
            **result.as_dict(),
        }
        line = (json.dumps(record) + "\n").encode()
        with self.lock:
            try:
                if self.fd is None:
                    raise OSError("the log was closed before this camera finished")
                os.write(self.fd, line)  # one write per line: O_APPEND keeps lines whole
                os.fsync(self.fd)
            except OSError as exc:  # a full disk must not stop the station: said at the end
                self.lost += 1
                self.error = self.error or (exc.strerror or str(exc))

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def results_table(results: Sequence[CameraResult]) -> Table:
    numbers = ("written", "seconds")
    table = new_table(("camera", "found as", "result", *numbers), right=numbers)
    for r in results:
        verdict = styled(r.outcome, "green") if r.ok else styled(r.error or "failed", "red")
        table.add_row(
            r.camera.label,
            f"{r.camera.state} {r.camera.where}",
            verdict,
            f"{r.written}/{r.blocks}",
            f"{r.seconds:.1f}",
        )
    return table


class Presenter:
    """Where a many-camera run's news goes: progress rows or JSON events, and the log."""

    def __init__(self, rows: CameraRows, events: EventStream | None, log: RunLog | None):
        self.rows, self.events, self.log = rows, events, log
        self.show = rows.enabled and events is None

    def observer_for(self, camera: AttachedCamera) -> FlashObserver | None:
        if self.events is not None:
            return self.events.observer(camera)
        return self.rows.observer(camera) if self.show else None

    def on_start(self, camera: AttachedCamera) -> None:
        if self.events is not None:
            self.events.emit("start", **camera.as_dict())

    def on_result(self, result: CameraResult) -> None:
        if self.log is not None:
            self.log.write(result)
        if self.events is not None:
            self.events.emit("result", **result.as_dict())
        elif self.show:
            self.rows.done(result.camera.label, result_line(result))

    def say(self, text: str) -> None:
        if self.show:
            self.rows.say(text)


def flash_many(
    bundle: Path,
    source: FlashSource,
    images: Sequence[BundleImage],
    job: FlashJob,
    target: Target,
    *,
    every: bool,
    station: bool,
    count: int | None,
    log: Path | None,
    key: Path | None,
    as_json: bool,
    json_progress: bool,
) -> None:
    """Flash several cameras at once (or, as a station, each as it is plugged in)."""
    from ae3tools.device.fleet import Station, Worker

    selectors = target.selectors()
    bundle_fields = {
        "bundle": str(bundle),
        "bundle_sha256": file_sha256(bundle),
        "source": source.as_dict(),
        "firmware": firmware_versions(images),
        "virtual": target.audit(),
    }
    if log is not None:
        refuse_output_over_input(log, [bundle, key, *target.virtual])
    run_log = RunLog(log, bundle_fields) if log is not None else None
    events = EventStream() if json_progress else None
    started = time.monotonic()
    backend = None
    abandoned = False
    try:
        backend = target.backend()
        ports = target.ports(backend)
        with CameraRows(not (as_json or json_progress)) as rows:
            shown = Presenter(rows, events, run_log)
            worker = Worker(backend, ports, job, shown.observer_for, shown.on_result)
            if station:
                results, abandoned = _run_station(
                    Station(worker, selectors, on_start=shown.on_start), count, shown
                )
            else:
                results = _run_once(worker, target, selectors, every, shown)
    finally:
        if backend is not None and not abandoned:  # given-up workers may still use it
            shut(backend)
        if run_log is not None:
            run_log.close()
    lost = run_log.lost if run_log is not None else 0
    report = {
        **bundle_fields,
        "cameras": [r.as_dict() for r in results],
        "flashed": sum(r.ok for r in results),
        "failed": sum(not r.ok for r in results),
        "seconds": round(time.monotonic() - started, 3),
        **({"log_lost": lost, "log_error": run_log.error} if run_log and lost else {}),
    }
    failure = None
    if report["failed"]:
        failure = f"{report['failed']} of {plural(len(results), 'camera')} failed"
    elif lost and run_log is not None:
        failure = f"--log {run_log.path}: {plural(lost, 'record')} could not be written"
    if events is not None:
        events.emit("report", **envelope(report, failure))
    elif as_json:
        emit_json(report, failure)
    else:
        if results and not station:
            print_table(results_table(results))
        failed = f"; {report['failed']} failed" if report["failed"] else ""
        how = "flashed and verified" if all(r.verified for r in results if r.ok) else "flashed"
        signer = f"; bundle signed by key {source.signer}" if source.signer else ""
        out.print(
            f"{report['flashed']} of {plural(len(results), 'camera')} {how} in "
            f"{report['seconds']} s{failed}{signer}{VIRTUAL_MARK if target.virtual else ''}"
        )
        if lost and run_log is not None:
            err.print(
                f"--log {run_log.path}: {plural(lost, 'record')} could not be written "
                f"({run_log.error})",
                soft_wrap=True,
            )
    if abandoned:
        # The workers given up on cannot be stopped, and the interpreter would wait for
        # them at exit: the summary and the log are out, so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    if failure is not None:
        raise typer.Exit(EXIT_FAILED)


def _run_once(
    worker: Worker, target: Target, selectors: Sequence[Selector], every: bool, shown: Presenter
) -> list[CameraResult]:
    from ae3tools.device.fleet import flash_cameras, wait_for_cameras

    cameras, missing = wait_for_cameras(
        worker.backend,
        worker.ports,
        selectors,
        every=every,
        wait=target.wait_timeout if target.wait else 0.0,
        on_waiting=lambda: shown.say(
            f"waiting for AE3s ({USB_VID:04x}:{BOOTLOADER_PID:04x} bootloaders, or running "
            "cameras): plug them in or press their reset buttons..."
        ),
    )
    if not every and len(cameras) > len(selectors):
        listing = "; ".join(f"{c.state} {c.label} at {c.where}" for c in cameras)
        raise UsageError(
            f"{len(cameras)} AE3s found ({listing}): choose with --serial or --path "
            "(repeatable), or flash them all with --all"
        )
    if missing or not cameras:
        named = ", ".join(s.describe() for s in missing if s.given)
        wanted = f" for {named}" if named else ""
        others = f" ({len(cameras)} others found, none flashed)" if cameras else ""
        raise DeviceError(
            f"no AE3 found{wanted} within {target.wait_timeout:g} s{others}",
            hint="Plug the cameras in (or press reset) while this command waits; "
            "use --wait-timeout to wait longer.",
        )
    at_once = " at once" if len(cameras) > 1 else ""
    shown.say(
        f"flashing {plural(len(cameras), 'camera')}{at_once}: "
        + ", ".join(c.label for c in cameras)
    )
    for camera in cameras:
        shown.on_start(camera)
    return flash_cameras(worker, cameras)


def _run_station(
    station: Station, count: int | None, shown: Presenter
) -> tuple[list[CameraResult], bool]:
    """Run the station until Ctrl-C or SIGTERM (or `count` cameras); a first Ctrl-C lets
    the cameras in progress finish, a second gives up on them (each reported failed).
    Returns the results, and whether any camera was given up on."""
    shown.say(
        "station: flashing each AE3 as it is plugged in (a camera is flashed again only after "
        "it is re-plugged); Ctrl-C to stop"
    )
    stop, done = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            station.run(stop, count)
        except BaseException as exc:  # handed to the main thread, which reports it
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    # A line controller stops the station with SIGTERM: the same orderly stop as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Waiting on an event, not Thread.join: a KeyboardInterrupt inside join(timeout)
        # leaves the thread marked finished (Python 3.11), and the next join returns at once.
        _wait_interruptibly(done)
    except KeyboardInterrupt:
        stop.set()
        busy = station.in_progress
        if busy:
            shown.say(
                f"stopping: waiting for the {plural(busy, 'camera')} in progress "
                "(Ctrl-C again to give up on them)"
            )
        try:
            _wait_interruptibly(done)
        except KeyboardInterrupt:
            given_up = station.abandon("interrupted")
            for result in given_up:
                shown.on_result(result)
            return list(station.results), bool(given_up)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failure:
        raise failure[0]
    results = list(station.results)
    failed = sum(not r.ok for r in results)
    shown.say(
        f"station stopped: {plural(len(results) - failed, 'camera')} flashed, {failed} failed"
    )
    return results, False


def _wait_interruptibly(event: threading.Event) -> None:
    while not event.wait(0.2):
        pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
