"""A pyusb backend whose bus holds virtual AE3s: the host runs unchanged against it.

It answers pyusb exactly as the libusb1 backend would (descriptors parsed from the
device's own bytes, errors with libusb's codes and errnos), so the only difference
between flashing a real and a virtual camera is which backend `usb.core.find` gets.
"""

from __future__ import annotations

import array
import errno
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

from ae3tools.dfu.virtual import (
    CONFIGURATION_DESCRIPTOR,
    DEVICE_DESCRIPTOR,
    CameraInUse,
    DeviceMemory,
    DeviceTimeout,
    Fault,
    NoDevice,
    Setup,
    SimulatedClock,
    Stall,
    Timing,
    VirtualAE3,
    precise_sleep,
)

# libusb's codes, as pyusb's libusb1 backend reports them (libusb.h).
LIBUSB_ERROR_NO_DEVICE = -4
LIBUSB_ERROR_NOT_FOUND = -5
LIBUSB_ERROR_BUSY = -6
LIBUSB_ERROR_TIMEOUT = -7
LIBUSB_ERROR_PIPE = -9
HIGH_SPEED = 3  # usb.util.SPEED_HIGH
VIRTUAL_BUS = 1


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


def _split_configuration(raw: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Configuration header, interface descriptors, and what follows the last one.

    libusb hands descriptors it does not parse (the DFU functional descriptor) to the
    interface they follow, as `extra`; so does this.
    """
    header, interfaces, extra = raw[:9], [], b""
    offset = 9
    while offset < len(raw):
        length, kind = raw[offset], raw[offset + 1]
        chunk = raw[offset : offset + length]
        if kind == 0x04:
            interfaces.append(chunk)
        else:
            extra += chunk
        offset += length
    return header, interfaces, extra


class _DeviceId:
    """What enumerate_devices yields: a place on the virtual bus."""

    def __init__(self, device: VirtualAE3, port: int) -> None:
        self.device = device
        self.port = port


class VirtualBackend(usb.backend.IBackend):  # type: ignore[misc]
    """pyusb backend over a list of virtual devices, one per port of one bus."""

    def __init__(self, devices: Sequence[VirtualAE3]) -> None:
        super().__init__()
        self.devices = list(devices)
        self._ids = [_DeviceId(device, port) for port, device in enumerate(self.devices, 1)]

    # ---------------------------------------------------------------- descriptors

    def enumerate_devices(self) -> Iterator[_DeviceId]:
        return iter([dev for dev in self._ids if dev.device.present])

    def get_parent(self, dev: _DeviceId) -> None:
        return None

    def get_device_descriptor(self, dev: _DeviceId) -> SimpleNamespace:
        return SimpleNamespace(
            **_fields(DEVICE_DESCRIPTOR, _DEVICE_FIELDS),
            bus=VIRTUAL_BUS,
            address=1 + dev.port,
            port_number=dev.port,
            port_numbers=(dev.port,),
            speed=HIGH_SPEED,
        )

    def get_configuration_descriptor(self, dev: _DeviceId, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError("configuration index out of range")
        header, _, _ = _split_configuration(CONFIGURATION_DESCRIPTOR)
        return SimpleNamespace(**_fields(header, _CONFIG_FIELDS), extra_descriptors=[])

    def get_interface_descriptor(
        self, dev: _DeviceId, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        _, interfaces, extra = _split_configuration(CONFIGURATION_DESCRIPTOR)
        if config != 0 or intf != 0 or not 0 <= alt < len(interfaces):
            raise IndexError("interface index out of range")
        last = alt == len(interfaces) - 1
        return SimpleNamespace(
            **_fields(interfaces[alt], _INTERFACE_FIELDS),
            extra_descriptors=list(extra) if last else [],
        )

    def get_endpoint_descriptor(
        self, dev: _DeviceId, ep: int, intf: int, alt: int, config: int
    ) -> None:
        raise IndexError("the DFU interface has no endpoints")

    # ---------------------------------------------------------------- transfers

    def open_device(self, dev: _DeviceId) -> VirtualAE3:
        if not dev.device.present:
            raise usb.core.USBError(
                "No such device (it may have been disconnected)",
                LIBUSB_ERROR_NO_DEVICE,
                errno.ENODEV,
            )
        return dev.device

    def close_device(self, dev_handle: VirtualAE3) -> None:
        return None

    def shutdown(self) -> None:
        """Flush and close every device's memory (the files under --virtual DIR)."""
        for device in self.devices:
            device.memory.close()

    def claim_interface(self, dev_handle: VirtualAE3, intf: int) -> None:
        """As libusb: LIBUSB_ERROR_BUSY when another process has claimed the camera."""
        try:
            self._call(dev_handle, dev_handle.memory.claim)
        except CameraInUse:
            raise usb.core.USBError("Resource busy", LIBUSB_ERROR_BUSY, errno.EBUSY) from None

    def release_interface(self, dev_handle: VirtualAE3, intf: int) -> None:
        dev_handle.memory.release()

    def set_configuration(self, dev_handle: VirtualAE3, config_value: int) -> None:
        self._control(dev_handle, 0x00, 9, config_value, 0, b"", 1000)

    def get_configuration(self, dev_handle: VirtualAE3) -> int:
        return self._control(dev_handle, 0x80, 8, 0, 0, 1, 1000)[0]

    def set_interface_altsetting(self, dev_handle: VirtualAE3, intf: int, altsetting: int) -> None:
        self._control(dev_handle, 0x01, 11, altsetting, intf, b"", 1000)

    def ctrl_transfer(
        self,
        dev_handle: VirtualAE3,
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

    def reset_device(self, dev_handle: VirtualAE3) -> None:
        """§8.3: the bootloader leaves on a bus reset and is gone before re-enumeration,
        so the reset fails as libusb reports it then: NOT_FOUND."""
        self._call(dev_handle, dev_handle.bus_reset)
        raise usb.core.USBError("Entity not found", LIBUSB_ERROR_NOT_FOUND, errno.ENOENT)

    def is_kernel_driver_active(self, dev_handle: VirtualAE3, intf: int) -> bool:
        return False

    def detach_kernel_driver(self, dev_handle: VirtualAE3, intf: int) -> None:
        return None

    def _control(
        self,
        device: VirtualAE3,
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
    def _call(device: VirtualAE3, action: Any) -> Any:
        try:
            if not device.present:
                raise NoDevice(device.exit_reason)
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


def virtual_backend(
    directory: Path | None,
    *,
    timing: Timing | None = None,
    faults: Iterable[Fault] = (),
    plug_delay: float = 0.0,
    forced: bool = False,
    clock: SimulatedClock | None = None,
) -> VirtualBackend:
    """A bus with one virtual AE3, plugged in now (or after `plug_delay` seconds).

    `clock`: run the device on simulated time (benchmarks) instead of sleeping.
    """
    device = VirtualAE3(
        DeviceMemory(directory),
        timing,
        faults,
        plug_delay=plug_delay,
        forced=forced,
        clock=clock or time.monotonic,
        sleep=clock.sleep if clock else precise_sleep,
    )
    return VirtualBackend([device])
