"""The running camera (37C5:16E3): its debug protocols on the CDC port, finding its port,
and the request that sends it to its bootloader.

This package is the only part of ae3tools that does serial I/O (through pyserial);
`ae3tools.dfu` is the only one that does USB.
"""
