"""What is attached: one look at the bus and the serial ports, as data.

An AE3 is either in its bootloader (37C5:96E3 on USB, at a bus path) or running its
application (37C5:16E3, a CDC serial port). One look gives every camera in either state
with what it reports about itself; selecting a camera (`Selector`) then works on that
data, without asking the host again device by device. A camera is known in both states
by its application serial (openmv-protocol.md §1.4), which its bootloader's serial maps
to: that is how a camera sent to its bootloader is found there, and how a station tells
a re-plugged camera from one coming back after its reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ae3tools.camera.port import CameraPort
from ae3tools.dfu.host import bootloader_version, device_path, find_bootloaders, read_serial
from ae3tools.formats.identity import (
    NO_SERIAL_APPLICATION,
    application_serial,
    running_camera_is,
    same_camera,
)

BOOTLOADER, APPLICATION = "bootloader", "application"
PortSource = Callable[[], list[CameraPort]]


@dataclass(frozen=True)
class AttachedCamera:
    """An AE3 on the bus: in its bootloader (at a bus path) or running (on a port)."""

    state: str  # BOOTLOADER or APPLICATION
    where: str  # the bootloader's bus path, or the running camera's serial port
    serial: str | None  # as the camera reports itself in this state
    version: str | None = None  # a bootloader's version, from its bcdDevice (§13.2)
    device: Any = field(default=None, compare=False, repr=False)  # a bootloader's pyusb device
    port: CameraPort | None = field(default=None, compare=False, repr=False)

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

    def describe(self) -> str:
        what = "bootloader" if self.state == BOOTLOADER else "running camera"
        where = "at path" if self.state == BOOTLOADER else "on"
        return f"{what} serial {self.serial or '?'} {where} {self.where}"

    def as_dict(self) -> dict[str, Any]:
        return {"camera": self.key, "state": self.state, "where": self.where}


@dataclass(frozen=True)
class Selector:
    """Which camera: by serial (either form, §1.4), bootloader bus path, or serial port."""

    serial: str | None = None
    path: str | None = None
    port: str | None = None

    @property
    def given(self) -> bool:
        return any((self.serial, self.path, self.port))

    def picks(self, camera: AttachedCamera) -> bool:
        if camera.state == BOOTLOADER:
            if self.port is not None:
                return False  # a port names a running camera
            if self.path is not None and camera.where != self.path:
                return False
            return self.serial is None or same_camera(camera.serial, self.serial)
        if self.path is not None:
            return False  # a bus path names a bootloader (dfu-util -p)
        if self.port is not None and camera.where != self.port:
            return False
        return self.serial is None or running_camera_is(camera.serial, self.serial)

    def describe(self) -> str:
        named = (("serial", self.serial), ("path", self.path), ("port", self.port))
        return " ".join(f"{what} {value}" for what, value in named if value)


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


def attached_bootloaders(backend: Any, cache: SerialCache | None = None) -> list[AttachedCamera]:
    """Every AE3 bootloader on the bus, with its serial (None if it did not read: the
    camera is just arriving or leaving) and its version."""
    devices = find_bootloaders(backend)
    return [
        AttachedCamera(
            BOOTLOADER, device_path(device), serial, bootloader_version(device)[0], device
        )
        for device, serial in zip(devices, (cache or SerialCache()).serials(devices), strict=True)
    ]


def attached_cameras(
    backend: Any, ports: PortSource, cache: SerialCache | None = None
) -> list[AttachedCamera]:
    """One look at everything attached: bootloaders first, then running cameras."""
    running = [AttachedCamera(APPLICATION, p.device, p.serial, port=p) for p in ports()]
    return attached_bootloaders(backend, cache) + running


def selected(
    cameras: Iterable[AttachedCamera], selectors: Sequence[Selector] = (Selector(),)
) -> list[AttachedCamera]:
    """The cameras one of `selectors` picks. A bootloader whose serial did not read is
    passed over when a serial is asked for: the next look sees it."""
    return [camera for camera in cameras if any(s.picks(camera) for s in selectors)]
