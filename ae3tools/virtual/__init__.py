"""The simulated AE3, a wing of its own: the bootloader model and its memory, the running
application and its pseudo-terminal, the pyusb backend that puts them on a virtual bus,
and the umockdev bridge that shows them to real libusb, dfu-util and pyserial.

Only the command line (which picks a real or a virtual bus once) and the tests import
this package; the real host never does.
"""
