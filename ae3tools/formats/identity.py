"""How one AE3 names itself: the bootloader's USB serial and the application's.

The two differ in length, case and content (openmv-protocol.md §1.4): the bootloader
reports 24 upper-case hex digits of the Secure Enclave's MfgData[0..11]; the application
reports its EUI-64 extension, 5 bytes derived from MfgData[0..5], as 16 lower-case hex
digits ending in 000000. The mapping goes one way only, bootloader to application, which
is enough to find the bootloader of a camera the host just sent there.
"""

from __future__ import annotations

import re

_BOOTLOADER_SERIAL = re.compile(r"[0-9A-Fa-f]{24}")
NO_SERIAL_BOOTLOADER = "0" * 24  # the SE call failed (ae3-bootloader.md §1.3)
NO_SERIAL_APPLICATION = "0" * 16


def application_serial(bootloader_serial: str) -> str | None:
    """The serial the application reports on the camera whose bootloader reports this one.

    openmv-protocol.md §1.4: MfgData m0..m5 unpacked with the SE library's bit fields
    (x, y, wafer, year, fab, week, lot), packed into the EUI-64 extension e0..e4.
    None for a string that is not a bootloader serial.
    """
    if not _BOOTLOADER_SERIAL.fullmatch(bootloader_serial):
        return None
    m = bytes.fromhex(bootloader_serial[:12])
    x, y, wafer = m[0] & 0x7F, m[1] & 0x7F, m[2] & 0x1F
    year, fab, week, lot = m[3] & 0x3F, (m[3] >> 6) & 1, m[4] & 0x3F, m[5]
    s3 = (wafer << 1) | fab
    eui = bytes(
        [
            ((x << 1) | ((y & 0x40) >> 6)) & 0xFF,
            (((y & 0x3F) << 2) | ((s3 & 0x30) >> 4)) & 0xFF,
            (((s3 & 0x0F) << 4) | ((year & 0x3C) >> 2)) & 0xFF,
            (((year & 0x03) << 6) | week) & 0xFF,
            lot,
        ]
    )
    return eui.hex() + "000000"


def same_camera(bootloader_serial: str | None, serial: str) -> bool:
    """Whether a bootloader with `bootloader_serial` is the camera named `serial`, given
    as either form (the bootloader's own, or the application's)."""
    if bootloader_serial is None:
        return False
    if bootloader_serial.upper() == serial.upper():
        return True
    mapped = application_serial(bootloader_serial)
    return mapped is not None and mapped == serial.lower() and mapped != NO_SERIAL_APPLICATION


def running_camera_is(application: str | None, serial: str) -> bool:
    """Whether the running camera reporting `application` is the camera named `serial`,
    given as either form (its own, or its bootloader's, which maps to it)."""
    if not application or application.lower() == NO_SERIAL_APPLICATION:
        return False
    return application.lower() in (serial.lower(), application_serial(serial))
