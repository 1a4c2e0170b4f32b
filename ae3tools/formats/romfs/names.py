"""How ROMFS names and paths are shown: unambiguous, free of control characters, and
bounded in length whatever an image holds."""

from __future__ import annotations

from collections.abc import Sequence

# drive a terminal.
_PLAIN_BYTES = bytes(range(0x20, 0x5C)) + bytes(range(0x5D, 0x7F))
_ESCAPES = {b: f"\\x{b:02x}" for b in range(256) if bytes([b]) not in _PLAIN_BYTES}
_ESCAPES[0x5C] = "\\\\"

# A name may be megabytes long, and is shown in the path of every entry below it: a
# name longer than this (raw, or escaped) is shown by its first bytes, its length and
# its record's offset, which no other entry shares. 255 is what host file systems take.
LONG_NAME = 255
_LONG_NAME_KEPT = 48


def escape_name(raw: bytes) -> str:
    """A name's bytes as text that is unambiguous and free of control characters."""
    if not raw.translate(None, _PLAIN_BYTES) and not raw.endswith(b" "):
        return raw.decode("ascii")
    shown = raw.decode("latin-1").translate(_ESCAPES)
    return shown[:-1] + "\\x20" if shown.endswith(" ") else shown


def show_name(raw: bytes, record_offset: int) -> str:
    """A ROMFS name as ae3tools prints it: escaped, and short (see LONG_NAME)."""
    if len(raw) <= LONG_NAME:
        shown = escape_name(raw)
        if len(shown) <= LONG_NAME:
            return shown
    kept = escape_name(raw[:_LONG_NAME_KEPT])
    return f"{kept}\u2026[{len(raw)}-byte name @ 0x{record_offset:x}]"


# A crafted image can nest directories a hundred thousand levels deep, under names of
# hundreds of bytes: every full path kept or printed would cost time and memory
# quadratic in the input. A path is shown by its first and last few levels, each side
# at most PATH_SIDE_LEVELS names and (past its first name) PATH_SIDE_CHARS characters,
# the middle elided. Nothing path-like is stored per entry.
PATH_SIDE_LEVELS = 8
PATH_SIDE_CHARS = 256


def _side(names: Sequence[str], limit: int) -> int:
    """How many of `names` (from one end of a path, `limit` at most) fit one side: at
    least one."""
    names = names[: min(limit, PATH_SIDE_LEVELS)]
    if sum(map(len, names)) + len(names) <= PATH_SIDE_CHARS:
        return len(names)  # the usual case, decided in C
    count, chars = 0, 0
    for name in names:
        chars += len(name) + 1
        if count and chars > PATH_SIDE_CHARS:
            break
        count += 1
    return count


def path_head(head: Sequence[str], depth: int) -> tuple[int, str]:
    """The levels a shown path starts with, and their text, from the first names."""
    first = _side(head, depth)
    return first, "/" + "/".join(head[:first])


def path_rest(head: tuple[int, str], tail: Sequence[str], depth: int) -> str:
    """A shown path from its head and the shown names of its last levels, root first."""
    first, text = head
    names = tail[max(0, len(tail) - (depth - first)) :]  # the levels the head leaves
    shown = "/".join(names)
    if len(shown) >= PATH_SIDE_CHARS:  # long names: those that fit, nearest first
        names = names[len(names) - _side(names[::-1], len(names)) :]
        shown = "/".join(names)
    hidden = depth - first - len(names)
    middle = f"/\u2026[{hidden} levels]\u2026" if hidden else ""
    return text + middle + ("/" + shown if names else "")


def elided_path(head: Sequence[str], tail: Sequence[str], depth: int) -> str:
    """The shown path of an entry `depth` levels deep, from the shown names of its first
    levels and of its last, each list root first and holding PATH_SIDE_LEVELS names,
    or all of them when the path is shallower."""
    return path_rest(path_head(head, depth), tail, depth)
