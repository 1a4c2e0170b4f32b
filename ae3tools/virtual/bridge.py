"""Run a program against a virtual AE3 through real libusb and real tty discovery.

A umockdev Testbed shows what is on the virtual camera's bus port now: its bootloader
(usbdevfs answered by `ae3tools.virtual.usbfs`), or, when it starts as a running
camera (--mode app...), the application's USB device with its CDC interface and a
/dev/ttyACM0 whose pseudo-terminal the application is served on (`ae3tools.camera`).
So dfu-util and libusb find the bootloader, pyserial's own port discovery finds the
running camera by VID:PID and serial, and ae3tools' reboot-and-flash path runs against
both, unmodified. The memory is the one `ae3tools ... --virtual DIR` uses.

Run with Debian's python3 (it has the GObject bindings), through scripts/with-virtual-ae3:

    python3 -m ae3tools.virtual.bridge --memory DIR [--mode app] -- ae3tools flash b.zip

This process and the command both run under libumockdev-preload; the command's exit
status is this program's.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gi  # type: ignore[import-not-found]

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # type: ignore[import-not-found]  # noqa: E402

from ae3tools.board import APPLICATION_PID, BOOTLOADER_PID, USB_VID  # noqa: E402
from ae3tools.dfu.protocol import LATEST_BOOTLOADER, bootloader_release  # noqa: E402
from ae3tools.virtual.application import FIRMWARES, split_faults  # noqa: E402
from ae3tools.virtual.bootloader import VirtualAE3  # noqa: E402
from ae3tools.virtual.camera import (  # noqa: E402
    BOOTLOADER_MODE,
    VIRTUAL_MODES,
    AppUsbDevice,
    VirtualCamera,
)
from ae3tools.virtual.faults import Fault  # noqa: E402
from ae3tools.virtual.memory import CameraInUse, DeviceMemory  # noqa: E402
from ae3tools.virtual.pty_port import PtyPort  # noqa: E402
from ae3tools.virtual.timing import Timing  # noqa: E402
from ae3tools.virtual.usbfs import (  # noqa: E402
    BUS,
    LISTEN_WINDOW,
    UNPLUG_NOTICE_DELAY,
    UsbfsBridge,
    _Handler,
    node_of,
    usb_record,
)

PRELOAD = "libumockdev-preload.so.0"
SYSPATH = "/sys/devices/usb1/1-1"  # the camera's place on the bus, whatever it runs
INTERFACE = f"{SYSPATH}/1-1:1.0"  # the running camera's CDC interface


class BusMirror:
    """Keeps the testbed showing what is on the camera's bus port now.

    The bootloader gets a usbdevfs node answered by `UsbfsBridge`; a running camera gets a
    USB device with its CDC interface and a /dev/ttyACM0 whose pty the application is
    served on, with the sysfs links pyserial's port discovery reads (the tty's `device`,
    the USB device's idVendor, idProduct, serial and bNumInterfaces). Each enumeration
    takes a new device number, as on a real bus.
    """

    def __init__(self, testbed: Any, trace: bool) -> None:
        self.testbed = testbed
        self.trace = trace
        self.devnum = 1
        self.shown: Any = None  # the device model the testbed shows
        self.gone_since: float | None = None
        self.handler: Any = None
        self.node: str | None = None
        self.syspaths: list[str] = []
        # umockdev keeps a tty's device name for the testbed's life, so each running
        # camera gets the next one (as Linux does while the old port is still held).
        self.ttys = 0
        self.tty_node: str | None = None

    def _add(self, device: Any, attributes: dict[str, str], handler: Any = None) -> None:
        self.devnum += 1
        self.node = node_of(self.devnum)
        if handler is not None:
            # Before the node exists: a client that opens it at once (libusb scanning the
            # bus) must find the ioctl socket there, or umockdev's preload aborts it.
            self.handler = handler
            self.testbed.attach_ioctl(self.node, handler)
        attributes = {"busnum": str(BUS), "devnum": str(self.devnum), **attributes}
        self.testbed.add_from_string(usb_record(SYSPATH, self.devnum, device, attributes))
        # umockdev writes A: attributes without the trailing newline libusb expects.
        for name, value in attributes.items():
            self.testbed.set_attribute(SYSPATH, name, f"{value}\n")
        self.syspaths = [SYSPATH]
        self.shown = device

    def show_bootloader(self, device: VirtualAE3) -> None:
        self._add(
            device,
            {
                "idVendor": f"{USB_VID:04x}",
                "idProduct": f"{BOOTLOADER_PID:04x}",
                "speed": "480",
                "bConfigurationValue": "1",
            },
            handler=_Handler(UsbfsBridge(device, self.trace)),
        )
        self.testbed.uevent(SYSPATH, "add")

    def serve_application(self, app: Any, on_gone: Any) -> PtyPort:
        """The VirtualCamera's port factory: the application's USB device, its CDC
        interface and tty, and the tty's pty served to the application."""
        if self.shown is not None:
            self.remove()  # the bootloader it booted from has left
        name = f"ttyACM{self.ttys}"
        self.ttys += 1
        tty = f"{INTERFACE}/tty/{name}"
        self._add(
            AppUsbDevice,  # its descriptors are class attributes
            {
                "idVendor": f"{USB_VID:04x}",
                "idProduct": f"{APPLICATION_PID:04x}",
                "serial": app.serial,
                "manufacturer": "OpenMV",
                "product": "OpenMV Camera",
                "speed": "480",
                "bConfigurationValue": "1",
                "bNumInterfaces": " 3",
            },
        )
        self.testbed.add_from_string(
            "\n".join(
                [
                    f"P: {INTERFACE.removeprefix('/sys')}",
                    "E: DEVTYPE=usb_interface",
                    "E: SUBSYSTEM=usb",
                    "A: bInterfaceNumber=00",
                    "A: bInterfaceClass=02",
                    "A: interface=Board CDC",
                    "",
                    f"P: {tty.removeprefix('/sys')}",
                    f"N: {name}",
                    f"E: DEVNAME=/dev/{name}",
                    "E: SUBSYSTEM=tty",
                    "",
                ]
            )
        )
        root = self.testbed.get_root_dir()
        # The kernel links a USB tty to its interface; pyserial follows that link.
        os.symlink("../../../1-1:1.0", f"{root}{tty}/device")
        self.syspaths = [tty, INTERFACE, SYSPATH]
        for path in reversed(self.syspaths):
            self.testbed.uevent(path, "add")
        self.tty_node = f"{root}/dev/{name}"
        master = os.dup(self.testbed.get_dev_fd(f"/dev/{name}"))
        slave = os.readlink(self.tty_node)
        return PtyPort(app, on_gone, (master, slave))

    def remove(self) -> None:
        for path in self.syspaths:
            self.testbed.uevent(path, "remove")
            self.testbed.remove_device(path)
        # remove_device leaves a tty's node (a link to its pty) behind: the port is gone.
        if self.tty_node is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tty_node)
            self.tty_node = None
        if self.handler is not None and self.node is not None:
            self.testbed.detach_ioctl(self.node)
        self.shown, self.handler, self.node, self.syspaths = None, None, None, []

    def sync(self, attached: Any) -> None:
        """Make the testbed show `attached` (None: nothing on the port). A running
        camera's records are added by `serve_application`, when its port is made."""
        if attached is self.shown or (
            isinstance(attached, AppUsbDevice) and self.shown is AppUsbDevice
        ):
            self.gone_since = None
            return
        if self.shown is not None:
            # A client that resets right after DETACH must reach the kernel first.
            now = time.monotonic()
            self.gone_since = self.gone_since or now
            if isinstance(self.shown, VirtualAE3) and now - self.gone_since < UNPLUG_NOTICE_DELAY:
                return
            self.remove()
            self.gone_since = None
        if isinstance(attached, VirtualAE3):
            self.show_bootloader(attached)


def _mirror(slot: Any, mirror: BusMirror, stop: threading.Event) -> None:
    while not stop.wait(0.01):
        mirror.sync(slot.attached())


def run(
    command: list[str],
    make_slot: Callable[[BusMirror], Any],
    *,
    trace: bool = False,
    report: Path | None = None,
) -> int:
    """Run `command` under a new testbed that follows the camera `make_slot` makes for
    it; returns the command's status. The testbed is this function's alone: its
    directory can only be removed once the object is gone (umockdev-usb.md)."""
    testbed = UMockdev.Testbed.new()
    root = testbed.get_root_dir()
    mirror = BusMirror(testbed, trace)
    slot = make_slot(mirror)
    env = dict(
        os.environ, LD_PRELOAD=_with_preload(os.environ.get("LD_PRELOAD", "")), UMOCKDEV_DIR=root
    )
    mirror.sync(slot.attached())
    stop = threading.Event()
    watcher = threading.Thread(target=_mirror, args=(slot, mirror, stop), daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        status = subprocess.run(command, env=env, check=False).returncode
        if report is not None:
            stats = slot.stats  # a VirtualAE3's, or a VirtualCamera's over its sessions
            report.write_text(
                json.dumps(
                    {
                        "command": command,
                        "exit_status": status,
                        "seconds": time.perf_counter() - started,
                        "device_seconds": stats.device_time,
                        "control_transfers": stats.control_transfers,
                        "blocks_written": stats.blocks_written,
                        "blocks_read": stats.blocks_read,
                        "exit_reason": slot.exit_reason,
                        "history": getattr(slot, "history", []),
                    },
                    indent=2,
                )
                + "\n"
            )
        return status
    except FileNotFoundError:
        print(f"with-virtual-ae3: {command[0]}: command not found", file=sys.stderr)
        return 127
    finally:
        stop.set()
        watcher.join()
        stop_camera = getattr(slot, "stop", None)
        if stop_camera is not None:
            stop_camera()
        slot.memory.close()
        if mirror.handler is not None and mirror.node is not None:
            testbed.detach_ioctl(mirror.node)
        # The testbed must be gone before its directory can go; the camera may still hold
        # the mirror (its port factory), so the mirror lets go of the testbed.
        mirror.testbed = None
        del mirror, testbed, slot
        gc.collect()
        shutil.rmtree(root, ignore_errors=True)


def _with_preload(current: str) -> str:
    parts = [p for p in current.split(":") if p]
    return ":".join(parts if PRELOAD in parts else [PRELOAD, *parts])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="with-virtual-ae3",
        description="Run a program against a virtual AE3 through real libusb (and, for a "
        "running camera, a real tty that pyserial finds).",
        epilog="Example: scripts/with-virtual-ae3 --memory cam --mode app -- ae3tools flash b.zip",
    )
    parser.add_argument(
        "--memory",
        type=Path,
        required=True,
        help="directory holding the camera's memory (as ae3tools --virtual)",
    )
    parser.add_argument(
        "--mode",
        choices=VIRTUAL_MODES,
        default=BOOTLOADER_MODE,
        help="start in the bootloader (default), or running its application: app (v5), "
        "app-legacy (v4.8), app-4.7",
    )
    parser.add_argument(
        "--bootloader",
        default=LATEST_BOOTLOADER.name,
        help="the bootloader release: 1.0.3 (default), 1.0.2, 1.0.1, 1.0.0 or legacy",
    )
    parser.add_argument(
        "--listen-window",
        action="store_true",
        help="behave as a freshly plugged camera: leave after 1.5 s without "
        "DFU activity (default: sent to the bootloader by the application)",
    )
    parser.add_argument(
        "--timing", default="zero", help="device costs: zero (default) or realistic, with overrides"
    )
    parser.add_argument("--fault", action="append", default=[], help="inject a fault")
    parser.add_argument("--trace", action="store_true", help="print every request to stderr")
    parser.add_argument(
        "--report",
        type=Path,
        help="write JSON: the command's seconds and exit status, the model's "
        "device seconds and transfer counts",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    try:
        timing = Timing.parse(args.timing)
        dfu_faults, app_faults = split_faults(args.fault)
        faults = Fault.parse_many(dfu_faults)
        release = bootloader_release(args.bootloader)
    except ValueError as exc:
        parser.error(str(exc))
    if args.listen_window and timing.listen_window is None:
        timing = Timing(**{**vars(timing), "listen_window": LISTEN_WINDOW})
    if PRELOAD not in os.environ.get("LD_PRELOAD", ""):
        # Testbed.uevent (the unplug) works only with this process under the preload too.
        env = dict(os.environ, LD_PRELOAD=_with_preload(os.environ.get("LD_PRELOAD", "")))
        os.execve(
            sys.executable, [sys.executable, "-m", __spec__.name, *(argv or sys.argv[1:])], env
        )
    try:
        memory = DeviceMemory(args.memory)
        memory.claim()  # this process is the camera: one owner, as on a real bus
    except (OSError, CameraInUse) as exc:
        parser.exit(1, f"with-virtual-ae3: {exc}\n")

    def make_slot(mirror: BusMirror) -> Any:
        if args.mode == BOOTLOADER_MODE:
            return VirtualAE3(
                memory, timing, faults, forced=not args.listen_window, release=release
            )
        return VirtualCamera(
            memory,
            FIRMWARES[args.mode],
            release,
            timing=timing,
            faults=faults,
            app_faults=app_faults,
            serve_port=mirror.serve_application,
        )

    return run(command, make_slot, trace=args.trace, report=args.report)


if __name__ == "__main__":
    sys.exit(main())
