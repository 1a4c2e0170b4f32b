"""The verified release bundle: a reproducible zip of a manifest and the partition images.

`write_bundle` turns validated artifacts into the archive; `open_bundle` is the one
reader: it checks everything and reports; `read_bundle` is its strict form for the
flasher, returning the images in flash order or raising. The format is documented in
docs/bundle-format.md (with a JSON Schema beside it).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import os
import re
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from ae3tools import __version__
from ae3tools.board import (
    BOARD_NAME,
    BOOTLOADER_PID,
    FLASH_ORDER,
    USB_VID,
    Partition,
    Role,
    partition_for_role,
)
from ae3tools.fileio import (
    refuse_output_over_input,
    require_directory,
    require_regular_file,
    write_atomic,
)
from ae3tools.findings import (
    Ae3Error,
    Finding,
    FindingLog,
    Severity,
    UsageError,
    error,
    errors_in,
    warning,
    warnings_in,
)
from ae3tools.formats.artifact import Artifact, examine, load_artifact
from ae3tools.formats.firmware import FirmwareIdentity, build_mismatch, identities
from ae3tools.release.archive import (
    ZIP_ERRORS,
    ArchiveRefused,
    open_archive,
    read_member,
    safe_members,
    safe_name,
)
from ae3tools.release.signing import (
    MAX_SIGNATURE_SIZE,
    SIGNATURE_NAME,
    Signature,
    TrustedKey,
    check_signature,
    sign,
    signer_findings,
)

FORMAT = "ae3tools-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_SIZE = 1 << 20  # a manifest is a few KiB; refuse to read more than this

# Reproducibility: every member gets the same timestamp, mode and system, stored as is.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_MEMBER_MODE = stat.S_IFREG | 0o644
_UNIX = 3  # ZipInfo.create_system for Unix, so external_attr carries the mode


@dataclass(frozen=True)
class ReleaseInfo:
    """Optional release metadata, recorded as given (no clock unless asked for)."""

    version: str | None = None
    build_date: str | None = None
    git_revision: str | None = None
    notes: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class ManifestImage:
    """One image's manifest entry."""

    role: Role
    file: str  # member name inside the zip
    alt: int
    alt_name: str
    partition_start: int
    partition_size: int
    length: int
    sha256: str
    order: int  # position in the flash sequence, from 1
    source: str  # the input file's name, for the record
    container: str  # the input's form before normalising: bin, ihex, dfu-suffix
    warnings: tuple[str, ...] = ()

    @property
    def partition(self) -> Partition:
        return partition_for_role(self.role)

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "file": self.file,
            "alt": self.alt,
            "alt_name": self.alt_name,
            "partition_start": self.partition_start,
            "partition_size": self.partition_size,
            "length": self.length,
            "sha256": self.sha256,
            "order": self.order,
            "source": self.source,
            "container": self.container,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class Manifest:
    images: tuple[ManifestImage, ...]  # in flash order
    release: ReleaseInfo = ReleaseInfo()
    created_by: str = f"ae3tools {__version__}"
    partial: bool = False  # fewer than the four images, asked for with --partial
    # What the firmware images say they are (firmware_identity), for people and release
    # tools; the reader checks it against the images. Absent when no image says.
    firmware: tuple[tuple[Role, FirmwareIdentity], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "board": BOARD_NAME,
            "bootloader_usb_id": f"{USB_VID:04x}:{BOOTLOADER_PID:04x}",
            "created_by": self.created_by,
            "release": self.release.as_dict(),
            "flash_order": [image.role.value for image in self.images],
            "reset_after_last": True,
            **({"partial": True} if self.partial else {}),
            **({"firmware": self.firmware_dict()} if self.firmware else {}),
            "images": [image.as_dict() for image in self.images],
        }

    def firmware_dict(self) -> dict[str, dict[str, str | None]]:
        return {role.value: identity.as_dict() for role, identity in self.firmware}

    def to_json(self) -> bytes:
        return (json.dumps(self.as_dict(), indent=2) + "\n").encode()


@dataclass(frozen=True)
class WrittenBundle:
    """What write_bundle wrote: the archive's size and sha256, for release notes."""

    manifest: Manifest
    size: int
    sha256: str
    signature: Signature | None = None


@dataclass(frozen=True)
class BundleImage:
    """A verified image: the manifest entry and the exact bytes for its partition."""

    entry: ManifestImage
    data: bytes = field(repr=False)

    @property
    def role(self) -> Role:
        return self.entry.role

    @property
    def partition(self) -> Partition:
        return self.entry.partition


@dataclass(frozen=True)
class ImageReport:
    entry: ManifestImage
    findings: tuple[Finding, ...]
    data: bytes | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        if errors_in(self.findings):
            return "error"
        return "warning" if self.findings else "ok"


@dataclass(frozen=True)
class BundleReport:
    """Everything open_bundle found: archive-level findings and one report per image."""

    path: str
    manifest: Manifest | None
    findings: tuple[Finding, ...]
    images: tuple[ImageReport, ...]
    signature: Signature | None = None  # present and matching the manifest, or an error

    @property
    def all_findings(self) -> list[Finding]:
        return [*self.findings, *(f for image in self.images for f in image.findings)]

    @property
    def ok(self) -> bool:
        return not errors_in(self.all_findings)


# ----------------------------------------------------------------------------- writing


def resolve_build_date(value: str | None) -> str | None:
    """'now' reads the clock, or SOURCE_DATE_EPOCH where a reproducible build sets it."""
    if value != "now":
        return value
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    utc = dt.timezone.utc
    moment = dt.datetime.fromtimestamp(int(epoch), utc) if epoch else dt.datetime.now(utc)
    return moment.replace(microsecond=0).isoformat()


# What each role's image is called in a build directory: OpenMV's firmware build, then
# openmv-ota's output (`<BOARD>-firmware-M55_HP.bin`, `<BOARD>-coprocessor-romfs.img`, and
# for ROMFS0 its plain `<BOARD>-romfs.img` or its A/B `<BOARD>-factory-romfs.img`).
BUILD_NAMES: dict[Role, tuple[str, ...]] = {
    Role.HP: ("firmware_M55_HP.bin", "*firmware-M55_HP.bin"),
    Role.HE: ("firmware_M55_HE.bin", "*firmware-M55_HE.bin"),
    Role.ROMFS1: ("romfs1.img", "*coprocessor-romfs.img"),
    Role.ROMFS0: ("romfs0.img", "*-romfs.img"),  # the ones no other role claimed
}


def inputs_from_directory(directory: Path) -> dict[Role, Path]:
    """Each role's image in a build directory, by the names in BUILD_NAMES; two
    candidates for one role are a usage error (name the one you mean)."""
    require_directory(directory)
    found: dict[Role, Path] = {}
    for role in FLASH_ORDER:  # ROMFS1 before ROMFS0: coprocessor-romfs.img is ROMFS1's
        matches = sorted(
            {path for pattern in BUILD_NAMES[role] for path in directory.glob(pattern)
             if path.is_file() and path not in found.values()}
        )  # fmt: skip
        if len(matches) > 1:
            names = ", ".join(path.name for path in matches)
            raise UsageError(
                f"{directory}: {names} could each be {role.name}; name one with --{role.value}"
            )
        if matches:
            found[role] = matches[0]
    if not found:
        names = ", ".join(name for role in FLASH_ORDER for name in BUILD_NAMES[role][:2])
        raise UsageError(f"{directory}: none of {names} found")
    return found


Input = Path | Artifact  # a file, or an image already examined (from a release zip)


def collect_artifacts(inputs: Mapping[Role, Input]) -> dict[Role, Artifact]:
    """Load and validate every input as the role it is offered for."""
    unknown = set(inputs) - set(FLASH_ORDER)
    if unknown:
        raise Ae3Error(f"cannot bundle {', '.join(r.name for r in unknown)}")
    if not inputs:
        raise UsageError("no images given: name at least one of --hp, --he, --romfs0, --romfs1")
    return {
        role: item if isinstance(item, Artifact) else load_artifact(item, role)
        for role, item in inputs.items()
    }


def images_of(artifacts: Mapping[Role, Artifact], release: ReleaseInfo) -> list[BundleImage]:
    """Checked artifacts as the images a flash writes, in flash order (Ae3Error naming
    the file if any has an error): what a bundle would hold, without the zip."""
    manifest = build_manifest(artifacts, release)
    return [BundleImage(entry, artifacts[entry.role].data) for entry in manifest.images]


def build_manifest(artifacts: Mapping[Role, Artifact], release: ReleaseInfo) -> Manifest:
    """Refuses (Ae3Error naming the file) if any artifact has an error."""
    for artifact in artifacts.values():
        problems = errors_in(artifact.findings)
        if problems:
            raise Ae3Error(f"{artifact.source}: {problems[0].message}; no bundle written")
    entries = []
    for order, role in enumerate((r for r in FLASH_ORDER if r in artifacts), start=1):
        artifact = artifacts[role]
        partition = partition_for_role(role)
        entries.append(
            ManifestImage(
                role=role,
                file=str(partition.image_name),
                alt=partition.alt,
                alt_name=partition.name,
                partition_start=partition.start,
                partition_size=partition.size,
                length=len(artifact.data),
                sha256=artifact.sha256,
                order=order,
                source=Path(artifact.source).name,
                container=artifact.container,
                warnings=tuple(f"{f.code}: {f.message}" for f in warnings_in(artifact.findings)),
            )
        )
    found = identities({role: artifact.data for role, artifact in artifacts.items()})
    return Manifest(tuple(entries), release, firmware=tuple(found.items()))


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = _UNIX
    info.external_attr = _MEMBER_MODE << 16
    return info


def bundle_bytes(
    manifest: Manifest, artifacts: Mapping[Role, Artifact], signature: Signature | None = None
) -> bytes:
    """The zip: manifest.json first, then the images in flash order, then the signature
    if there is one; byte-reproducible."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(_member(MANIFEST_NAME), manifest.to_json())
        for entry in manifest.images:
            archive.writestr(_member(entry.file), artifacts[entry.role].data)
        if signature is not None:
            archive.writestr(_member(SIGNATURE_NAME), signature.to_json())
    return buffer.getvalue()


# ----------------------------------------------------------------------------- reading


def _bad(message: str) -> NoReturn:
    raise ArchiveRefused(message)


def is_bundle(path: Path) -> bool:
    """Whether a file is a zip archive (and so should be read as a bundle). A pipe or a
    device is not looked into: what this read would take, the real read would miss."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as stream:
            return stream.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def open_bundle(path: Path, trusted: TrustedKey | None = None) -> BundleReport:
    """Check a bundle completely, in memory, writing nothing. Never raises for content.

    `trusted`: accept only a bundle signed by this key. Raises Ae3Error only when the
    file itself cannot be read.
    """
    require_regular_file(path)
    try:
        with open_archive(path) as archive:
            report = _check_archive(str(path), archive)
        if trusted is not None:
            extra = signer_findings(report.signature, trusted)
            report = replace(report, findings=(*report.findings, *extra))
        return report
    except ArchiveRefused as exc:
        return BundleReport(str(path), None, (error("BUNDLE_REFUSED", str(exc)),), ())
    except ZIP_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return BundleReport(
            str(path), None, (error("BUNDLE_UNREADABLE", f"not a readable zip: {reason}"),), ()
        )


def read_bundle(path: Path, trusted: TrustedKey | None = None) -> list[BundleImage]:
    """The verified images in flash order, or Ae3Error with the first problem."""
    return read_signed_bundle(path, trusted)[0]


def read_signed_bundle(
    path: Path, trusted: TrustedKey | None = None
) -> tuple[list[BundleImage], Signature | None]:
    """read_bundle, and the bundle's signature (verified against its manifest) if any."""
    report = open_bundle(path, trusted)
    problems = errors_in(report.all_findings)
    if problems:
        first = problems[0]
        where = f"{first.location}: " if first.location else ""
        raise Ae3Error(f"{path}: {where}{first.message}")
    images = [
        BundleImage(image.entry, image.data) for image in report.images if image.data is not None
    ]
    return images, report.signature


def _check_archive(path: str, archive: zipfile.ZipFile) -> BundleReport:
    seen = set(safe_members(archive, depth=1))
    if MANIFEST_NAME not in seen:
        _bad(f"no {MANIFEST_NAME}")
    raw_manifest = read_member(archive, archive.getinfo(MANIFEST_NAME), MAX_MANIFEST_SIZE)
    manifest = parse_manifest(raw_manifest)
    listed = {entry.file for entry in manifest.images}
    unlisted = sorted(seen - listed - {MANIFEST_NAME, SIGNATURE_NAME})
    log = FindingLog()  # capped: a crafted bundle lists thousands
    for name in unlisted:
        log.report("BUNDLE_UNLISTED", Severity.ERROR, f"member {name!r} is not in the manifest", "")
    findings = log.result()
    signature = None
    if SIGNATURE_NAME in seen:
        raw = read_member(archive, archive.getinfo(SIGNATURE_NAME), MAX_SIGNATURE_SIZE)
        signature, problems = check_signature(raw, raw_manifest, MANIFEST_NAME)
        findings.extend(problems)
    reports = []
    for entry in manifest.images:
        if entry.file not in seen:
            reports.append(
                ImageReport(entry, (error("BUNDLE_MISSING", "member missing", entry.file),))
            )
            continue
        data = read_member(archive, archive.getinfo(entry.file), entry.partition_size)
        reports.append(_check_image(entry, data))
    firmware = {r.entry.role: r.data for r in reports if r.data is not None}
    findings.extend(build_mismatch(firmware))
    if len(firmware) == len(reports):  # every image could be read: what they say is known
        found = identities(firmware)
        if manifest.firmware and dict(manifest.firmware) != found:
            said = ", ".join(f"{r.name}: {i.describe()}" for r, i in found.items()) or "nothing"
            findings.append(
                error(
                    "BUNDLE_FIRMWARE",
                    f"the manifest's firmware versions do not match the images (they say {said})",
                    MANIFEST_NAME,
                )
            )
    return BundleReport(path, manifest, tuple(findings), tuple(reports), signature)


def _check_image(entry: ManifestImage, data: bytes) -> ImageReport:
    where = entry.file
    if len(data) != entry.length:
        return ImageReport(
            entry,
            (error("BUNDLE_SIZE", f"{len(data)} bytes, manifest says {entry.length}", where),),
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        return ImageReport(
            entry, (error("BUNDLE_HASH", "sha256 does not match the manifest", where),)
        )
    checked = examine(data, source=entry.file, role=entry.role)
    findings = tuple(
        (error if f.severity is Severity.ERROR else warning)(f.code, f.message, where)
        for f in checked.findings
        if f.severity is not Severity.INFO
    )
    return ImageReport(entry, findings, data)


# ----------------------------------------------------------------------------- manifest


# The manifest's JSON Schema ships in the package: the one description of the format,
# for other tools (docs/bundle-format.md) and for this reader.
SCHEMA_NAME = "bundle-manifest.schema.json"
_MAX_SHOWN = 200  # characters of a schema message: it may quote a huge value


@functools.cache
def _schema_validator() -> Any:
    import jsonschema  # imported here: only reading a bundle needs it

    schema = json.loads(resources.files("ae3tools.release").joinpath(SCHEMA_NAME).read_text())
    base = jsonschema.Draft202012Validator
    # JSON Schema counts 1.0 as an integer; a manifest written by a program never holds
    # one, so a float where an integer belongs is refused as the wrong type.
    strict_types = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, type_checker=strict_types)(schema)


def _schema_problem(data: Any) -> str | None:
    """The most relevant schema violation, as "where: what", or None."""
    import jsonschema

    found = jsonschema.exceptions.best_match(_schema_validator().iter_errors(data))
    if found is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in found.absolute_path)
    message = found.message
    upper = isinstance(found.instance, str) and found.validator == "pattern"
    if upper and re.fullmatch(found.validator_value, str(found.instance).lower()):
        message = f"{_shown(found.instance)} is in upper case; a bundle holds it in lower case"
    if len(message) > _MAX_SHOWN:
        message = message[:_MAX_SHOWN] + "..."
    return f"{where.lstrip('.') or 'top level'}: {message}"


def _shown(value: Any) -> str:
    """A scalar from the manifest as JSON, cut short; a container by its kind only (it
    may be nested thousands deep)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return json.dumps(value)[:80]
    return f"a JSON {'object' if isinstance(value, dict) else 'array'}"


def parse_manifest(raw: bytes) -> Manifest:
    """Parse a manifest, check it against the schema, then against the board layout."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers malformed JSON and integers of thousands of digits;
        # RecursionError, nesting deeper than the decoder follows.
        reason = str(exc) or type(exc).__name__
        _bad(f"{MANIFEST_NAME} is not valid JSON: {reason[:_MAX_SHOWN]}")
    if not isinstance(data, dict):
        _bad(f"{MANIFEST_NAME} is not a JSON object")
    # Format and version first: a newer format deserves "upgrade", not a schema complaint.
    if data.get("format") != FORMAT:
        _bad(f"{MANIFEST_NAME}: format is {_shown(data.get('format'))}, not {FORMAT!r}")
    version = data.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        _bad(
            f"{MANIFEST_NAME}: format_version {_shown(version)} is not one this ae3tools "
            f"reads ({FORMAT_VERSION}); upgrade ae3tools"
        )
    problem = _schema_problem(data)
    if problem is not None:
        _bad(f"{MANIFEST_NAME}: {problem}")
    entries = [_parse_entry(item, index) for index, item in enumerate(data["images"])]
    roles = [e.role for e in entries]
    if len(set(roles)) != len(roles) or len({e.file for e in entries}) != len(entries):
        _bad(f"{MANIFEST_NAME}: an image role or file is listed twice")
    if sorted(e.order for e in entries) != list(range(1, len(entries) + 1)):
        _bad(f"{MANIFEST_NAME}: image order is not 1..{len(entries)}")
    entries.sort(key=lambda e: e.order)
    if data["flash_order"] != [e.role.value for e in entries]:
        _bad(
            f"{MANIFEST_NAME}: flash_order {', '.join(data['flash_order'])} contradicts the "
            f"images' order {', '.join(e.role.value for e in entries)}"
        )
    release = data["release"]
    known = {
        k: release[k] for k in ("version", "build_date", "git_revision", "notes") if k in release
    }
    firmware = tuple(
        (Role(role), FirmwareIdentity(**said)) for role, said in data.get("firmware", {}).items()
    )
    return Manifest(
        tuple(entries),
        ReleaseInfo(**known),
        data["created_by"],
        bool(data.get("partial")),
        firmware,
    )


def _parse_entry(item: dict[str, Any], index: int) -> ManifestImage:
    """One schema-valid image entry, checked against the board layout."""
    where = f"images[{index}]."
    role = Role(item["role"])
    if role not in FLASH_ORDER:
        _bad(f"{MANIFEST_NAME}: {where}role {role.value} cannot be bundled")
    partition = partition_for_role(role)
    entry = ManifestImage(
        role=role,
        file=item["file"],
        alt=item["alt"],
        alt_name=item["alt_name"],
        partition_start=item["partition_start"],
        partition_size=item["partition_size"],
        length=item["length"],
        sha256=item["sha256"],
        order=item["order"],
        source=item.get("source", ""),
        container=item.get("container", ""),
        warnings=tuple(item.get("warnings", ())),
    )
    recorded = (entry.alt, entry.alt_name, entry.partition_start, entry.partition_size)
    actual = (partition.alt, partition.name, partition.start, partition.size)
    if recorded != actual:
        _bad(
            f"{MANIFEST_NAME}: {where} says {role.value} goes to alt {entry.alt} "
            f"{entry.alt_name[:40]} at 0x{entry.partition_start:x}+0x{entry.partition_size:x}; "
            f"the AE3 layout has alt {partition.alt} {partition.name}"
        )
    if not 0 < entry.length <= partition.size:
        _bad(f"{MANIFEST_NAME}: {where}length {entry.length} does not fit {partition.name}")
    if not safe_name(entry.file):
        _bad(f"{MANIFEST_NAME}: {where}file {entry.file!r} is not a plain member name")
    return entry


def merge_inputs(
    explicit: Mapping[Role, Path | None], found: Mapping[Role, Input]
) -> dict[Role, Input]:
    """Explicit --hp/--he/... win over what --from found."""
    merged = dict(found)
    merged.update({role: path for role, path in explicit.items() if path is not None})
    return merged


def write_bundle(
    output: Path,
    inputs: Mapping[Role, Input],
    release: ReleaseInfo,
    *,
    force: bool = False,
    partial: bool = False,
    signing_key: Any = None,
) -> WrittenBundle:
    """Validate every input, then write the bundle atomically; nothing is written on error.

    A release has all four images; a bundle with fewer is written only when `partial`
    says so, and its manifest records that. `signing_key` (an Ed25519 private key) adds
    a signature over the manifest.
    """
    missing = [role for role in FLASH_ORDER if role not in inputs]
    if missing and not partial:
        names = ", ".join(f"--{role.value}" for role in missing)
        raise UsageError(
            f"{output}: no image given for {names}; a release has all four images "
            "(use --partial to bundle fewer on purpose)"
        )
    refuse_output_over_input(output, [i for i in inputs.values() if isinstance(i, Path)])
    artifacts = collect_artifacts(inputs)
    manifest = replace(build_manifest(artifacts, release), partial=bool(missing))
    signature = sign(manifest.to_json(), signing_key) if signing_key is not None else None
    archive = bundle_bytes(manifest, artifacts, signature)
    write_atomic(output, archive, force=force)
    return WrittenBundle(manifest, len(archive), hashlib.sha256(archive).hexdigest(), signature)
