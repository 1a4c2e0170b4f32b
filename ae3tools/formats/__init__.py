"""The AE3's image formats as data: parsers that return frozen dataclasses and validators
that return findings. ROMFS, firmware, the recovery key, Intel HEX, the DFU suffix, the
USB serial forms, and the detection that tells a file's kind by its content.

Depends only on the board layout (`ae3tools.board`) and the shared findings and file
helpers; nothing here does device I/O.
"""
