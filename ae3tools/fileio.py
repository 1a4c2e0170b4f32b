"""Reading inputs with clear errors, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ae3tools.findings import Ae3Error, UsageError


def read_input(path: Path, *, limit: int | None = None) -> bytes:
    """Read a whole input file, refusing directories, missing files and huge files.

    `limit` caps how much is read: a file longer than that is refused without
    reading more than limit + 1 bytes.
    """
    try:
        with path.open("rb") as stream:
            data = stream.read() if limit is None else stream.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    except OSError as exc:
        raise Ae3Error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if limit is not None and len(data) > limit:
        raise Ae3Error(f"{path}: larger than {limit} bytes, the most any AE3 image can be")
    return data


def write_atomic(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename.

    An interrupted write leaves no partial file at `path`. An existing file is kept
    unless `force` is set.
    """
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists (use --force to overwrite)")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"{path}: directory {directory} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise Ae3Error(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise Ae3Error(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise
