"""Reading inputs with clear errors, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ae3tools.findings import Ae3Error, UsageError


def read_input(path: Path, *, limit: int | None = None, regular: bool = False) -> bytes:
    """Read a whole input file, refusing directories, missing files and huge files.

    `limit` caps how much is read: a file longer than that is refused without
    reading more than limit + 1 bytes. A pipe (`<(cat fw.bin)`) is read once, like a
    file; `regular` refuses it and devices instead (a key: a FIFO with no writer would
    block forever, /dev/zero is no key).
    """
    if regular:
        require_regular_file(path)
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


# Temporary files are named `.NAME.ae3tools-PID-RANDOM.tmp`: recognisably ours, and
# tied to the process that wrote them, so a later run can remove those a killed run left.
_TMP_TAG = "ae3tools"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{_TMP_TAG}-"


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of earlier ae3tools runs for `path` whose process is gone
    (a SIGKILL or a power cut leaves them; an interrupted run removes its own)."""
    directory = path.parent
    prefix = _tmp_prefix(path)
    try:
        candidates = [p for p in directory.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for candidate in candidates:
        pid_text = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            with contextlib.suppress(OSError):
                candidate.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        return _alive_on_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def _alive_on_windows(pid: int) -> bool:
    """Whether a process exists, asked of Windows itself: os.kill(pid, 0) there sends
    CTRL_C_EVENT (0) to the process group instead of probing."""
    import ctypes

    windll: Any = getattr(ctypes, "windll")  # noqa: B009 (Windows only; stubs lack it)
    kernel32 = windll.kernel32
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return bool(kernel32.GetLastError() == 5)  # ERROR_ACCESS_DENIED: it exists
    try:
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def require_regular_file(path: Path) -> None:
    """An input that must be a regular file (a usage error otherwise), checked without
    opening it: opening a FIFO waits for a writer."""
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a regular file")


def require_directory(path: Path) -> None:
    """An input directory must exist and be one (a usage error otherwise)."""
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise UsageError(f"{path}: {what}")


def refuse_output_over_input(output: Path, inputs: Iterable[Path | None]) -> None:
    """An output may never replace one of the command's inputs, nor land inside an input
    directory (it would be read as part of the input next time), whatever --force says."""
    target = output.resolve()
    for source in inputs:
        if source is None or not source.exists():
            continue
        resolved = source.resolve()
        same = target == resolved or (output.exists() and os.path.samefile(output, source))
        if same:
            raise UsageError(f"{output}: is also an input of this command; choose another output")
        if source.is_dir() and resolved in target.parents:
            raise UsageError(
                f"{output}: lies inside the input directory {source}; choose another output"
            )


def check_output(path: Path, *, force: bool = False) -> Path:
    """Refuse an output that exists (without `force`), is a directory, or has no
    directory to go in: checked before any work, so a long read is not wasted."""
    if path.is_dir():
        raise UsageError(f"{path}: is a directory")
    if path.exists() and not path.is_file():  # a device node or a FIFO: never replaced
        raise UsageError(f"{path}: not a regular file; ae3tools writes only files")
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists (use --force to overwrite)")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"{path}: directory {directory} does not exist")
    return directory


@contextlib.contextmanager
def atomic_output(path: Path, *, force: bool = False, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A stream whose bytes appear at `path` only when the block ends without error.

    They go to a temporary file in the same directory, renamed over `path` at the end;
    an interrupted write leaves no partial file at `path`. An existing file is kept
    unless `force` is set.
    """
    directory = check_output(path, force=force)
    remove_stale_temporaries(path)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f"{_tmp_prefix(path)}{os.getpid()}-", suffix=".tmp", dir=directory
        )
    except OSError as exc:
        raise Ae3Error(f"{path}: cannot write in {directory}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp_name, mode)
        _publish(tmp_name, path, force=force)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise Ae3Error(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise


def _publish(tmp_name: str, path: Path, *, force: bool) -> None:
    """Move the finished temporary file to `path`. Without `force`, by a hard link, which
    fails if `path` appeared meanwhile (two runs writing one output: the second is told,
    not silently overwritten); where links are not had (FAT), by the earlier check."""
    if not force:
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            raise UsageError(f"{path}: already exists (use --force to overwrite)") from None
        except OSError:
            pass  # no hard links on this file system: fall through to the rename
        else:
            os.unlink(tmp_name)
            return
    os.replace(tmp_name, path)


def write_atomic(path: Path, data: bytes, *, force: bool = False, mode: int = 0o644) -> None:
    """Write `data` to `path` through `atomic_output`."""
    with atomic_output(path, force=force, mode=mode) as stream:
        stream.write(data)


def file_sha256(path: Path) -> str:
    """The file's sha256, read in pieces (an image file can be the largest partition)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for piece in iter(lambda: stream.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()
