"""MicroPython ROMFS images: parse and validate, extract, build.

Everything here follows romfs-format.md ("romfs §N" in the modules). One module per
concern: `records` (kinds, vints, bounds), `alignment`, `names` (how names and paths are
shown), `model` (the parsed image as data), `reader` with `walk`, `runs` and `checks`
(parse and validate), `extract`, `build`. The names below are the package's interface.
"""

from ae3tools.formats.romfs.alignment import (
    MAX_SHOWN_ALIGNMENT,
    OPENMV_ALIGNMENT,
    REQUIRED_ALIGNMENT,
    AlignmentRule,
    alignment_for,
)
from ae3tools.formats.romfs.build import (
    DEFAULT_EXCLUDES,
    BuildOptions,
    BuiltImage,
    LeftOut,
    build_romfs,
)
from ae3tools.formats.romfs.extract import MAX_EXTRACT_DEPTH, Extraction, extract
from ae3tools.formats.romfs.model import (
    EXACT_PATH_LIMIT,
    RomfsEntry,
    RomfsHeader,
    RomfsImage,
    exact_paths,
    file_digests,
    shown_paths,
    text_name,
)
from ae3tools.formats.romfs.names import escape_name, show_name
from ae3tools.formats.romfs.reader import parse_romfs
from ae3tools.formats.romfs.records import (
    MAX_ROMFS_SIZE,
    encode_vint,
    is_romfs,
    read_vint,
    romfs_extent,
)

__all__ = [
    "DEFAULT_EXCLUDES",
    "EXACT_PATH_LIMIT",
    "MAGIC",
    "MAX_EXTRACT_DEPTH",
    "MAX_ROMFS_SIZE",
    "MAX_SHOWN_ALIGNMENT",
    "OPENMV_ALIGNMENT",
    "REQUIRED_ALIGNMENT",
    "AlignmentRule",
    "BuildOptions",
    "BuiltImage",
    "Extraction",
    "LeftOut",
    "RomfsEntry",
    "RomfsHeader",
    "RomfsImage",
    "alignment_for",
    "build_romfs",
    "encode_vint",
    "escape_name",
    "exact_paths",
    "extract",
    "file_digests",
    "is_romfs",
    "parse_romfs",
    "read_vint",
    "romfs_extent",
    "show_name",
    "shown_paths",
    "text_name",
]
