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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ae3tools.board import Role
from ae3tools.camera.reboot import RunningCamera
from ae3tools.device.reach import BOOTLOADER_TIMEOUT, PortSource, Selector
from ae3tools.device.session import end_session, open_session
from ae3tools.dfu.builder import FlashObserver, ImageResult
from ae3tools.dfu.flash import FlashFailed, flash_images
from ae3tools.dfu.host import BootloaderInfo, device_path, find_bootloaders, read_serial
from ae3tools.dfu.protocol import DEFAULT_TIMEOUT_MS
from ae3tools.findings import DeviceError
from ae3tools.formats.identity import NO_SERIAL_APPLICATION, application_serial
from ae3tools.release.bundle import BundleImage

BOOTLOADER, APPLICATION = "bootloader", "application"
STATION_POLL = 0.1  # s: well inside a bootloader's 1.5 s listen window (§8.1)
# Looks at the bus a camera must be missing from to count as unplugged: one look can
# miss a camera whose serial did not read (it is then passed over, see attached_cameras).
UNPLUGGED_AFTER = 2
SETTLE = 0.3  # s: cameras plugged in together enumerate within this of each other


@dataclass(frozen=True)
class FoundCamera:
    """An AE3 on the bus: in its bootloader (at a bus path) or running (on a port)."""

    state: str  # BOOTLOADER or APPLICATION
    where: str  # the bootloader's bus path, or the running camera's serial port
    serial: str | None  # as the camera reports itself in this state

    @property
    def key(self) -> str | None:
        """The camera in either state: its application serial; None when it has none
        (the Secure Enclave call failed: all zeros, §1.4), and so cannot be told apart."""
        serial = self.serial or ""
        mapped = application_serial(serial) if self.state == BOOTLOADER else serial.lower()
        return mapped if mapped and mapped != NO_SERIAL_APPLICATION else None

    @property
    def label(self) -> str:
        return self.key or f"{self.state} at {self.where}"

    @property
    def handle(self) -> str:
        """What the station tracks it by: its serial, else where it is."""
        return self.key or f"@{self.where}"

    def selector(self) -> Selector:
        """Exactly this camera: a bootloader by its bus path, a running camera by port."""
        if self.state == BOOTLOADER:
            return Selector(path=self.where)
        return Selector(port=self.where, serial=self.serial)

    def as_dict(self) -> dict[str, Any]:
        return {"camera": self.key, "state": self.state, "where": self.where}


@dataclass
class SerialCache:
    """Each bootloader's serial, read once per enumeration (bus and address, which the
    host assigns afresh each time a device enumerates): a station looking at the bus
    ten times a second does not ask a camera it is flashing for its serial each time."""

    _known: dict[tuple[int, int], str] = field(default_factory=dict)

    def serials(self, devices: Sequence[Any]) -> list[str | None]:
        keys = [(device.bus, device.address) for device in devices]
        known = {key: self._known[key] for key in keys if key in self._known}
        for key, device in zip(keys, devices, strict=True):
            if key not in known:
                serial = read_serial(device)
                if serial is not None:
                    known[key] = serial
        self._known = known  # the enumerations on the bus now, no others
        return [known.get(key) for key in keys]


def attached_cameras(
    backend: Any,
    ports: PortSource,
    selectors: Sequence[Selector] = (Selector(),),
    cache: SerialCache | None = None,
) -> list[FoundCamera]:
    """Every AE3 on the bus that one of `selectors` picks, bootloaders first.

    A bootloader whose serial cannot be read is passed over: it is just leaving or
    arriving (one that has no serial reads as all zeros, §1.3), and the next look sees it.
    """
    devices = find_bootloaders(backend)
    found = []
    for device, serial in zip(devices, (cache or SerialCache()).serials(devices), strict=True):
        path = device_path(device)
        if serial is not None and any(s.names_bootloader(path, serial) for s in selectors):
            found.append(FoundCamera(BOOTLOADER, path, serial))
    found += [
        FoundCamera(APPLICATION, p.device, p.serial)
        for p in ports()
        if any(s.running(p) for s in selectors)
    ]
    return found


@dataclass(frozen=True)
class FlashJob:
    """What every camera gets: the images, and how they are written."""

    images: tuple[BundleImage, ...]
    incremental: bool = True
    verify: bool = True
    reset: bool = True
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    reboot_wait: float = BOOTLOADER_TIMEOUT


@dataclass(frozen=True)
class CameraResult:
    """One camera's flash: what was written, how it ended, or why it failed."""

    camera: FoundCamera
    ok: bool
    seconds: float
    images: tuple[ImageResult, ...] = ()
    device: BootloaderInfo | None = None
    was_running: RunningCamera | None = None
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
    camera: FoundCamera,
    job: FlashJob,
    observer: FlashObserver | None = None,
) -> CameraResult:
    """Reach `camera`, flash it (see `flash_images`) and reset it; never raises a
    DeviceError: a failure is the result."""
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
            results = flash_images(
                session.dfu,
                job.images,
                incremental=job.incremental,
                verify=job.verify,
                observer=observer,
            )
            after = end_session(session, job.reset)
    except FlashFailed as exc:
        return failed(exc, exc.completed, exc.remaining)
    except DeviceError as exc:
        return failed(exc, (), roles)
    return CameraResult(
        camera, True, time.monotonic() - started, tuple(results), after=after, **reached
    )


ObserverFor = Callable[[FoundCamera], FlashObserver | None]
ResultSink = Callable[[CameraResult], None]


def _no_observer(_: FoundCamera) -> FlashObserver | None:
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

    def __call__(self, camera: FoundCamera) -> CameraResult:
        result = flash_camera(self.backend, self.ports, camera, self.job, self.observer_for(camera))
        self.on_result(result)
        return result


def flash_cameras(worker: Worker, cameras: Sequence[FoundCamera]) -> list[CameraResult]:
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

    def due(self, present: Sequence[FoundCamera], busy: Iterable[str]) -> list[FoundCamera]:
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
    on_start: Callable[[FoundCamera], None] | None = None
    poll: float = STATION_POLL
    results: list[CameraResult] = field(default_factory=list)
    plugs: PlugTracker = field(default_factory=PlugTracker)
    serials: SerialCache = field(default_factory=SerialCache)
    _busy: dict[str, Future[CameraResult]] = field(default_factory=dict)

    @property
    def in_progress(self) -> int:
        return len(self._busy)

    def run(self, stop: threading.Event, count: int | None = None) -> list[CameraResult]:
        started = 0
        with ThreadPoolExecutor(thread_name_prefix="station") as pool:
            while not stop.is_set() and (count is None or started < count):
                self._harvest()
                present = attached_cameras(
                    self.worker.backend, self.worker.ports, self.selectors, self.serials
                )
                for camera in self.plugs.due(present, self._busy):
                    if count is not None and started >= count:
                        break
                    started += 1
                    if self.on_start is not None:
                        self.on_start(camera)
                    self._busy[camera.handle] = pool.submit(self.worker, camera)
                stop.wait(self.poll)
            for future in list(self._busy.values()):
                future.result()
            self._harvest()
        return self.results

    def _harvest(self) -> None:
        for handle, future in list(self._busy.items()):
            if future.done():
                del self._busy[handle]
                self.results.append(future.result())
                self.plugs.finished(handle)


def wait_for_cameras(
    backend: Any,
    ports: PortSource,
    selectors: Sequence[Selector],
    *,
    every: bool,
    wait: float,
    on_waiting: Callable[[], None] | None = None,
) -> tuple[list[FoundCamera], list[Selector]]:
    """The cameras to flash at once, and the selectors that found none.

    `every`: all the cameras the selectors pick, once at least one is there (and those
    plugged in with it have enumerated); otherwise each selector names one camera, and
    all are waited for. Waits up to `wait` seconds.
    """
    deadline = time.monotonic() + wait
    announced = False
    while True:
        found = attached_cameras(backend, ports, selectors)
        if found and every:
            time.sleep(SETTLE)
            return attached_cameras(backend, ports, selectors), []
        missing = [s for s in selectors if not attached_cameras(backend, ports, [s])]
        if not every and not missing:
            return found, []
        if time.monotonic() >= deadline:
            return found, missing
        if not announced and on_waiting is not None:
            on_waiting()
            announced = True
        time.sleep(STATION_POLL)
