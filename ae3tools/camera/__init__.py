"""The running camera (37C5:16E3): its debug protocols on the CDC port, the request that
sends it to its bootloader, and a virtual running camera.

This package is the only part of ae3tools that does serial I/O (through pyserial, or a
pseudo-terminal for the virtual camera); `ae3tools.dfu` is the only one that does USB.
"""
