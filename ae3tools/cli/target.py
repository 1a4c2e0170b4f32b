"""Which camera a device command talks to: the shared options, the session, progress.

Importing this module costs nothing of the device stack: pyusb, the DFU host and the
virtual AE3 are imported when a command opens a camera, so `ae3tools --help` and the
file commands start without them.
"""

from __future__ import annotations

import functools
import inspect
import shlex
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ae3tools.board import BOOTLOADER_PID, USB_VID
from ae3tools.cli.common import completion, err
from ae3tools.dfu.protocol import DEFAULT_TIMEOUT_MS, LATEST_BOOTLOADER
from ae3tools.findings import DeviceError, UsageError

if TYPE_CHECKING:
    from ae3tools.device.discovery import PortSource, Selector
    from ae3tools.device.session import Session
    from ae3tools.dfu.flash import FlashFailed

DEFAULT_TIMEOUT = DEFAULT_TIMEOUT_MS / 1000  # seconds
VIRTUAL_MARK = " (a VIRTUAL camera)"  # ends a report's last line when --virtual is in use
_CONTEXT = "ae3tools_context"  # the wrapper's own parameter: no command may use the name
NO_CAMERA_HINT = " (no camera at hand? add --virtual DIR to rehearse on a virtual AE3)"

# Help panels: the options that pick a camera, and the virtual camera's, apart from
# what each command does.
CAMERA_PANEL = "Which camera"
VIRTUAL_PANEL = "Virtual camera (rehearse without an AE3)"


VirtualOption = typer.Option(
    [],
    "--virtual",
    envvar="AE3TOOLS_VIRTUAL",
    metavar="DIR",
    rich_help_panel=VIRTUAL_PANEL,
    help="Use a virtual AE3 whose memory lives in DIR (one file per partition), "
    "instead of USB. Repeat for several cameras on one bus, each with a serial of its "
    "own. Several DIRs in AE3TOOLS_VIRTUAL are separated by : (; on Windows).",
)
TimingOption = typer.Option(
    "realistic",
    "--virtual-timing",
    envvar="AE3TOOLS_VIRTUAL_TIMING",
    metavar="TIMING",
    rich_help_panel=VIRTUAL_PANEL,
    autocompletion=completion(("realistic", "zero")),
    help="'realistic' (1.5 s listen window, flash times) or 'zero' (free), with "
    "overrides if wanted: realistic:listen_window=none.",
)
FaultOption = typer.Option(
    [],
    "--fault",
    envvar="AE3TOOLS_VIRTUAL_FAULTS",
    metavar="FAULT",
    rich_help_panel=VIRTUAL_PANEL,
    help="Inject a fault, once (repeatable): status:alt=HP:block=3:status=errWRITE, "
    "vanish:alt=ROMFS0:block=10, stall:alt=HE:block=0, hang:alt=HP:block=5, "
    "slow:alt=HP:block=1:seconds=2, settling:count=3 (a bootloader just enumerated "
    "refuses its first SET_INTERFACEs), app:mute ... (docs/virtual-ae3.md lists them all).",
)
VIRTUAL_MODES = ("bootloader", "app", "app-legacy", "app-4.7")
VirtualModeOption = typer.Option(
    "bootloader",
    "--virtual-mode",
    envvar="AE3TOOLS_VIRTUAL_MODE",
    metavar="MODE",
    rich_help_panel=VIRTUAL_PANEL,
    autocompletion=completion(VIRTUAL_MODES),
    help="How it starts: 'bootloader' (plugged in during its listen window), or running "
    "'app' (v5, protocol V2), 'app-legacy' (v4.8, usbdbg), 'app-4.7' (v4.7.0, usbdbg).",
)
VirtualBootloaderOption = typer.Option(
    LATEST_BOOTLOADER.name,
    "--virtual-bootloader",
    envvar="AE3TOOLS_VIRTUAL_BOOTLOADER",
    metavar="VERSION",
    rich_help_panel=VIRTUAL_PANEL,
    autocompletion=completion(("1.0.3", "1.0.2", "1.0.1", "1.0.0", "legacy")),
    help="Its bootloader: 1.0.3 (v5.0.0), 1.0.2 (v4.8.1), 1.0.1, or 1.0.0 (also "
    "'legacy': v4.7.0 and v4.8.0, no boot header, DETACH does not leave).",
)
PortOption = typer.Option(
    None,
    "--port",
    metavar="PORT",
    rich_help_panel=CAMERA_PANEL,
    help="The running camera's serial port (/dev/ttyACM0, COM5; any tty path works).",
)
PlugDelayOption = typer.Option(
    0.0,
    "--virtual-plug-delay",
    envvar="AE3TOOLS_VIRTUAL_PLUG_DELAY",
    hidden=True,
    metavar="SECONDS",
    help="Seconds before the virtual AE3 appears (to rehearse --wait).",
)
SerialOption = typer.Option(
    [],
    "--serial",
    "-S",
    metavar="SERIAL",
    rich_help_panel=CAMERA_PANEL,
    help="The camera with this USB serial (its bootloader's 24 digits, or the running "
    "camera's 16), as dfu-util -S. `flash` takes it repeated, for several cameras.",
)
PathOption = typer.Option(
    [],
    "--path",
    "-p",
    metavar="PATH",
    rich_help_panel=CAMERA_PANEL,
    help="The bootloader at this bus-port path, as dfu-util -p: 1-2.4. `flash` takes it repeated.",
)
WaitOption = typer.Option(
    True,
    "--wait/--no-wait",
    rich_help_panel=CAMERA_PANEL,
    help="When no camera is attached, wait up to --wait-timeout for one to be plugged in "
    "(or reset: its bootloader listens ~1.5 s); --no-wait fails at once.",
)
WaitTimeoutOption = typer.Option(
    30.0,
    "--wait-timeout",
    metavar="SECONDS",
    rich_help_panel=CAMERA_PANEL,
    help="Seconds to wait for a camera to be plugged in; also the wait for a running "
    "camera's bootloader to come up after the reboot (at most 10 s).",
)
TimeoutOption = typer.Option(
    DEFAULT_TIMEOUT,
    "--timeout",
    metavar="SECONDS",
    rich_help_panel=CAMERA_PANEL,
    help="USB control transfer timeout in seconds.",
)
ResetOption = typer.Option(
    True, "--reset/--no-reset", help="DETACH and reset at the end so the camera boots."
)
YesOption = typer.Option(
    False, "--yes", "-y", help="Confirm the destructive operation (no question asked)."
)


# The options every device command shares: parameter name -> (type, option, Target field).
_SHARED: dict[str, tuple[Any, Any, str]] = {
    "serial": (list[str], SerialOption, "serials"),
    "path": (list[str], PathOption, "paths"),
    "port": (str | None, PortOption, "port"),
    "wait": (bool, WaitOption, "wait"),
    "wait_timeout": (float, WaitTimeoutOption, "wait_timeout"),
    "timeout": (float, TimeoutOption, "timeout"),
    "virtual": (list[Path], VirtualOption, "virtual"),
    "virtual_timing": (str, TimingOption, "timing"),
    "virtual_mode": (str, VirtualModeOption, "mode"),
    "virtual_bootloader": (str, VirtualBootloaderOption, "bootloader"),
    "fault": (list[str], FaultOption, "faults"),
    "plug_delay": (float, PlugDelayOption, "plug_delay"),
}


def device_command(
    *, omit: Sequence[str] = (), options: dict[str, Any] | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the shared device options and call it with `target=Target(...)`.

    The command declares only its own parameters and a `target: Target` one; `omit`
    leaves shared options out, and `options` replaces one (recover's longer --timeout).
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "target"]
        shared = {name: spec for name, spec in _SHARED.items() if name not in omit}
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=(options or {}).get(name, option),
                annotation=kind,
            )
            for name, (kind, option, _) in shared.items()
        ]

        @functools.wraps(command)
        def run(**values: Any) -> None:
            context = values.pop(_CONTEXT)
            fields = {shared[name][2]: values.pop(name) for name in shared}
            for name, value in fields.items():
                if isinstance(value, list):
                    fields[name] = tuple(value)
            if fields.get("virtual"):
                source = context.get_parameter_source("virtual")
                fields["virtual_from_env"] = getattr(source, "name", "") == "ENVIRONMENT"
            command(target=Target(**fields), **values)

        keyword_own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        # typer hands the click context to a parameter annotated typer.Context: it says
        # whether --virtual came from the command line or from AE3TOOLS_VIRTUAL.
        context = inspect.Parameter(
            _CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
        )
        parameters = [*keyword_own, *added, context]
        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


@dataclass(frozen=True)
class Target:
    """Which camera a command talks to, from the shared options."""

    virtual: tuple[Path, ...] = ()  # one virtual camera per directory; none: USB
    virtual_from_env: bool = False  # named by AE3TOOLS_VIRTUAL, not --virtual
    timing: str = "realistic"
    faults: tuple[str, ...] = ()
    plug_delay: float = 0.0
    serials: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    wait: bool = True
    wait_timeout: float = 30.0
    timeout: float = DEFAULT_TIMEOUT  # seconds, per control transfer
    port: str | None = None
    mode: str = "bootloader"
    bootloader: str = LATEST_BOOTLOADER.name

    def audit(self) -> dict[str, Any] | None:
        """For reports and logs: which virtual cameras stood in for real ones, and who
        said so (a stray AE3TOOLS_VIRTUAL must not pass a production run off as real)."""
        if not self.virtual:
            return None
        named_by = "AE3TOOLS_VIRTUAL" if self.virtual_from_env else "--virtual"
        return {"directories": [str(d) for d in self.virtual], "named_by": named_by}

    def audit_line(self) -> str:
        """The same, said on stderr before any work."""
        audit = self.audit()
        if audit is None:
            return ""
        cameras = ", ".join(audit["directories"])
        if self.virtual_from_env:
            return f"VIRTUAL camera (AE3TOOLS_VIRTUAL is set): {cameras}, not USB"
        return f"virtual camera: {cameras}"

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout * 1000))

    @property
    def reboot_wait(self) -> float:
        """How long a running camera may take to come back as a bootloader: 10 s
        (openmv-protocol.md §6.2 step 6), or less if --wait-timeout says so."""
        from ae3tools.device.reach import BOOTLOADER_TIMEOUT

        return min(self.wait_timeout, BOOTLOADER_TIMEOUT)

    @property
    def serial(self) -> str | None:
        return self.serials[0] if self.serials else None

    @property
    def path(self) -> str | None:
        return self.paths[0] if self.paths else None

    def selector(self) -> Selector:
        """The one camera this command talks to."""
        from ae3tools.device.discovery import Selector

        for option, values in (("--serial", self.serials), ("--path", self.paths)):
            if len(values) > 1:
                raise UsageError(
                    f"{option} given {len(values)} times: this command talks to one camera "
                    "(`ae3tools flash` takes several)"
                )
        if self.port is not None and self.path is not None:
            raise UsageError("--path names a bootloader and --port a running camera: give one")
        return Selector(self.serial, self.path, self.port)

    def selectors(self) -> list[Selector]:
        """The cameras a many-camera command picks: one selector per --serial, --path and
        --port; none given, every camera (one selector that matches all)."""
        from ae3tools.device.discovery import Selector

        picked = [Selector(serial=s) for s in self.serials]
        picked += [Selector(path=p) for p in self.paths]
        picked += [Selector(port=self.port)] if self.port is not None else []
        return picked or [Selector()]

    def backend(self) -> Any:
        if not self.virtual:
            from ae3tools.dfu.host import libusb_backend

            return libusb_backend()
        from ae3tools.virtual.camera import virtual_bus
        from ae3tools.virtual.memory import CameraInUse
        from ae3tools.virtual.timing import Timing

        err.print(
            self.audit_line(), style="yellow" if self.virtual_from_env else "", soft_wrap=True
        )

        resolved = [directory.resolve() for directory in self.virtual]
        for index, directory in enumerate(resolved):
            if directory in resolved[:index]:
                raise UsageError(f"--virtual {self.virtual[index]}: given twice")
        try:
            backend = virtual_bus(
                self.virtual,
                mode=self.mode,
                bootloader=self.bootloader,
                timing=Timing.parse(self.timing),
                faults=self.faults,
                plug_delay=self.plug_delay,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            where = exc.filename or " ".join(map(str, self.virtual))
            raise UsageError(f"--virtual {where}: {exc.strerror or exc}") from None
        except CameraInUse as exc:
            raise DeviceError(str(exc), hint="Wait for that process to finish.") from None
        for camera in backend.devices:
            if camera.memory.created:
                err.print(f"created a new virtual AE3 in {camera.memory.directory} (blank memory)")
        return backend

    def ports(self, backend: Any) -> PortSource:
        """Where running cameras are found: pyserial's port discovery, or the virtual bus."""
        if not self.virtual:
            from ae3tools.camera.port import camera_ports

            return camera_ports
        from ae3tools.virtual.camera import virtual_ports

        return lambda: virtual_ports(backend)

    def options(self) -> list[str]:
        """The options that pick this camera again, for a command printed as a hint."""
        picked: list[tuple[str, str | None]] = [("--serial", s) for s in self.serials]
        picked += [("--path", p) for p in self.paths] + [("--port", self.port)]
        picked += [("--virtual", str(directory)) for directory in self.virtual]
        if self.virtual:
            picked += [
                ("--virtual-timing", self.timing),
                ("--virtual-mode", self.mode),
                ("--virtual-bootloader", self.bootloader),
            ]
        return [part for name, value in picked if value for part in (name, value)]


def shut(backend: Any) -> None:
    from ae3tools.virtual.backend import VirtualBackend

    if isinstance(backend, VirtualBackend):
        backend.shutdown()


@contextmanager
def session_for(target: Target, *, quiet: bool = False) -> Iterator[Session]:
    """Reach the camera's bootloader (sending a running camera there), open it, and check
    it is an AE3's. Progress lines go to stderr unless `quiet`."""
    from ae3tools.device.session import open_session

    def say(text: str) -> None:
        if not quiet:
            err.print(text)

    def waiting() -> None:
        rehearse = "" if target.virtual else NO_CAMERA_HINT
        say(
            f"waiting for an AE3 ({USB_VID:04x}:{BOOTLOADER_PID:04x} bootloader, or a running "
            f"camera), up to {target.wait_timeout:g} s: plug it in or press its reset "
            f"button...{rehearse}"
        )

    backend = target.backend()
    try:
        with open_session(
            backend,
            target.ports(backend),
            target.selector(),
            wait=target.wait_timeout if target.wait else 0.0,
            reboot_wait=target.reboot_wait,
            timeout_ms=target.timeout_ms,
            status=say,
            on_waiting=waiting,
        ) as session:
            yield session
    finally:
        shut(backend)


def end_session(session: Session, reset: bool, *, quiet: bool = False) -> str:
    """End the session (see `ae3tools.device.session.end_session`), warnings on stderr."""
    from ae3tools.device.session import end_session as end

    return end(session, reset, warn=_quiet if quiet else err.print)


def _quiet(_: str) -> None:
    pass


def resume_hint(exc: FlashFailed, command: list[str], target: Target) -> str:
    """What to run after a failed flash: the same command, for what is left."""
    from ae3tools.dfu.flash import roles_text

    resume = shlex.join([*command, "--only", roles_text(exc.remaining), *target.options()])
    if exc.session_lost:
        return (
            "The camera left the bootloader (or stopped answering). Replug it (or press reset) "
            f"and run again; to write only what is left: {resume}"
        )
    return f"The camera is still in the bootloader (not reset). To resume: {resume}"
