"""Run in .venv-witness: OpenMV's openmv-ota (PyPI 1.0.7) packs, verifies and reads ROMFS
images for the tests, many in one process (its start-up is most of a call's cost).

stdin: {"pack": [[tree, image], ...], "verify": [image, ...], "read": [image, ...],
"factory": [[body image, output], ...]}
stdout: {"verify": {image: [problem, ...]}, "read": {image: [[path, is_dir, data_offset,
sha256], ...]}}. Packing and verifying use the AE3 board's rules (OPENMV_AE3, partition 0)
and the default excludes, as `openmv-ota romfs pack|verify -b OPENMV_AE3` do. A factory
image is what `openmv-ota build factory` writes for the AE3's ROMFS0: its A/B slots, each
the body, 0xFF, a status sector and a trailer, composed by openmv-ota's own functions (the
signature is zeros: no key is at hand, and nothing here checks it).
"""

import hashlib
import json
import sys
from pathlib import Path

from openmv_ota.build.romfs import _compose_slot, provision_slots
from openmv_ota.ota import Trailer, geometry, pack_trailer, status
from openmv_ota.ota.algorithms import ES256, algorithm_for
from openmv_ota.romfs import builder
from openmv_ota.romfs.boards import get_board

BOARD = get_board("OPENMV_AE3")
RULES = builder.resolve_rules(BOARD.partition(None))


def factory_image(body: bytes) -> bytes:
    partition = BOARD.partition(None)
    block = geometry.control_block()
    overhead = geometry.slot_overhead(partition.erase_size)
    image = b""
    for size, counter in provision_slots(partition.size, partition.erase_size):
        pad = size - overhead - len(body)
        trailer = Trailer(
            body_size=len(body),
            pad_size=pad,
            meta={"app": "witness"},
            product_id=1,
            min_platform_version=0,
            payload_version=7,
            key_id=1,
            sig_alg=ES256,
            body_sha256=hashlib.sha256(body).digest(),
            signature=bytes(algorithm_for(ES256).sig_size),
        )
        sector = status.build_status_sector(
            block, pending=False, tried=False, confirmed=True, counter=counter
        )
        image += _compose_slot(body, pad, sector, pack_trailer(trailer), block, size)
    return image


def main() -> None:
    request = json.load(sys.stdin)
    for body, output in request.get("factory", []):
        Path(output).write_bytes(factory_image(Path(body).read_bytes()))
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
