"""Signed bundles: a detached Ed25519 signature over a bundle's manifest.

The manifest holds every image's sha256, so a signature over its exact bytes vouches for
the whole bundle. Keys are standard PEM files (`openssl genpkey -algorithm ed25519` makes
a private one; `openssl pkey -pubout` its public half); the cryptography package does
all the cryptography. Ed25519 signatures are deterministic: the same manifest and key
give the same signature, so a signed bundle stays byte-reproducible.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ae3tools.fileio import read_input, write_atomic
from ae3tools.findings import Finding, UsageError, error

SIGNATURE_NAME = "manifest.sig"  # the bundle member that holds it
SIGNATURE_FORMAT = "ae3tools-signature"
ALGORITHM = "ed25519"
MAX_SIGNATURE_SIZE = 1024  # a signature member is about 200 bytes; refuse more
MAX_KEY_FILE_SIZE = 16 * 1024


class BadSignature(ValueError):
    """A signature member that cannot be read as one."""


@dataclass(frozen=True)
class Signature:
    """Who signed (the raw 32-byte public key) and the 64-byte signature."""

    public_key: bytes
    signature: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def verifies(self, manifest: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(self.signature, manifest)
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> bytes:
        document = {
            "format": SIGNATURE_FORMAT,
            "algorithm": ALGORITHM,
            "public_key": base64.b64encode(self.public_key).decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "signs": "manifest.json",
        }
        return (json.dumps(document, indent=2) + "\n").encode()


@dataclass(frozen=True)
class TrustedKey:
    """The public key a bundle must be signed by (--key), and the file it came from."""

    public_key: bytes
    source: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


def check_signature(
    raw: bytes, manifest: bytes, manifest_name: str
) -> tuple[Signature | None, list[Finding]]:
    """A bundle's signature member against its manifest's exact bytes."""
    try:
        signature = parse_signature(raw)
    except BadSignature as exc:
        return None, [error("BUNDLE_SIGNATURE_UNREADABLE", f"{SIGNATURE_NAME}: {exc}")]
    if not signature.verifies(manifest):
        return signature, [
            error(
                "BUNDLE_SIGNATURE_INVALID",
                f"{manifest_name}: altered after it was signed (the signature by key "
                f"{signature.fingerprint} does not match it)",
            )
        ]
    return signature, []


def signer_findings(signature: Signature | None, trusted: TrustedKey) -> list[Finding]:
    """--key: the bundle must be signed, and by that key (a bad signature is reported
    by `check_signature` already)."""
    if signature is None:
        return [
            error(
                "BUNDLE_UNSIGNED",
                f"the bundle is not signed; --key {trusted.source} accepts only bundles "
                "signed by that key",
            )
        ]
    if signature.public_key != trusted.public_key:
        return [
            error(
                "BUNDLE_OTHER_SIGNER",
                f"signed by key {signature.fingerprint}, not by {trusted.source} "
                f"({trusted.fingerprint})",
            )
        ]
    return []


# The encodings of Ed25519's points of small order (libsodium refuses the same): under
# such a key, one fixed signature verifies for any manifest (the identity's), or for one
# manifest in 2, 4 or 8, so it proves nothing. tests/test_signing.py shows each is one.
SMALL_ORDER_KEYS = frozenset(
    bytes.fromhex(text)
    for text in (
        "0100000000000000000000000000000000000000000000000000000000000000",  # order 1
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    )
)


def fingerprint(public_key: bytes) -> str:
    """sha256 of the raw public key, as "sha256:<hex>"."""
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


def parse_signature(raw: bytes) -> Signature:
    try:
        document: Any = json.loads(raw)
        if document.get("format") != SIGNATURE_FORMAT or document.get("algorithm") != ALGORITHM:
            raise BadSignature(f"not an {SIGNATURE_FORMAT} of algorithm {ALGORITHM}")
        public_key = base64.b64decode(document["public_key"], validate=True)
        signature = base64.b64decode(document["signature"], validate=True)
    except BadSignature:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadSignature(f"unreadable ({type(exc).__name__})") from None
    if len(public_key) != 32 or len(signature) != 64:
        raise BadSignature("an Ed25519 key is 32 bytes and a signature 64")
    if public_key in SMALL_ORDER_KEYS:
        raise BadSignature(
            "its key is a point of small order: a signature under it can fit any manifest"
        )
    return Signature(public_key, signature)


def sign(manifest: bytes, private_key: Any) -> Signature:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Signature(public, private_key.sign(manifest))


def _pem(path: Path) -> bytes:
    return read_input(path, limit=MAX_KEY_FILE_SIZE, regular=True)


def load_private_key(path: Path) -> Any:
    """An Ed25519 private key from a PEM file (unencrypted, as openssl genpkey writes)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(_pem(path), password=None)
    except TypeError:
        raise UsageError(f"{path}: the key is encrypted; give an unencrypted PEM key") from None
    except UnsupportedAlgorithm:  # SM2, secp112r1, ...: a key, of no use here
        raise UsageError(f"{path}: not an Ed25519 key (bundles are signed with Ed25519)") from None
    except ValueError:
        raise UsageError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 key (bundles are signed with Ed25519)")
    return key


def exposed_private_key(path: Path) -> str | None:
    """A warning when a private key file can be read by others (POSIX), as ssh gives."""
    if os.name != "posix":
        return None
    mode = path.stat().st_mode & 0o777
    if not mode & 0o077:
        return None
    return f"{path}: the private key can be read by others (mode {mode:o}); chmod 600 it"


def trusted_key(path: Path) -> TrustedKey:
    return TrustedKey(load_public_key(path), str(path))


def load_public_key(path: Path) -> bytes:
    """The raw 32-byte Ed25519 public key from a PEM file (a public key, or a private
    one, whose public half is taken)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
        load_pem_public_key,
    )

    data = _pem(path)
    key: Any = None
    try:
        key = load_pem_public_key(data)
    except UnsupportedAlgorithm:
        pass  # a key of another algorithm: said below
    except ValueError:
        try:
            key = load_pem_private_key(data, password=None)
        except UnsupportedAlgorithm:
            pass
        except (ValueError, TypeError):
            raise UsageError(f"{path}: not a PEM public key") from None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path}: not an Ed25519 key (bundles are signed with Ed25519)")
    raw: bytes = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if raw in SMALL_ORDER_KEYS:
        raise UsageError(f"{path}: a point of small order, not a usable Ed25519 key")
    return raw


def make_key_pair(private_path: Path, *, force: bool = False) -> tuple[Path, str]:
    """Write a new Ed25519 key pair: the private key (mode 0600) and, beside it,
    NAME.pub.pem. Returns the public key's path and fingerprint."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    public_path = private_path.with_name(private_path.name.removesuffix(".pem") + ".pub.pem")
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise UsageError(f"{path}: already exists (use --force to overwrite)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    write_atomic(private_path, private, force=force, mode=0o600)
    write_atomic(public_path, public, force=force)
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return public_path, fingerprint(raw)
