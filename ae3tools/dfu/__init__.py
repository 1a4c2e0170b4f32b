"""USB DFU 1.1 against the AE3 bootloader: the protocol as data, the host (pyusb), the
flash plan (which blocks to write) and the flash procedure that carries it out.

This package is the only part of ae3tools that touches USB.
"""
