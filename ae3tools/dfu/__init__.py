"""USB DFU: the host (pyusb), the flash plans, and the virtual AE3 bootloader.

This package is the only part of ae3tools that touches USB.
"""
