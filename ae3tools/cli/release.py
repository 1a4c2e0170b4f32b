"""Commands on release bundles: bundle, verify."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from ae3tools.board import Role, partition_for_role
from ae3tools.cli.common import (
    EXIT_FAILED,
    STATUS_TEXT,
    ForceOption,
    JsonOption,
    app,
    emit_json,
    err,
    failure_line,
    finding_rows,
    new_table,
    out,
    plural,
    print_findings,
    print_table,
    printable,
    styled,
)
from ae3tools.fileio import refuse_output_over_input
from ae3tools.findings import Severity, errors_in

if TYPE_CHECKING:
    from rich.console import Console

    from ae3tools.release.bundle import BundleReport
    from ae3tools.release.openmv_zip import ReleaseZip
    from ae3tools.release.signing import TrustedKey


def signature_json(report: BundleReport, trusted: TrustedKey | None) -> dict[str, Any]:
    """Whether the bundle is signed, by which key, and whether that is the --key one."""
    signature = report.signature
    codes = {f.code for f in report.findings}
    return {
        "signed": signature is not None,
        "fingerprint": signature.fingerprint if signature else None,
        "matches_manifest": None if signature is None else "BUNDLE_SIGNATURE_INVALID" not in codes,
        "required_key": trusted.fingerprint if trusted else None,
        "by_required_key": None
        if trusted is None
        else bool(signature and signature.public_key == trusted.public_key),
    }


def signature_line(report: BundleReport, trusted: TrustedKey | None) -> str:
    state = signature_json(report, trusted)
    if not state["signed"]:
        return "not signed (integrity checked by sha256; provenance not)"
    if not state["matches_manifest"]:
        return f"signature by key {state['fingerprint']} does NOT match the manifest"
    trust = " (the --key given)" if state["by_required_key"] else ""
    return f"signed by key {state['fingerprint']}{trust}"


def report_json(report: BundleReport, trusted: TrustedKey | None = None) -> dict[str, Any]:
    manifest = report.manifest
    return {
        "bundle": report.path,
        "ok": report.ok,  # the envelope's, or an item's in `inspect`
        "signature": signature_json(report, trusted),
        "release": manifest.release.as_dict() if manifest else None,
        "created_by": manifest.created_by if manifest else None,
        "images": [
            {
                "role": image.entry.role.value,
                "alt": image.entry.alt,
                "alt_name": image.entry.alt_name,
                "file": image.entry.file,
                "order": image.entry.order,
                "length": image.entry.length,
                "partition_size": image.entry.partition_size,
                "use_percent": round(100 * image.entry.length / image.entry.partition_size, 2),
                "sha256": image.entry.sha256,
                "status": image.status,
                **finding_rows(image.findings),
            }
            for image in report.images
        ],
        **finding_rows(report.findings),
    }


def print_report(report: BundleReport, trusted: TrustedKey | None = None) -> None:
    manifest = report.manifest
    release = manifest.release.as_dict() if manifest else {}
    title = " ".join([report.path, *(f"{k}={v}" for k, v in release.items())])
    numbers = ("order", "size", "use")
    table = new_table(("order", "role", "alt", "size", "use", "sha256", "status"), numbers, title)
    for image in report.images:
        entry = image.entry
        table.add_row(
            str(entry.order),
            entry.role.name,
            f"{entry.alt} {entry.alt_name}",
            str(entry.length),
            f"{100 * entry.length / entry.partition_size:.1f}%",
            entry.sha256[:16],
            STATUS_TEXT[image.status],
        )
    if report.images:
        print_table(table)
    print_findings(
        [f for f in report.all_findings if f.severity is not Severity.INFO], f"{report.path}: "
    )
    if report.manifest is not None:
        out.print(f"{report.path}: {signature_line(report, trusted)}")
    verdict = styled("verified", "green") if report.ok else styled("FAILED", "red")
    out.print(Text.assemble(printable(f"{report.path}: "), verdict))


def show_bundle(path: Path, as_json: bool, trusted: TrustedKey | None = None) -> BundleReport:
    from ae3tools.release.bundle import open_bundle

    report = open_bundle(path, trusted)
    if as_json:
        emit_json(report_json(report, trusted), failure_line(report.path, report.all_findings))
    else:
        print_report(report, trusted)
    return report


KeyOption = typer.Option(
    None,
    "--key",
    metavar="PUB.pem",
    help="Accept only a bundle signed by this Ed25519 public key (PEM).",
)


def _alt(role: Role) -> str:
    partition = partition_for_role(role)
    return f"alt {partition.alt}, {partition.name}"


@app.command()
def bundle(
    hp: Path | None = typer.Option(
        None, "--hp", metavar="FILE", help=f"HP core firmware ({_alt(Role.HP)})."
    ),
    he: Path | None = typer.Option(
        None, "--he", metavar="FILE", help=f"HE core firmware ({_alt(Role.HE)})."
    ),
    romfs1: Path | None = typer.Option(
        None, "--romfs1", metavar="FILE", help=f"HE core ROMFS image ({_alt(Role.ROMFS1)})."
    ),
    romfs0: Path | None = typer.Option(
        None, "--romfs0", metavar="FILE", help=f"HP core ROMFS image ({_alt(Role.ROMFS0)})."
    ),
    from_dir: Path | None = typer.Option(
        None,
        "--from",
        metavar="DIR|ZIP",
        help="A directory holding the images under OpenMV's names (firmware_M55_HP.bin, "
        "firmware_M55_HE.bin, romfs1.img, romfs0.img: what a firmware build or an "
        "unzipped release leaves), or an OpenMV release zip as downloaded.",
    ),
    output: Path = typer.Option(
        Path("bundle.zip"), "--output", "-o", metavar="FILE", help="Bundle to write."
    ),
    release_version: str | None = typer.Option(
        None, "--release", metavar="VERSION", help="Release version to record, e.g. v4.7.0."
    ),
    build_date: str | None = typer.Option(
        None,
        "--build-date",
        metavar="DATE",
        help="Build date to record, as text: ISO 8601 is best (2026-12-05 or "
        "2026-12-05T10:00:00+00:00); 'now' writes the clock's (or SOURCE_DATE_EPOCH's).",
    ),
    git_revision: str | None = typer.Option(
        None, "--git-revision", metavar="REV", help="Git revision to record."
    ),
    notes: str | None = typer.Option(None, "--notes", metavar="TEXT", help="Free text to record."),
    partial: bool = typer.Option(
        False, "--partial", help="Allow a bundle with fewer than the four images (recorded)."
    ),
    sign_with: Path | None = typer.Option(
        None,
        "--sign",
        metavar="KEY.pem",
        help="Sign the manifest with this Ed25519 private key (PEM, as `openssl genpkey "
        "-algorithm ed25519` or `ae3tools keypair` writes).",
    ),
    force: bool = ForceOption,
    as_json: bool = JsonOption,
) -> None:
    """Validate release images and write them into one verified, reproducible bundle.

    Every image is checked for its role first; a bundle with an error is never written.
    Intel HEX and DFU-suffixed inputs are stored as the exact partition bytes. With
    `--sign`, a detached Ed25519 signature over the manifest (which holds every image's
    sha256) goes into the bundle; the same inputs and key still give the same bytes.

    Example: ae3tools bundle --from build/ --release v4.7.0 --sign release.pem -o ae3.zip
    """
    from ae3tools.release.bundle import (
        ReleaseInfo,
        merge_inputs,
        open_bundle,
        resolve_build_date,
        write_bundle,
    )
    from ae3tools.release.openmv_zip import inputs_from
    from ae3tools.release.signing import exposed_private_key, load_private_key

    # Every input, a zip that images are taken from and the signing key included, with or
    # without --force: the bundle's own inputs never hold which files those are.
    refuse_output_over_input(output, [from_dir, sign_with, hp, he, romfs1, romfs0])
    signing_key = load_private_key(sign_with) if sign_with is not None else None
    exposed = exposed_private_key(sign_with) if sign_with is not None else None
    if exposed:
        err.print(f"warning: {exposed}", soft_wrap=True)
    inputs = merge_inputs(
        {Role.HP: hp, Role.HE: he, Role.ROMFS1: romfs1, Role.ROMFS0: romfs0},
        inputs_from(from_dir) if from_dir is not None else {},
    )
    release = ReleaseInfo(release_version, resolve_build_date(build_date), git_revision, notes)
    written = write_bundle(
        output, inputs, release, force=force, partial=partial, signing_key=signing_key
    )
    report = open_bundle(output)  # read back what was written, through the one reader
    if as_json:
        emit_json(
            {**report_json(report), "bundle_sha256": written.sha256, "size": written.size},
            failure_line(report.path, report.all_findings),
        )
    else:
        print_report(report)
        out.print(f"wrote {output} ({written.size} bytes, sha256 {written.sha256})")
    if not report.ok:  # cannot happen unless the writer and reader disagree
        raise typer.Exit(EXIT_FAILED)


@app.command()
def verify(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle zip to check."),
    key: Path | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Re-check a bundle completely: manifest, members, hashes, and every image's checks.

    Hostile archives (path traversal, duplicates, symlinks, zip bombs, unknown versions)
    are refused without writing anything. A signed bundle's signature is checked and its
    key's fingerprint shown; with `--key`, an unsigned bundle, one signed by another
    key, or one altered after signing is refused. Exit status 0 only when all is well.

    Example: ae3tools verify ae3-v4.7.0.zip --key release.pub.pem
    """
    from ae3tools.release.openmv_zip import is_release_zip
    from ae3tools.release.signing import trusted_key

    trusted = trusted_key(key) if key is not None else None
    if is_release_zip(bundle_path):
        show_release(bundle_path, as_json, trusted)
    elif not show_bundle(bundle_path, as_json, trusted).ok:
        raise typer.Exit(EXIT_FAILED)


# Members of a release zip named one by one in text output; --json lists them all.
LEFT_ALONE_SHOWN = 20


def print_left_alone(console: Console, release: ReleaseZip) -> None:
    """What a release zip holds besides the AE3's images, a line each, the first few."""
    for member, why in release.left_alone[:LEFT_ALONE_SHOWN]:
        console.print(f"  left alone: {member}: {why}", soft_wrap=True)
    more = len(release.left_alone) - LEFT_ALONE_SHOWN
    if more > 0:
        console.print(f"  and {plural(more, 'member')} more left alone (--json lists all)")


def show_release(path: Path, as_json: bool, trusted: TrustedKey | None) -> None:
    """`verify` of an OpenMV release zip: its AE3 images checked for their roles, what is
    left alone, and what cannot be verified (no manifest, hashes or signature)."""
    from ae3tools.release.openmv_zip import read_release

    release = read_release(path)
    problems = [f for a in release.artifacts.values() for f in a.findings]
    unsigned = trusted is not None
    failure = failure_line(str(path), problems)
    if unsigned:
        failure = f"{path}: not signed: --key needs a signed bundle"
    if as_json:
        emit_json(
            {
                "bundle": str(path),
                "source": release.as_dict(),
                "images": [
                    {
                        "role": role.value,
                        "file": a.source,
                        "length": len(a.data),
                        **finding_rows(a.findings),
                    }
                    for role, a in release.artifacts.items()
                ],
            },
            failure,
        )
    else:
        out.print(f"{path}: {release.description}")
        for role, artifact in release.artifacts.items():
            status = "error" if errors_in(artifact.findings) else "ok"
            out.print(f"  {role.name:<7} {artifact.source}  {len(artifact.data)} bytes  ", end="")
            out.print(STATUS_TEXT["warning" if artifact.findings and status == "ok" else status])
            print_findings(artifact.findings, "    ")
        print_left_alone(out, release)
        out.print(
            f"{path}: images checked for their roles; provenance unknown (an OpenMV release "
            f"zip has no manifest, hashes or signature). For a verified bundle: "
            f"ae3tools bundle --from {path} -o bundle.zip",
            soft_wrap=True,
        )
        if unsigned:
            out.print(styled(f"{path}: not signed: --key needs a signed bundle", "red"))
    if failure is not None:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def keypair(
    output: Path = typer.Option(
        Path("release.pem"),
        "--output",
        "-o",
        metavar="KEY.pem",
        help="Private key to write (mode 0600); the public key goes beside it, KEY.pub.pem.",
    ),
    force: bool = ForceOption,
    as_json: bool = JsonOption,
) -> None:
    """Make an Ed25519 key pair for signing bundles: KEY.pem and KEY.pub.pem.

    Standard PEM files (PKCS#8 and SubjectPublicKeyInfo): openssl reads them, and keys
    from `openssl genpkey -algorithm ed25519` work with `bundle --sign` as well. Keep the
    private key secret; hand out the .pub.pem.

    Example: ae3tools keypair -o release.pem
    """
    from ae3tools.release.signing import make_key_pair

    public, fingerprint = make_key_pair(output, force=force)
    if as_json:
        emit_json(
            {"private_key": str(output), "public_key": str(public), "fingerprint": fingerprint}
        )
    else:
        out.print(f"wrote {output} (private, keep it secret) and {public}: key {fingerprint}")
