"""Run in .venv-witness: OpenMV's openmv-ota (PyPI 1.0.7) packs, verifies and reads ROMFS
images for the tests, many in one process (its start-up is most of a call's cost).

stdin: {"pack": [[tree, image], ...], "verify": [image, ...], "read": [image, ...]}
stdout: {"verify": {image: [problem, ...]}, "read": {image: [[path, is_dir, data_offset,
sha256], ...]}}. Packing and verifying use the AE3 board's rules (OPENMV_AE3, partition 0)
and the default excludes, as `openmv-ota romfs pack|verify -b OPENMV_AE3` do.
"""

import hashlib
import json
import sys
from pathlib import Path

from openmv_ota.romfs import builder
from openmv_ota.romfs.boards import get_board

BOARD = get_board("OPENMV_AE3")
RULES = builder.resolve_rules(BOARD.partition(None))


def main() -> None:
    request = json.load(sys.stdin)
    for tree, image in request.get("pack", []):
        result = builder.build_for_board(tree, BOARD, exclude=list(builder.DEFAULT_EXCLUDES))
        Path(image).write_bytes(result.image)
    verified = {
        image: builder.verify_image(Path(image).read_bytes(), RULES).problems
        for image in request.get("verify", [])
    }
    read = {}
    for image in request.get("read", []):
        reader = builder.read_image(Path(image).read_bytes())
        read[image] = [
            [
                path,
                entry.is_dir,
                entry.data_offset,
                None if entry.is_dir else hashlib.sha256(entry.data or b"").hexdigest(),
            ]
            for path, entry in reader.walk()
        ]
    json.dump({"verify": verified, "read": read}, sys.stdout)


if __name__ == "__main__":
    main()
