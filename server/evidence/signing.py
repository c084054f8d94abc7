"""Signing ``manifest.json`` of an evidence bundle with HMAC-SHA256 under rotating server keys.

docs/pricing-rules.md §15 fixes the bundle's content but says nothing about authenticating it; this module is
an extension (the ``manifest.sig`` entry, see :mod:`kis_estimator.server.evidence.bundle`). Choices:

* HMAC-SHA256, not a public-key signature: the stdlib has it, and the verifier is the operator
  holding the same key ring (offline audit), not an outside party;
* a key ring maps key ids to keys; exactly one key is *active* and signs. Rotation = a new active
  key while the old ids stay in the ring, so bundles signed earlier keep verifying;
* key ids match ``[A-Za-z0-9._-]{1,64}`` (they travel in ``manifest.sig`` and in settings);
  keys have at least 32 bytes (RFC 2104 §3 strongly discourages keys shorter than the hash
  output, L = 32 bytes for SHA-256);
* signatures are lowercase hex; verification compares in constant time (``hmac.compare_digest``)
  and is strict: upper-case hex or another algorithm name is INVALID;
* no error message and no ``repr`` ever contains key material (docs/conventions.md §4).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

__all__ = [
    "ALGORITHM",
    "MIN_KEY_BYTES",
    "KeyRing",
    "ManifestSigner",
    "Signature",
    "SignatureStatus",
    "parse_keyring",
]


class SignatureStatus(StrEnum):
    """Outcome of checking ``manifest.sig``.

    :meth:`KeyRing.verify` returns VALID, INVALID or UNKNOWN_KEY; a verification report adds
    UNSIGNED (no ``manifest.sig``) and NOT_CHECKED (signed, but no key ring was given).
    """

    VALID = "VALID"
    INVALID = "INVALID"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    UNSIGNED = "UNSIGNED"
    NOT_CHECKED = "NOT_CHECKED"


@dataclass(frozen=True, slots=True)
class Signature:
    """A manifest signature as stored in ``manifest.sig``; ``signature`` is lowercase hex."""

    key_id: str
    algorithm: str
    signature: str


class ManifestSigner(Protocol):
    """What the bundle builder needs: sign the ``manifest.json`` bytes."""

    def sign(self, data: bytes) -> Signature: ...


class KeyRing:
    """HMAC-SHA256 keys by id; the active key signs, every key in the ring verifies."""

    __slots__ = ("_active", "_keys")

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        if not keys:
            raise ValueError("key ring is empty")
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
                raise ValueError(f"key id {key_id!r} must match [A-Za-z0-9._-]{{1,64}}")
            if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be at least {MIN_KEY_BYTES} bytes")
        if active_key_id not in keys:
            raise ValueError(f"active key id {active_key_id!r} is not in the key ring")
        self._keys: Mapping[str, bytes] = MappingProxyType(dict(keys))
        self._active = active_key_id

    @property
    def active_key_id(self) -> str:
        return self._active

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(active_key_id={self._active!r}, key_ids={sorted(self._keys)!r})"

    def sign(self, data: bytes) -> Signature:
        """HMAC-SHA256 of ``data`` under the active key."""
        digest = hmac.new(self._keys[self._active], data, hashlib.sha256).hexdigest()
        return Signature(key_id=self._active, algorithm=ALGORITHM, signature=digest)

    def derived_key(self, purpose: bytes) -> bytes:
        """A 32-byte key for another use, HMAC-SHA256(active key, ``purpose``): never the key itself.

        Used for page tokens (server/service/paging.py); it changes when the active key rotates.
        """
        if not purpose:
            raise ValueError("a derived key needs a purpose")
        return hmac.new(self._keys[self._active], purpose, hashlib.sha256).digest()

    def verify(self, data: bytes, signature: Signature) -> SignatureStatus:
        """VALID, INVALID (wrong algorithm or digest) or UNKNOWN_KEY (id not in this ring)."""
        key = self._keys.get(signature.key_id)
        if key is None:
            return SignatureStatus.UNKNOWN_KEY
        if signature.algorithm != ALGORITHM:
            return SignatureStatus.INVALID
        expected = hmac.new(key, data, hashlib.sha256).hexdigest().encode("ascii")
        # bytes, not str: compare_digest raises TypeError on non-ASCII str input
        given = signature.signature.encode("utf-8", "surrogatepass")
        return SignatureStatus.VALID if hmac.compare_digest(expected, given) else SignatureStatus.INVALID


def parse_keyring(spec: str, active: str | None = None) -> KeyRing:
    """Key ring from a settings string ``"k2:<hex>,k1:<hex>"``; the first id is active unless ``active``.

    Whitespace around items, ids and keys is ignored. Raises ``ValueError`` naming the item or key id
    (never the key) for an empty spec, an item without ``:``, a duplicate id, bad hex or a short key.
    """
    keys: dict[str, bytes] = {}
    order: list[str] = []
    for position, item in enumerate(spec.split(","), start=1):
        item = item.strip()
        if not item:
            raise ValueError(f"evidence key list: item {position} is empty")
        key_id, sep, hex_key = item.partition(":")
        key_id, hex_key = key_id.strip(), hex_key.strip()
        if not sep:
            raise ValueError(f"evidence key list: item {position} must be <key id>:<hex key>")
        if _KEY_ID.fullmatch(key_id) is None:
            raise ValueError(f"evidence key list: item {position}: key id must match [A-Za-z0-9._-]{{1,64}}")
        if key_id in keys:
            raise ValueError(f"evidence key list: key id {key_id!r} appears twice")
        try:
            key = bytes.fromhex(hex_key)
        except ValueError:
            raise ValueError(f"evidence key list: key {key_id!r} is not hexadecimal") from None
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(
                f"evidence key list: key {key_id!r} has {len(key)} bytes; at least {MIN_KEY_BYTES} required"
            )
        keys[key_id] = key
        order.append(key_id)
    chosen = order[0] if active is None else active.strip()
    if chosen not in keys:
        raise ValueError(f"active evidence key {chosen!r} is not in the key list ({', '.join(order)})")
    return KeyRing(keys, chosen)
