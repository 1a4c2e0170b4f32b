"""Device access above the protocols: finding and reaching a camera in whichever state it
is in (bootloader or running), one bootloader session, and many cameras at once.

Uses `ae3tools.dfu` (USB) and `ae3tools.camera` (serial) and is handed the bus to use;
it never imports the simulated AE3 (`ae3tools.virtual`).
"""
