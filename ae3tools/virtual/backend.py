"""A pyusb backend whose bus holds virtual AE3s: the host runs unchanged against it.

It answers pyusb exactly as the libusb1 backend would (descriptors parsed from the
device's own bytes, errors with libusb's codes and errnos), so the only difference
between flashing a real and a virtual camera is which backend `usb.core.find` gets.
"""

from __future__ import annotations

import array
import errno
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol

import usb.backend
import usb.core

from ae3tools.virtual.bootloader import VIRTUAL_BUS, Setup
from ae3tools.virtual.faults import DeviceTimeout, NoDevice, Stall
from ae3tools.virtual.memory import CameraInUse, DeviceMemory

# libusb's codes, as pyusb's libusb1 backend reports them (libusb.h).
LIBUSB_ERROR_NO_DEVICE = -4
LIBUSB_ERROR_NOT_FOUND = -5
LIBUSB_ERROR_BUSY = -6
LIBUSB_ERROR_TIMEOUT = -7
LIBUSB_ERROR_PIPE = -9
LIBUSB_ERROR_OTHER = -99
HIGH_SPEED = 3  # usb.util.SPEED_HIGH


def _fields(raw: bytes, names: Sequence[tuple[str, int]]) -> dict[str, int]:
    values, offset = {}, 0
    for name, size in names:
        values[name] = int.from_bytes(raw[offset : offset + size], "little")
        offset += size
    return values


_DEVICE_FIELDS = (
    ("bLength", 1), ("bDescriptorType", 1), ("bcdUSB", 2), ("bDeviceClass", 1),
    ("bDeviceSubClass", 1), ("bDeviceProtocol", 1), ("bMaxPacketSize0", 1), ("idVendor", 2),
    ("idProduct", 2), ("bcdDevice", 2), ("iManufacturer", 1), ("iProduct", 1),
    ("iSerialNumber", 1), ("bNumConfigurations", 1),
)  # fmt: skip
_CONFIG_FIELDS = (
    ("bLength", 1), ("bDescriptorType", 1), ("wTotalLength", 2), ("bNumInterfaces", 1),
    ("bConfigurationValue", 1), ("iConfiguration", 1), ("bmAttributes", 1), ("bMaxPower", 1),
)  # fmt: skip
_INTERFACE_FIELDS = (
    ("bLength", 1), ("bDescriptorType", 1), ("bInterfaceNumber", 1), ("bAlternateSetting", 1),
    ("bNumEndpoints", 1), ("bInterfaceClass", 1), ("bInterfaceSubClass", 1),
    ("bInterfaceProtocol", 1), ("iInterface", 1),
)  # fmt: skip


_ENDPOINT_FIELDS = (
    ("bLength", 1), ("bDescriptorType", 1), ("bEndpointAddress", 1), ("bmAttributes", 1),
    ("wMaxPacketSize", 2), ("bInterval", 1),
)  # fmt: skip
INTERFACE, ENDPOINT = 0x04, 0x05


@dataclass
class _Descriptor:
    raw: bytes
    extra: bytearray = field(default_factory=bytearray)
    endpoints: list[_Descriptor] = field(default_factory=list)


def _parse_configuration(raw: bytes) -> tuple[_Descriptor, list[_Descriptor]]:
    """A configuration descriptor as libusb parses it: the header, then each interface
    (alt setting) with its endpoints. Descriptors libusb does not parse (an IAD, CDC
    functional descriptors, the DFU functional descriptor) go to the `extra` of what they
    follow, as libusb hands them over."""
    header = _Descriptor(raw[:9])
    interfaces: list[_Descriptor] = []
    current = header
    offset = 9
    while offset + 2 <= len(raw):
        length, kind = raw[offset], raw[offset + 1]
        chunk = raw[offset : offset + length]
        if kind == INTERFACE:
            current = _Descriptor(chunk)
            interfaces.append(current)
        elif kind == ENDPOINT and interfaces:
            current = _Descriptor(chunk)
            interfaces[-1].endpoints.append(current)
        else:
            current.extra += chunk
        offset += max(length, 2)
    return header, interfaces


class BusDevice(Protocol):
    """A device model on the virtual bus: its descriptors and its control endpoint."""

    device_descriptor: bytes
    configuration_descriptor: bytes
    memory: DeviceMemory

    @property
    def present(self) -> bool: ...

    def control(self, setup: Setup, data: bytes = b"", timeout: float = 5.0) -> bytes: ...

    def bus_reset(self) -> None: ...


class Slot(Protocol):
    """A port of the virtual bus and what is plugged into it now (it may change: a
    running camera re-enumerates as its bootloader)."""

    memory: DeviceMemory

    def attached(self) -> BusDevice | None: ...


class _DeviceId:
    """What enumerate_devices yields: one enumeration of a device at a port, with the
    address the host gave it (a new one each time, as Linux does)."""

    def __init__(self, device: BusDevice, port: int, address: int) -> None:
        self.device = device
        self.port = port
        self.address = address
        self.configuration = _parse_configuration(device.configuration_descriptor)


class VirtualBackend(usb.backend.IBackend):  # type: ignore[misc]
    """pyusb backend over virtual devices, one per port of one bus."""

    def __init__(self, devices: Sequence[Slot]) -> None:
        super().__init__()
        self.devices = list(devices)
        self._seen: dict[int, _DeviceId] = {}
        self._addresses = itertools.count(2)  # 1 is the root hub's

    # ---------------------------------------------------------------- descriptors

    def enumerate_devices(self) -> Iterator[_DeviceId]:
        found = []
        for port, slot in enumerate(self.devices, 1):
            device = slot.attached()
            if device is None:
                continue
            known = self._seen.get(port)
            if known is None or known.device is not device:  # a new enumeration
                known = self._seen[port] = _DeviceId(device, port, next(self._addresses))
            found.append(known)
        return iter(found)

    def get_parent(self, dev: _DeviceId) -> None:
        return None

    def get_device_descriptor(self, dev: _DeviceId) -> SimpleNamespace:
        return SimpleNamespace(
            **_fields(dev.device.device_descriptor, _DEVICE_FIELDS),
            bus=VIRTUAL_BUS,
            address=dev.address,
            port_number=dev.port,
            port_numbers=(dev.port,),
            speed=HIGH_SPEED,
        )

    def get_configuration_descriptor(self, dev: _DeviceId, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError("configuration index out of range")
        header, _ = dev.configuration
        return SimpleNamespace(
            **_fields(header.raw, _CONFIG_FIELDS), extra_descriptors=list(header.extra)
        )

    def _interface(self, dev: _DeviceId, intf: int, alt: int, config: int) -> _Descriptor:
        _, interfaces = dev.configuration
        matching = [i for i in interfaces if i.raw[2] == intf]
        if config != 0 or not 0 <= alt < len(matching):
            raise IndexError("interface index out of range")
        return matching[alt]

    def get_interface_descriptor(
        self, dev: _DeviceId, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        interface = self._interface(dev, intf, alt, config)
        return SimpleNamespace(
            **_fields(interface.raw, _INTERFACE_FIELDS), extra_descriptors=list(interface.extra)
        )

    def get_endpoint_descriptor(
        self, dev: _DeviceId, ep: int, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        endpoints = self._interface(dev, intf, alt, config).endpoints
        if not 0 <= ep < len(endpoints):
            raise IndexError("endpoint index out of range")
        return SimpleNamespace(
            **_fields(endpoints[ep].raw, _ENDPOINT_FIELDS),
            extra_descriptors=list(endpoints[ep].extra),
        )

    # ---------------------------------------------------------------- transfers

    def open_device(self, dev: _DeviceId) -> BusDevice:
        if not dev.device.present:
            raise usb.core.USBError(
                "No such device (it may have been disconnected)",
                LIBUSB_ERROR_NO_DEVICE,
                errno.ENODEV,
            )
        return dev.device

    def close_device(self, dev_handle: BusDevice) -> None:
        return None

    def shutdown(self) -> None:
        """Stop every virtual camera and close its memory (the files under --virtual DIR)."""
        for slot in self.devices:
            stop = getattr(slot, "stop", None)
            if stop is not None:
                stop()
            slot.memory.close()

    def claim_interface(self, dev_handle: BusDevice, intf: int) -> None:
        """As libusb: LIBUSB_ERROR_BUSY when another process has claimed the camera."""
        try:
            self._call(dev_handle, dev_handle.memory.claim)
        except CameraInUse:
            raise usb.core.USBError("Resource busy", LIBUSB_ERROR_BUSY, errno.EBUSY) from None

    def release_interface(self, dev_handle: BusDevice, intf: int) -> None:
        """The camera stays this process's until `shutdown`: a station or a many-camera
        flash ends sessions while it goes on running the camera."""

    def set_configuration(self, dev_handle: BusDevice, config_value: int) -> None:
        self._control(dev_handle, 0x00, 9, config_value, 0, b"", 1000)

    def get_configuration(self, dev_handle: BusDevice) -> int:
        return self._control(dev_handle, 0x80, 8, 0, 0, 1, 1000)[0]

    def set_interface_altsetting(self, dev_handle: BusDevice, intf: int, altsetting: int) -> None:
        """As libusb on Linux reports a refused SET_INTERFACE: any errno of the usbfs
        ioctl but ENODEV and EINVAL is LIBUSB_ERROR_OTHER (seen through the umockdev
        bridge; dfu-util then says "Cannot set alternate interface")."""
        try:
            self._control(dev_handle, 0x01, 11, altsetting, intf, b"", 1000)
        except usb.core.USBError as exc:
            if exc.errno != errno.EPIPE:
                raise
            raise usb.core.USBError("Other error", LIBUSB_ERROR_OTHER, None) from None

    def ctrl_transfer(
        self,
        dev_handle: BusDevice,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> int:
        length = len(data) * data.itemsize
        if bmRequestType & 0x80:
            reply = self._control(
                dev_handle, bmRequestType, bRequest, wValue, wIndex, length, timeout
            )
            data[: len(reply)] = array.array("B", reply)
            return len(reply)
        self._control(dev_handle, bmRequestType, bRequest, wValue, wIndex, data.tobytes(), timeout)
        return length

    def reset_device(self, dev_handle: BusDevice) -> None:
        """§8.3: the bootloader leaves on a bus reset and is gone before re-enumeration,
        so the reset fails as libusb reports it then: NOT_FOUND."""
        self._call(dev_handle, dev_handle.bus_reset)
        raise usb.core.USBError("Entity not found", LIBUSB_ERROR_NOT_FOUND, errno.ENOENT)

    def is_kernel_driver_active(self, dev_handle: BusDevice, intf: int) -> bool:
        return False

    def detach_kernel_driver(self, dev_handle: BusDevice, intf: int) -> None:
        return None

    def _control(
        self,
        device: BusDevice,
        request_type: int,
        request: int,
        value: int,
        index: int,
        data_or_length: bytes | int,
        timeout_ms: int,
    ) -> bytes:
        if isinstance(data_or_length, int):
            setup = Setup(request_type, request, value, index, data_or_length)
            payload = b""
        else:
            setup = Setup(request_type, request, value, index, len(data_or_length))
            payload = data_or_length
        seconds = timeout_ms / 1000 if timeout_ms else 3600.0
        result: bytes = self._call(device, lambda: device.control(setup, payload, seconds))
        return result

    @staticmethod
    def _call(device: BusDevice, action: Any) -> Any:
        try:
            if not device.present:
                raise NoDevice("not on the bus")
            return action()
        except Stall:
            raise usb.core.USBError("Pipe error", LIBUSB_ERROR_PIPE, errno.EPIPE) from None
        except NoDevice:
            raise usb.core.USBError(
                "No such device (it may have been disconnected)",
                LIBUSB_ERROR_NO_DEVICE,
                errno.ENODEV,
            ) from None
        except DeviceTimeout:
            raise usb.core.USBTimeoutError(
                "Operation timed out", LIBUSB_ERROR_TIMEOUT, errno.ETIMEDOUT
            ) from None
