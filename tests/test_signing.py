"""Signed bundles: Ed25519 over the manifest, with keys openssl makes and reads, checked
against openssl's own verification; the three refusals under --key."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from ae3tools.release.bundle import MANIFEST_NAME
from ae3tools.release.signing import SIGNATURE_NAME
from tests.conftest import FIXTURES

GOOD = FIXTURES / "good"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


def openssl(*args: object) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, check=True, timeout=60
    )


@pytest.fixture
def keys(cli, tmp_path: Path) -> tuple[Path, Path]:
    private = tmp_path / "release.pem"
    result = cli("keypair", "-o", private, "--json")
    assert result.code == 0, result.err
    made = json.loads(result.out)
    assert made["public_key"] == str(tmp_path / "release.pub.pem")
    return private, Path(made["public_key"])


def signed_bundle(cli, directory: Path, private: Path, name: str = "signed.zip") -> Path:
    out = directory / name
    result = cli("bundle", "--from", GOOD, "--sign", private, "-o", out, "--release", "t")
    assert result.code == 0, result.err
    return out


def verify_json(cli, bundle: Path, *args: object) -> tuple[int, dict]:
    result = cli("verify", bundle, *args, "--json")
    return result.code, json.loads(result.out)


def rewrite(bundle: Path, out: Path, change: dict[str, bytes]) -> Path:
    """The same archive with some members' bytes replaced, the signature kept."""
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info, change.get(info.filename, source.read(info)))
    return out


def test_keypair_files(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_keypair_refuses_to_overwrite(cli, keys: tuple[Path, Path]) -> None:
    private, _ = keys
    before = private.read_bytes()
    result = cli("keypair", "-o", private)
    assert result.code == 2 and "already exists" in result.err
    assert private.read_bytes() == before


def test_signed_bundle_verifies_and_names_its_key(cli, tmp_path: Path, keys) -> None:
    private, public = keys
    bundle = signed_bundle(cli, tmp_path, private)
    code, report = verify_json(cli, bundle)
    assert code == 0 and report["signature"]["signed"] and report["signature"]["matches_manifest"]
    fingerprint = report["signature"]["fingerprint"]
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 7 + 64
    code, report = verify_json(cli, bundle, "--key", public)
    assert code == 0 and report["signature"]["by_required_key"] is True
    assert "signed by key sha256:" in cli("verify", bundle).out


def test_the_same_inputs_and_key_give_the_same_bytes(cli, tmp_path: Path, keys) -> None:
    private, _ = keys
    first = signed_bundle(cli, tmp_path, private, "a.zip")
    second = signed_bundle(cli, tmp_path, private, "b.zip")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
    assert names[0] == MANIFEST_NAME and names[-1] == SIGNATURE_NAME


def test_three_refusals_under_key(cli, tmp_path: Path, keys) -> None:
    private, public = keys
    signed = signed_bundle(cli, tmp_path, private)
    unsigned = tmp_path / "unsigned.zip"
    assert cli("bundle", "--from", GOOD, "-o", unsigned).code == 0
    other = tmp_path / "other.pem"
    assert cli("keypair", "-o", other).code == 0
    by_other = signed_bundle(cli, tmp_path, other, "other.zip")
    manifest = json.loads(zipfile.ZipFile(signed).read(MANIFEST_NAME))
    manifest["release"]["notes"] = "changed after signing"
    altered = rewrite(
        signed, tmp_path / "altered.zip", {MANIFEST_NAME: json.dumps(manifest).encode()}
    )
    messages = {}
    for name, bundle in (("unsigned", unsigned), ("other", by_other), ("altered", altered)):
        code, report = verify_json(cli, bundle, "--key", public)
        assert code == 1 and not report["ok"], name
        messages[name] = {e["code"] for e in report["errors"]}
    assert messages == {
        "unsigned": {"BUNDLE_UNSIGNED"},
        "other": {"BUNDLE_OTHER_SIGNER"},
        "altered": {"BUNDLE_SIGNATURE_INVALID"},
    }
    # Without --key, an altered signed bundle still fails: its signature does not match.
    assert verify_json(cli, altered)[0] == 1
    # An altered image with the manifest untouched is an integrity failure (sha256).
    image = bytearray((GOOD / "firmware_M55_HE.bin").read_bytes())
    image[100] ^= 1
    tampered = rewrite(signed, tmp_path / "image.zip", {"firmware_M55_HE.bin": bytes(image)})
    code, report = verify_json(cli, tampered, "--key", public)
    assert code == 1 and any(
        e["code"] == "BUNDLE_HASH" for i in report["images"] for e in i["errors"]
    )


def test_flash_refuses_before_touching_the_camera(cli, tmp_path: Path, keys) -> None:
    _, public = keys
    unsigned = tmp_path / "unsigned.zip"
    assert cli("bundle", "--from", GOOD, "-o", unsigned).code == 0
    camera = tmp_path / "cam"
    result = cli("flash", unsigned, "--key", public, "--virtual", camera)
    assert result.code == 1 and "not signed" in result.err and not camera.exists()


def test_bad_keys_are_usage_errors(cli, tmp_path: Path, keys) -> None:
    _, public = keys
    out = tmp_path / "x.zip"
    result = cli("bundle", "--from", GOOD, "--sign", public, "-o", out)
    assert result.code == 2 and "not a PEM private key" in result.err and not out.exists()
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    assert cli("verify", out, "--key", junk).code == 2
    assert cli("bundle", "--from", GOOD, "--sign", tmp_path / "none.pem", "-o", out).code == 2


def test_a_malformed_signature_member(cli, tmp_path: Path, keys) -> None:
    private, _ = keys
    signed = signed_bundle(cli, tmp_path, private)
    broken = rewrite(signed, tmp_path / "broken.zip", {SIGNATURE_NAME: b"{not json"})
    code, report = verify_json(cli, broken)
    assert code == 1 and {e["code"] for e in report["errors"]} == {"BUNDLE_SIGNATURE_UNREADABLE"}
    huge = rewrite(signed, tmp_path / "huge.zip", {SIGNATURE_NAME: b" " * 5000})
    code, report = verify_json(cli, huge)
    assert code == 1 and "more than 1024" in report["errors"][0]["message"]


@needs_openssl
def test_openssl_keys_sign_and_openssl_verifies(cli, tmp_path: Path) -> None:
    private, public = tmp_path / "o.pem", tmp_path / "o.pub.pem"
    openssl("genpkey", "-algorithm", "ed25519", "-out", private)
    openssl("pkey", "-in", private, "-pubout", "-out", public)
    bundle = signed_bundle(cli, tmp_path, private)
    assert verify_json(cli, bundle, "--key", public)[0] == 0
    # openssl checks our signature over the manifest's exact bytes.
    with zipfile.ZipFile(bundle) as archive:
        (tmp_path / "manifest.json").write_bytes(archive.read(MANIFEST_NAME))
        document = json.loads(archive.read(SIGNATURE_NAME))
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(document["signature"]))
    verified = openssl(
        "pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin",
        "-in", tmp_path / "manifest.json", "-sigfile", tmp_path / "sig.bin",
    )  # fmt: skip
    assert "Signature Verified Successfully" in verified.stdout
    # And openssl reads the keys ae3tools makes.
    assert cli("keypair", "-o", tmp_path / "mine.pem").code == 0
    assert "ED25519" in openssl("pkey", "-in", tmp_path / "mine.pem", "-noout", "-text").stdout


@needs_openssl
def test_keys_of_other_algorithms_and_exposed_keys(cli, tmp_path: Path) -> None:
    """A secp112r1 or SM2 key was an internal error (UnsupportedAlgorithm): now one line,
    exit 2, for signing and for --key. An Ed25519 key others can read is used, with a
    warning, as ssh warns."""
    good = Path(__file__).resolve().parent.parent / "fixtures" / "good"
    made = []
    for name, args in (("secp112r1", ("ecparam", "-name", "secp112r1", "-genkey", "-noout")),
                       ("sm2", ("genpkey", "-algorithm", "SM2"))):  # fmt: skip
        key = tmp_path / f"{name}.pem"
        try:
            openssl(*args, "-out", key)
        except subprocess.CalledProcessError:
            continue  # this openssl lacks the curve
        made.append(key)
        signing = cli("bundle", "--from", good, "--sign", key, "-o", tmp_path / "b.zip")
        assert signing.code == 2 and "not an Ed25519 key" in signing.err, name
        bundle = tmp_path / "plain.zip"
        if not bundle.exists():
            assert cli("bundle", "--from", good, "-o", bundle).code == 0
        trusting = cli("verify", bundle, "--key", key)
        assert trusting.code == 2 and "not an Ed25519 key" in trusting.err, name
    assert made, "openssl made neither key"
    exposed = tmp_path / "ed.pem"
    openssl("genpkey", "-algorithm", "ed25519", "-out", exposed)
    exposed.chmod(0o644)
    result = cli("bundle", "--from", good, "--sign", exposed, "-o", tmp_path / "s.zip")
    assert result.code == 0 and "can be read by others (mode 644); chmod 600 it" in result.err


def test_small_order_keys_are_refused(cli, tmp_path: Path) -> None:
    """A bundle 'signed' under a small-order key with the identity as R and S = 0: OpenSSL
    verifies that signature for any manifest under the identity key (and for 1 in 2, 4
    or 8 under the others, which this test measures: each listed key is of small
    order). It was shown as a signer; now the signature is refused as unreadable, and so
    is such a key given to --key."""
    import base64
    import json as json_module
    import os

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from ae3tools.release.signing import SMALL_ORDER_KEYS

    forged = bytes.fromhex("01" + "00" * 31) + bytes(32)
    for raw in SMALL_ORDER_KEYS:
        key = Ed25519PublicKey.from_public_bytes(raw)
        fits = 0
        for _ in range(200):
            try:
                key.verify(forged, os.urandom(16))
                fits += 1
            except InvalidSignature:
                pass
        assert fits >= 5, raw.hex()  # 1 in 8 at least: a random key would give 0
    identity = bytes.fromhex("01" + "00" * 31)
    good = Path(__file__).resolve().parent.parent / "fixtures" / "good"
    plain = tmp_path / "plain.zip"
    assert cli("bundle", "--from", good, "-o", plain).code == 0
    signature = {"format": "ae3tools-signature", "algorithm": "ed25519",
                 "public_key": base64.b64encode(identity).decode(),
                 "signature": base64.b64encode(forged).decode()}  # fmt: skip
    forged_bundle = tmp_path / "forged.zip"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(forged_bundle, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        target.writestr("manifest.sig", json_module.dumps(signature))
    result = cli("verify", forged_bundle)
    assert result.code == 1 and "small order" in result.out
    pem = tmp_path / "weak.pub.pem"
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem.write_bytes(
        Ed25519PublicKey.from_public_bytes(identity).public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = cli("verify", plain, "--key", pem)
    assert result.code == 2 and "small order" in result.err
