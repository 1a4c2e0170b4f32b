"""Many cameras at once: every AE3 attached, each flashed on a worker of its own, and the
production-line station that flashes cameras as they are plugged in.

A camera is known by its application serial (openmv-protocol.md §1.4), which both of its
states give: the running camera reports it, and its bootloader's maps to it. That is how
a camera flashed from its running state is not taken for a new one when its bootloader
appears, and how the station tells a re-plugged camera from one coming back after its
reset. Each worker reaches its own camera (`ae3tools.device.session`) and reports a
`CameraResult`; one camera failing never stops the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ae3tools.board import Role
from ae3tools.camera.port import port_error_types
from ae3tools.device.discovery import (
    APPLICATION,
    AttachedCamera,
    PortSource,
    Selector,
    SerialCache,
    attached_cameras,
    selected,
)
from ae3tools.device.reach import BOOTLOADER_TIMEOUT, Rebooted
from ae3tools.device.session import end_session, open_session, refuse_downgrade
from ae3tools.dfu.builder import FlashObserver, ImageResult
from ae3tools.dfu.flash import FlashFailed, flash_images
from ae3tools.dfu.host import BootloaderInfo
from ae3tools.dfu.protocol import DEFAULT_TIMEOUT_MS
from ae3tools.findings import DeviceError
from ae3tools.release.bundle import BundleImage

STATION_POLL = 0.1  # s: well inside a bootloader's 1.5 s listen window (§8.1)
# Looks at the bus a camera must be missing from to count as unplugged: one look can
# miss a camera whose serial did not read (it is then passed over, see cameras_for).
UNPLUGGED_AFTER = 2
SETTLE = 0.3  # s: cameras plugged in together enumerate within this of each other


def cameras_for(
    backend: Any,
    ports: PortSource,
    selectors: Sequence[Selector] = (Selector(),),
    cache: SerialCache | None = None,
) -> list[AttachedCamera]:
    """Every AE3 on the bus that one of `selectors` picks, bootloaders first.

    A bootloader whose serial cannot be read is passed over: it is just leaving or
    arriving (one that has no serial reads as all zeros, §1.3), and the next look sees it.
    """
    found = attached_cameras(backend, ports, cache)
    return [c for c in selected(found, selectors) if c.state == APPLICATION or c.serial]


@dataclass(frozen=True)
class FlashJob:
    """What every camera gets: the images, and how they are written."""

    images: tuple[BundleImage, ...]
    incremental: bool = True
    verify: bool = True
    reset: bool = True
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    reboot_wait: float = BOOTLOADER_TIMEOUT
    replace_ota_layout: bool = False
    allow_downgrade: bool = False


@dataclass(frozen=True)
class CameraResult:
    """One camera's flash: what was written, how it ended, or why it failed."""

    camera: AttachedCamera
    ok: bool
    seconds: float
    images: tuple[ImageResult, ...] = ()
    device: BootloaderInfo | None = None
    was_running: Rebooted | None = None
    after: str | None = None
    error: str | None = None
    hint: str | None = None
    remaining: tuple[Role, ...] = ()

    @property
    def serial(self) -> str:
        """The bootloader's serial once the camera was reached, else what it showed."""
        if self.device is not None and self.device.serial:
            return self.device.serial
        return self.camera.serial or "?"

    @property
    def verified(self) -> bool:
        """Flashed, and every written block read back equal (not with --no-verify)."""
        return self.ok and all(r.verified for r in self.images)

    @property
    def outcome(self) -> str:
        if not self.ok:
            return "failed"
        return "flashed and verified" if self.verified else "flashed (not read back)"

    @property
    def written(self) -> int:
        return sum(r.written for r in self.images)

    @property
    def blocks(self) -> int:
        return sum(r.blocks for r in self.images)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.camera.as_dict(),
            "serial": self.serial,
            "ok": self.ok,
            "verified": self.verified,
            "seconds": round(self.seconds, 3),
            "device": self.device.as_dict() if self.device else None,
            "was_running": self.was_running.as_dict() if self.was_running else None,
            "images": [r.as_dict() for r in self.images],
            "remaining": [role.value for role in self.remaining],
            "after": self.after,
            "error": self.error,
            "hint": self.hint,
        }


def flash_camera(
    backend: Any,
    ports: PortSource,
    camera: AttachedCamera,
    job: FlashJob,
    observer: FlashObserver | None = None,
) -> CameraResult:
    """Reach `camera`, flash it (see `flash_images`) and reset it; never raises (but for
    an interrupt): a failure, of any kind, is the result."""
    started = time.monotonic()
    roles = tuple(image.role for image in job.images)
    reached: dict[str, Any] = {}

    def failed(
        error: DeviceError, done: Iterable[ImageResult], left: Iterable[Role]
    ) -> CameraResult:
        return CameraResult(
            camera,
            False,
            time.monotonic() - started,
            tuple(done),
            error=str(error),
            hint=error.hint,
            remaining=tuple(left),
            **reached,
        )

    if camera.key is None:
        return failed(
            DeviceError(
                "this camera reports no serial (all zeros), so it cannot be told apart from "
                "the others while several are flashed",
                hint="Flash it on its own: ae3tools flash BUNDLE --path PATH (or --port).",
            ),
            (),
            roles,
        )
    try:
        with open_session(
            backend,
            ports,
            camera.selector(),
            reboot_wait=job.reboot_wait,
            timeout_ms=job.timeout_ms,
        ) as session:
            reached.update(device=session.info, was_running=session.rebooted)
            if not job.allow_downgrade:
                refuse_downgrade(session, job.images)
            results = flash_images(
                session.dfu,
                job.images,
                incremental=job.incremental,
                verify=job.verify,
                replace_ota_layout=job.replace_ota_layout,
                observer=observer,
            )
            after = end_session(session, job.reset)
    except FlashFailed as exc:
        return failed(exc, exc.completed, exc.remaining)
    except DeviceError as exc:
        return failed(exc, (), roles)
    except port_error_types() as exc:  # the port or device went mid-step
        reason = getattr(exc, "strerror", None) or exc
        return failed(DeviceError(f"lost the camera: {reason}", vanished=True), (), roles)
    except Exception as exc:  # one camera's failure never stops the others
        return failed(DeviceError(f"internal error: {type(exc).__name__}: {exc}"), (), roles)
    return CameraResult(
        camera, True, time.monotonic() - started, tuple(results), after=after, **reached
    )


ObserverFor = Callable[[AttachedCamera], FlashObserver | None]
ResultSink = Callable[[CameraResult], None]


def _no_observer(_: AttachedCamera) -> FlashObserver | None:
    return None


def _ignore(_: CameraResult) -> None:
    pass


@dataclass(frozen=True)
class Worker:
    """What each camera's worker does: flash it, with its own observer, and report."""

    backend: Any
    ports: PortSource
    job: FlashJob
    observer_for: ObserverFor = _no_observer
    on_result: ResultSink = _ignore

    def __call__(self, camera: AttachedCamera) -> CameraResult:
        result = flash_camera(self.backend, self.ports, camera, self.job, self.observer_for(camera))
        self.on_result(result)
        return result


def abandoned(camera: AttachedCamera, job: FlashJob, why: str) -> CameraResult:
    """The result of a camera given up on while it was being flashed."""
    return CameraResult(
        camera,
        False,
        0.0,
        (),
        error=f"{why} while it was being flashed: its images are in an unknown state",
        hint="Flash it again.",
        remaining=tuple(image.role for image in job.images),
    )


def flash_cameras(worker: Worker, cameras: Sequence[AttachedCamera]) -> list[CameraResult]:
    """Flash every camera at once, one thread each; results in the cameras' order."""
    if not cameras:
        return []
    with ThreadPoolExecutor(max_workers=len(cameras), thread_name_prefix="flash") as pool:
        return list(pool.map(worker, cameras))


@dataclass
class _Flashed:
    """A camera the station has flashed (or tried to): whether it has left the bus
    since, which is what makes its bootloader's next appearance a re-plug."""

    left: bool = False
    missed: int = 0  # looks in a row it was not seen in

    def seen(self, present: bool) -> None:
        self.missed = 0 if present else self.missed + 1
        self.left = self.left or self.missed >= UNPLUGGED_AFTER


@dataclass
class PlugTracker:
    """Which cameras a station should flash now: each once per plug-in.

    A camera flashed (or failed) is due again only once it has left the bus and come
    back in its bootloader (re-plugged, or its reset button pressed): after its own
    reset it comes back running, and is left alone.
    """

    _flashed: dict[str, _Flashed] = field(default_factory=dict)

    def due(self, present: Sequence[AttachedCamera], busy: Iterable[str]) -> list[AttachedCamera]:
        """The cameras to start now, given one look at the bus and the handles of the
        cameras being flashed; updates what is known of the others."""
        seen = {camera.handle: camera for camera in present}
        for handle, earlier in self._flashed.items():
            earlier.seen(handle in seen)
        skip = set(busy)
        due = []
        for handle, camera in seen.items():
            if handle in skip:
                continue
            flashed = self._flashed.get(handle)
            if flashed is not None:
                if camera.state == APPLICATION:
                    flashed.left = False  # back after its reset, or still running: not a plug
                    continue
                if not flashed.left:
                    continue
                del self._flashed[handle]
            due.append(camera)
        return due

    def finished(self, handle: str) -> None:
        self._flashed[handle] = _Flashed()


@dataclass
class Station:
    """Flash each camera as it appears, once per plug-in (see `PlugTracker`).

    `run` looks at the bus every `poll` seconds until `stop` is set or `count` cameras
    were started, then lets the workers in progress finish.
    """

    worker: Worker
    selectors: Sequence[Selector] = (Selector(),)
    on_start: Callable[[AttachedCamera], None] | None = None
    poll: float = STATION_POLL
    results: list[CameraResult] = field(default_factory=list)
    plugs: PlugTracker = field(default_factory=PlugTracker)
    serials: SerialCache = field(default_factory=SerialCache)
    _busy: dict[str, tuple[AttachedCamera, Future[CameraResult]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # results and _busy

    @property
    def in_progress(self) -> int:
        return len(self._busy)

    def run(self, stop: threading.Event, count: int | None = None) -> list[CameraResult]:
        started = 0
        with ThreadPoolExecutor(thread_name_prefix="station") as pool:
            while not stop.is_set() and (count is None or started < count):
                self._harvest()
                present = cameras_for(
                    self.worker.backend, self.worker.ports, self.selectors, self.serials
                )
                for camera in self.plugs.due(present, self._busy):
                    if count is not None and started >= count:
                        break
                    started += 1
                    if self.on_start is not None:
                        self.on_start(camera)
                    with self._lock:
                        self._busy[camera.handle] = (camera, pool.submit(self.worker, camera))
                stop.wait(self.poll)
            for _, future in list(self._busy.values()):
                wait([future])
            self._harvest()
        return self.results

    def _harvest(self) -> None:
        with self._lock:
            for handle, (camera, future) in list(self._busy.items()):
                if future.done():
                    del self._busy[handle]
                    error = future.exception()  # only from reporting: flash_camera never raises
                    self.results.append(
                        future.result()
                        if error is None
                        else abandoned(camera, self.worker.job, f"internal error ({error})")
                    )
                    self.plugs.finished(handle)

    def abandon(self, why: str) -> list[CameraResult]:
        """Give up on the cameras in progress (a second Ctrl-C): each becomes a failed
        result saying so, and joins the results; their workers are not waited for."""
        self._harvest()
        with self._lock:
            given_up = [
                abandoned(camera, self.worker.job, why) for camera, _ in self._busy.values()
            ]
            self._busy.clear()
            self.results.extend(given_up)
        return given_up


def wait_for_cameras(
    backend: Any,
    ports: PortSource,
    selectors: Sequence[Selector],
    *,
    every: bool,
    wait: float,
    on_waiting: Callable[[], None] | None = None,
) -> tuple[list[AttachedCamera], list[Selector]]:
    """The cameras to flash at once, and the selectors that found none.

    `every`: all the cameras the selectors pick, once at least one is there (and those
    plugged in with it have enumerated); otherwise each selector names one camera, and
    all are waited for. Waits up to `wait` seconds.
    """
    deadline = time.monotonic() + wait
    announced = False
    while True:
        found = cameras_for(backend, ports, selectors)
        if found and every:
            time.sleep(SETTLE)
            return cameras_for(backend, ports, selectors), []
        missing = [s for s in selectors if not selected(found, [s])]
        if not every and not missing:
            return found, []
        if time.monotonic() >= deadline:
            return found, missing
        if not announced and on_waiting is not None:
            on_waiting()
            announced = True
        time.sleep(STATION_POLL)
