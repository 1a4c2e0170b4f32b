"""Drive a camera with OpenMV's own host library, `openmv` (PyPI), unpatched.

Run by the witness interpreter (.venv-witness, Python 3.12+), not by pytest:

    python tests/witness_openmv_client.py PORT [--ack 0|1] [--max-payload N] [--script TEXT]

Prints one JSON object: what the library read from the camera, then boots it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port")
    parser.add_argument("--ack", type=int, default=1)
    parser.add_argument("--max-payload", type=int, default=4096)
    parser.add_argument("--script", default=None)
    parser.add_argument("--read-stdout", action="store_true")
    args = parser.parse_args()

    from openmv import Camera

    camera = Camera(args.port, ack=bool(args.ack), max_payload=args.max_payload)
    camera.connect()
    seen = {
        "version": camera.verinfo,
        "sysinfo": camera.sysinfo,
        "channels": {str(number): channel for number, channel in camera.channels_by_id.items()},
        "caps": camera.caps,
        "stats": camera.device_stats(),
        "status": camera.read_status(),
        "frame": camera.read_frame(),
    }
    if args.read_stdout:
        deadline = time.monotonic() + 5
        text = ""
        while "fps" not in text and time.monotonic() < deadline:
            text += camera.read_stdout() or ""
            time.sleep(0.05)
        seen["stdout"] = text
    if args.script is not None:
        camera.exec(args.script)
        time.sleep(0.2)
        seen["running"] = camera.read_status()["stdin"]
        camera.stop()
        time.sleep(0.2)
        seen["stopped"] = not camera.read_status()["stdin"]
    seen["host_stats"] = camera.host_stats()
    camera.boot()
    json.dump(seen, sys.stdout, default=list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
