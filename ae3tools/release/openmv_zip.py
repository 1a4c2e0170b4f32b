"""OpenMV's own release zips as input (openmv-releases.md, cited as §N).

Two layouts: a tagged release (`firmware_vX.Y.Z.zip`) holds a folder per board, the
AE3's being `OPENMV_AE3/`, beside other boards' and the WiFi chips' folders (§1); a
development release (`firmware_OPENMV_AE3.zip`) holds the same files flat (§1, `zip -j`).
From the AE3's files, the four DFU images are taken and checked for their roles exactly
as a bundle's are; the rest is named and left alone, the bootloader above all (§2, §3).
The zip is read through the one archive reader bundles use.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ae3tools.board import BOARD_NAME, FLASH_ORDER, Role, partition_for_role
from ae3tools.fileio import require_regular_file
from ae3tools.findings import Ae3Error
from ae3tools.formats.artifact import Artifact, examine
from ae3tools.release.archive import (
    ZIP_ERRORS,
    ArchiveRefused,
    open_archive,
    read_member,
    safe_members,
)
from ae3tools.release.bundle import (
    MANIFEST_NAME,
    BundleImage,
    Input,
    ReleaseInfo,
    images_of,
    inputs_from_directory,
    read_signed_bundle,
)
from ae3tools.release.signing import SIGNATURE_NAME, TrustedKey

# §1: folders of a tagged release that hold no board's firmware.
WIFI_FOLDERS = frozenset({"CYW4343", "WINC1500"})

# §2, §3: the AE3 folder's other files, and why none of them goes over DFU.
LEFT_ALONE = {
    "bootloader.bin": "the bootloader: never written over DFU (BOOT is read-only; "
    "it is installed with the Alif SE tools)",
    "firmware_pad.toc": "the Alif TOC (alt 4): written only on explicit request, since "
    "a wrong one stops the camera from booting",
    "firmware.toc": "the unpadded TOC: not a DFU image",
}
LEFT_ALONE_SUFFIXES = {
    ".elf": "debug symbols: not an image",
    ".stamp": "build bookkeeping: not an image",
}


@dataclass(frozen=True)
class ReleaseZip:
    """The AE3's part of an OpenMV release zip."""

    path: str
    layout: str  # "tagged" or "flat"
    folder: str  # where the AE3's files are ("" for flat)
    artifacts: dict[Role, Artifact]
    left_alone: tuple[tuple[str, str], ...]  # member, why it is not written

    @property
    def description(self) -> str:
        where = f"folder {self.folder}" if self.folder else "files at the top"
        return f"OpenMV {self.layout} release zip ({where})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "openmv-release",
            "layout": self.layout,
            "folder": self.folder or None,
            "provenance": "unknown: an OpenMV release zip has no manifest, hashes or signature",
            "images": {role.value: a.source for role, a in self.artifacts.items()},
            "left_alone": [{"member": m, "why": why} for m, why in self.left_alone],
        }


def is_release_zip(path: Path) -> bool:
    """A zip without a bundle's manifest or signature at its top (so: not an ae3tools
    bundle; a bundle whose manifest was deleted is still a bundle, and refused as one)."""
    try:
        with open_archive(path) as archive:
            return not {MANIFEST_NAME, SIGNATURE_NAME} & set(archive.namelist())
    except (*ZIP_ERRORS, ArchiveRefused):  # the bundle reader then says why
        return False


def _why_left_alone(name: str) -> str:
    base = PurePosixPath(name).name
    if base in LEFT_ALONE:
        return LEFT_ALONE[base]
    for suffix, why in LEFT_ALONE_SUFFIXES.items():
        if base.endswith(suffix):
            return why
    return "not an AE3 image"


def read_release(path: Path) -> ReleaseZip:
    """The AE3 images in an OpenMV release zip, each examined for its role.

    UsageError for a missing file; Ae3Error for a zip that is hostile, for another
    board, or holds no AE3 image.
    """
    require_regular_file(path)
    try:
        with open_archive(path) as archive:
            return _read(path, archive)
    except ArchiveRefused as exc:
        raise Ae3Error(f"{path}: {exc}") from None
    except ZIP_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Ae3Error(f"{path}: not a readable zip: {reason}") from None


# What macOS adds when it re-zips a folder: resource forks, never an image.
_MACOS_METADATA = "__MACOSX"


def _read(path: Path, archive: zipfile.ZipFile) -> ReleaseZip:
    members = safe_members(archive, depth=3)
    left: list[tuple[str, str]] = []
    for name in [n for n in members if n.split("/")[0] == _MACOS_METADATA]:
        del members[name]
        left.append((name, "macOS metadata: not an image"))
    # §5: either layout may come wrapped in one top-level folder (a re-zipped download).
    tops = {name.split("/")[0] for name in members}
    wrapper = ""
    if len(tops) == 1 and all("/" in name for name in members):
        (top,) = tops
        if top != BOARD_NAME and top not in WIFI_FOLDERS:
            wrapper = f"{top}/"
    inside = {name[len(wrapper) :]: info for name, info in members.items()}
    too_deep = [name for name in inside if name.count("/") > 1]
    if too_deep:
        raise ArchiveRefused(
            f"unsafe member name {wrapper + too_deep[0]!r}: nested deeper than a release's"
        )
    folders = {name.split("/")[0] for name in inside if "/" in name}
    if BOARD_NAME in folders:
        layout, folder = "tagged", BOARD_NAME
    elif folders - WIFI_FOLDERS:
        boards = ", ".join(sorted(folders - WIFI_FOLDERS))
        raise Ae3Error(f"{path}: a release for {boards}, with no {BOARD_NAME} folder")
    else:
        layout, folder = "flat", ""  # content decides, not the zip's name
    prefix = f"{folder}/" if folder else ""
    own = {name[len(prefix) :]: info for name, info in inside.items() if name.startswith(prefix)}
    own = {name: info for name, info in own.items() if "/" not in name}
    # The IDE matches the image names in any case (§4): FIRMWARE_M55_HE.BIN is HE's.
    by_lower = {name.lower(): name for name in own}
    artifacts = {}
    for role in FLASH_ORDER:
        partition = partition_for_role(role)
        member = by_lower.get(str(partition.image_name).lower())
        if member is not None:
            # One byte past the partition: enough for the size check to say it does not fit.
            data = read_member(archive, own.pop(member), partition.size + 1)
            source = f"{path}:{wrapper}{prefix}{member}"
            artifacts[role] = examine(data, source=source, role=role)
    if not artifacts:
        names = ", ".join(str(partition_for_role(r).image_name) for r in FLASH_ORDER)
        raise Ae3Error(f"{path}: holds none of the AE3 images ({names})")
    left += [(f"{wrapper}{prefix}{name}", _why_left_alone(name)) for name in sorted(own)]
    left += [(f"{wrapper}{other}/", "another board's or a WiFi chip's files")
             for other in sorted(folders) if other != folder]  # fmt: skip
    if folder:  # files beside the board folders, AE3 images among them or not
        left += [(f"{wrapper}{name}", f"outside the {BOARD_NAME} folder: not taken from there")
                 for name in sorted(inside) if "/" not in name]  # fmt: skip
    return ReleaseZip(str(path), layout, wrapper + folder, artifacts, tuple(left))


@dataclass(frozen=True)
class FlashSource:
    """What `flash` writes, and where it comes from."""

    images: list[BundleImage]
    release: ReleaseZip | None = None  # an OpenMV release zip: what it left alone
    signer: str | None = None  # a signed bundle's key fingerprint, its signature checked

    def as_dict(self) -> dict[str, Any]:
        """Provenance, for reports and logs."""
        if self.release is not None:
            return {**self.release.as_dict(), "signer": None}
        return {"kind": "ae3tools-bundle", "signer": self.signer}


def images_for_flash(path: Path, trusted: TrustedKey | None = None) -> FlashSource:
    """What `flash` writes from `path`: a bundle's verified images (and who signed it),
    or an OpenMV release zip's images checked for their roles (then the release too, to
    say what was left alone and that its provenance is unknown)."""
    if not is_release_zip(path):
        images, signature = read_signed_bundle(path, trusted)
        return FlashSource(images, signer=signature.fingerprint if signature else None)
    if trusted is not None:
        raise Ae3Error(
            f"{path}: an OpenMV release zip is not signed, and --key accepts only a bundle "
            "signed by that key",
            hint=f"Make a signed bundle from it: ae3tools bundle --from {path} --sign KEY.pem",
        )
    release = read_release(path)
    return FlashSource(
        images_of(release.artifacts, ReleaseInfo(notes=f"from {path.name}")), release
    )


def inputs_from(source: Path) -> dict[Role, Input]:
    """`bundle --from`: a build directory, or an OpenMV release zip."""
    if source.is_file():
        return dict(read_release(source).artifacts)
    return dict(inputs_from_directory(source))
