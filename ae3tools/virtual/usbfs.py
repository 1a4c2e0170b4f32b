"""The virtual AE3's bootloader to unmodified libusb programs (dfu-util, libusb1), via umockdev.

A umockdev Testbed holds the device's sysfs entry; an ioctl handler answers the usbdevfs
ioctls that libusb issues on /dev/bus/usb/001/NNN by feeding the same `VirtualAE3` the
in-process pyusb backend uses: one model of the device, two ways in. Facts this rests
on are in umockdev-usb.md (probed on Debian bookworm, umockdev 0.17, libusb 1.0.26).
`ae3tools.virtual.bridge` runs a program against it (scripts/with-virtual-ae3).
"""

from __future__ import annotations

import collections
import errno
import struct
import sys
import threading
import traceback
from typing import Any

import gi  # type: ignore[import-not-found]

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # type: ignore[import-not-found]  # noqa: E402

from ae3tools.virtual.bootloader import Setup, VirtualAE3  # noqa: E402
from ae3tools.virtual.faults import DeviceTimeout, NoDevice, Stall  # noqa: E402

BUS = 1
LISTEN_WINDOW = 1.5  # spec §8.1, OMV_BOOT_DFU_TIMEOUT
# How long the host takes to notice the bootloader has left the bus (the kernel's hub
# event, then udev's uevent to libusb). A client that resets right after DETACH, as
# dfu-util -R does, reaches the kernel first and sees ENODEV, as on real hardware; an
# instant unplug would make libusb refuse the reset with NO_DEVICE instead.
UNPLUG_NOTICE_DELAY = 0.2

# usbdevfs ioctl numbers on x86-64 (linux/usbdevice_fs.h), as libusb 1.0.26 sends them.
SETINTERFACE = 0x80085504
SETCONFIGURATION = 0x80045505
GETDRIVER = 0x41045508
SUBMITURB = 0x8038550A
DISCARDURB = 0x0000550B
REAPURB = 0x4008550C
REAPURBNDELAY = 0x4008550D
CLAIMINTERFACE = 0x8004550F
RELEASEINTERFACE = 0x80045510
RESET = 0x00005514
GET_CAPABILITIES = 0x8004551A
DISCONNECT_CLAIM = 0x8108551B

USBDEVFS_URB_TYPE_CONTROL = 2
URB_SIZE = 56  # struct usbdevfs_urb on x86-64
URB_STATUS, URB_BUFFER, URB_BUFFER_LENGTH, URB_ACTUAL_LENGTH = 4, 16, 24, 28
SETUP_SIZE = 8
CAPABILITIES = 0x01 | 0x04  # ZERO_PACKET, NO_PACKET_SIZE_LIM
URB_CANCELLED = -errno.ENOENT
# The device's flash work (§11) is served inside the ioctl: the client's transfer simply
# takes that long, as on the bus. A hung device is handled apart (its URB is held).
BUSY_LIMIT = 600.0
# Waits longer than this (a slow flash, recovery) complete the URB later, from a timer,
# so that a client's own timeout can fire and cancel it (DISCARDURB) as on the bus.
# Shorter waits are served inside the ioctl: a pending URB makes libusb spin on
# REAPURBNDELAY (the fake node always polls ready), which would swamp short waits.
ASYNC_WAIT = 0.25


def usb_record(syspath: str, devnum: int, device: Any, attributes: dict[str, str]) -> str:
    """The umockdev record that makes both a USB device's sysfs entry and its node."""
    descriptors = (device.device_descriptor + device.configuration_descriptor).hex().upper()
    lines = [
        f"P: {syspath.removeprefix('/sys')}",
        f"N: bus/usb/{BUS:03d}/{devnum:03d}",
        f"E: DEVNAME={node_of(devnum)}",
        "E: DEVTYPE=usb_device",
        "E: SUBSYSTEM=usb",
        f"E: BUSNUM={BUS:03d}",
        f"E: DEVNUM={devnum:03d}",
        *(f"A: {name}={value}" for name, value in attributes.items()),
        f"H: descriptors={descriptors}",
    ]
    return "\n".join(lines) + "\n"


def node_of(devnum: int) -> str:
    return f"/dev/bus/usb/{BUS:03d}/{devnum:03d}"


Outcome = tuple[int, int]  # what an ioctl returns to the client: (result, errno)
OK: Outcome = (0, 0)


def failed(code: int) -> Outcome:
    return (-1, code)


class UsbfsBridge:
    """Answers usbdevfs ioctls from the device model. One instance per device node.

    `handle` returns the ioctl's outcome; the caller completes the ioctl with it, so
    every ioctl is completed exactly once (a client whose ioctl is never completed hangs).
    IoctlData.retrieve() gives a block's bytes; its `data` field comes through GObject
    introspection as a single byte, so it is never used here.
    """

    def __init__(self, device: VirtualAE3, trace: bool = False) -> None:
        self.device = device
        self.trace = trace
        self.finished: collections.deque[Any] = collections.deque()  # URBs ready to reap
        self.held: dict[int, Any] = {}  # URBs not yet answered (hung or busy), by address
        self.timers: dict[int, threading.Timer] = {}
        self.lock = threading.Lock()

    def handle(self, request: int, arg: Any) -> Outcome:
        with self.lock:
            if request in (REAPURBNDELAY, REAPURB):
                return self._reap(arg)
            if request == DISCARDURB:
                return self._discard(arg)
            if request == GET_CAPABILITIES:
                arg.resolve(0, 4).update(0, struct.pack("<I", CAPABILITIES))
                return OK
            if request == GETDRIVER:
                return failed(errno.ENODATA)  # no kernel driver bound
            if not self.device.present:
                return failed(errno.ENODEV)
            if request in (CLAIMINTERFACE, RELEASEINTERFACE, DISCONNECT_CLAIM):
                return OK
            if request == SETINTERFACE:
                interface, alt = struct.unpack("<II", bytes(arg.resolve(0, 8).retrieve()))
                self._trace(f"SET_INTERFACE {interface} alt {alt}")
                return self._control(Setup(0x01, 11, alt, interface, 0))
            if request == SETCONFIGURATION:
                (value,) = struct.unpack("<I", bytes(arg.resolve(0, 4).retrieve()))
                return self._control(Setup(0x00, 9, value, 0, 0))
            if request == RESET:
                # §8.3: a bus reset ends the session and the bootloader drops off the bus
                # before the kernel re-enumerates it, so the reset itself fails ENODEV
                # (libusb reports NOT_FOUND, which dfu-util -R accepts).
                self._trace("USB reset")
                self.device.bus_reset()
                return failed(errno.ENODEV)
            if request == SUBMITURB:
                return self._submit(arg)
        return failed(errno.ENOTTY)

    def _trace(self, text: str) -> None:
        if self.trace:
            print(f"virtual-ae3: {text}", file=sys.stderr, flush=True)

    def _control(self, setup: Setup) -> Outcome:
        if self.device.hung:
            return failed(errno.ETIMEDOUT)
        try:
            self.device.control(setup, b"", timeout=BUSY_LIMIT)
        except Stall:
            return failed(errno.EPIPE)
        except (NoDevice, DeviceTimeout):
            return failed(errno.ENODEV)
        return OK

    def _submit(self, arg: Any) -> Outcome:
        urb = arg.resolve(0, URB_SIZE)
        raw = bytes(urb.retrieve())
        if raw[0] != USBDEVFS_URB_TYPE_CONTROL:
            return failed(errno.EINVAL)  # the AE3 has no other endpoints
        (length,) = struct.unpack_from("<i", raw, URB_BUFFER_LENGTH)
        buffer = urb.resolve(URB_BUFFER, length)
        packet = bytes(buffer.retrieve())
        request_type, request, value, index, w_length = struct.unpack_from("<BBHHH", packet)
        setup = Setup(request_type, request, value, index, w_length)
        payload = b"" if setup.is_in else packet[SETUP_SIZE : SETUP_SIZE + w_length]
        self._trace(
            f"SETUP {request_type:02x} {request:02x} value={value} index={index} "
            f"length={w_length} state={self.device.state.name} alt={self.device.alt}"
        )
        if self.device.hung:
            self.held[urb.client_addr] = urb  # never answered: libusb times out, discards
            return OK
        wait = self.device.busy_until - self.device.clock()
        if wait > ASYNC_WAIT:
            self.held[urb.client_addr] = urb
            timer = threading.Timer(wait, self._answer_later, (urb, buffer, setup, payload))
            self.timers[urb.client_addr] = timer
            timer.start()
            return OK
        self._answer(urb, buffer, setup, payload)
        return OK

    def _answer_later(self, urb: Any, buffer: Any, setup: Setup, payload: bytes) -> None:
        with self.lock:
            if self.held.pop(urb.client_addr, None) is None:
                return  # the client gave up (DISCARDURB): the request is never processed
            self.timers.pop(urb.client_addr, None)
            self._answer(urb, buffer, setup, payload)

    def _answer(self, urb: Any, buffer: Any, setup: Setup, payload: bytes) -> None:
        w_length = setup.length
        try:
            reply = self.device.control(setup, payload, timeout=BUSY_LIMIT)
            status, actual = 0, len(reply) if setup.is_in else w_length
            if reply:
                buffer.update(SETUP_SIZE, reply)
        except Stall:
            status, actual = -errno.EPIPE, 0
        except NoDevice:
            status, actual = -errno.ENODEV, 0
        except DeviceTimeout:
            self.held[urb.client_addr] = urb
            return
        urb.update(URB_STATUS, struct.pack("<i", status))
        urb.update(URB_ACTUAL_LENGTH, struct.pack("<i", actual))
        self.finished.append(urb)

    def _reap(self, arg: Any) -> Outcome:
        if not self.finished:
            return failed(errno.EAGAIN if self.device.present else errno.ENODEV)
        urb = self.finished.popleft()
        # set_ptr links the URB block to this ioctl, so changes made after its SUBMITURB
        # completed (a late answer) are written back to the client with this one.
        arg.resolve(0, 8).set_ptr(0, urb)
        return OK

    def _discard(self, arg: Any) -> Outcome:
        (address,) = struct.unpack("<Q", bytes(arg.retrieve()[:8]))
        urb = self.held.pop(address, None)
        timer = self.timers.pop(address, None)
        if timer is not None:
            timer.cancel()
        if urb is None:
            return failed(errno.EINVAL)  # already completed: nothing to cancel
        urb.update(URB_STATUS, struct.pack("<i", URB_CANCELLED))
        urb.update(URB_ACTUAL_LENGTH, struct.pack("<i", 0))
        self.finished.append(urb)
        return OK


class _Handler(UMockdev.IoctlBase):  # type: ignore[misc]
    """Every ioctl must be completed exactly once, or the client hangs."""

    def __init__(self, bridge: UsbfsBridge) -> None:
        super().__init__()
        self.bridge = bridge

    def do_handle_ioctl(self, client: Any) -> bool:
        try:
            outcome = self.bridge.handle(client.get_request() & 0xFFFFFFFF, client.get_arg())
        except Exception:  # a bug in the bridge must not hang the client
            traceback.print_exc(file=sys.stderr)
            outcome = failed(errno.EINVAL)
        client.complete(*outcome)
        return True
