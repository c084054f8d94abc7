"""Offline verification of an evidence bundle (docs/pricing-rules.md §15, and the ``manifest.sig`` extension).

:func:`verify_bundle` takes the ZIP bytes (and optionally the key ring) and reports, per entry, what
does not match ``manifest.json``. It never raises on bad input: garbage, a truncated archive, an
entry whose header claims gigabytes, or a manifest that is not JSON all become findings.

Choices where the spec is silent (docs/conventions.md §10):

* the expected entries are the five content paths of ``kis-evidence/1`` plus whatever the manifest
  lists; ``manifest.json`` and ``manifest.sig`` are the only other names allowed. Anything else is
  UNEXPECTED, including directory entries (§15 forbids them);
* the manifest is checked strictly: exactly the §15 keys, ``bundle_format == "kis-evidence/1"``,
  files sorted by path without duplicates, exactly the five content paths, lowercase-hex SHA-256,
  non-negative integer sizes. Hashes are still checked for every well-formed file item, so a bad
  manifest does not hide altered entries;
* entries are read only if STORED and unencrypted (§15 writes nothing else), so no decompressor
  ever runs on untrusted input; others are UNREADABLE. An entry is read at most
  :data:`MAX_ENTRY_BYTES` (64 MiB; real entries are a few KiB) and larger ones are TOO_LARGE,
  judged by the header and again while reading;
* a content entry whose CRC-32 does not match its bytes is ALTERED (it was changed in place);
* a name that occurs twice is DUPLICATE and its content is not judged (which copy counts is
  reader-dependent);
* signature: UNSIGNED when there is no ``manifest.sig``; NOT_CHECKED when signed and no key ring
  is given, or when the archive cannot be opened at all; a ``manifest.sig`` that is not the JSON
  object ``{algorithm, key_id, signature}`` of strings, or a signature without a readable
  ``manifest.json``, is INVALID even without a key ring;
* :attr:`VerificationReport.ok`: no finding, and the signature is VALID — or, without a key ring,
  UNSIGNED or NOT_CHECKED. With a key ring an unsigned bundle is not ok: stripping ``manifest.sig``
  and rewriting the manifest is exactly what a forgery would do.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from kis_estimator.server.evidence.bundle import BUNDLE_FORMAT, CONTENT_PATHS, MANIFEST_PATH, SIGNATURE_PATH
from kis_estimator.server.evidence.signing import ALGORITHM, KeyRing, Signature, SignatureStatus

__all__ = ["MAX_ENTRY_BYTES", "Finding", "FindingCode", "VerificationReport", "verify_bundle"]

MAX_ENTRY_BYTES = 64 * 1024 * 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MANIFEST_KEYS = frozenset(
    {"bundle_format", "estimate_id", "revision", "catalog_version", "rules_version", "files"}
)
_FILE_KEYS = frozenset({"path", "sha256", "size_bytes"})
_SIGNATURE_KEYS = frozenset({"key_id", "algorithm", "signature"})
# What zipfile raises on malformed archives and entries (STORED only, so no decompressor errors).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, RuntimeError)


class FindingCode(StrEnum):
    NOT_A_ZIP = "NOT_A_ZIP"
    MANIFEST_MISSING = "MANIFEST_MISSING"
    MANIFEST_INVALID = "MANIFEST_INVALID"
    ALTERED = "ALTERED"
    MISSING = "MISSING"
    UNEXPECTED = "UNEXPECTED"
    DUPLICATE = "DUPLICATE"
    TOO_LARGE = "TOO_LARGE"
    UNREADABLE = "UNREADABLE"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem; ``path`` is the ZIP entry concerned ("" for the archive itself)."""

    code: FindingCode
    path: str
    detail: str


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """Outcome of :func:`verify_bundle`; ``sha256``/``size_bytes`` describe the bytes given."""

    sha256: str
    size_bytes: int
    findings: tuple[Finding, ...]
    signature_status: SignatureStatus
    signature_detail: str = ""
    signature_key_id: str | None = None
    keyring_given: bool = False
    manifest: Mapping[str, object] | None = None
    verified_paths: tuple[str, ...] = field(default=())  # entries whose hash and size matched

    @property
    def ok(self) -> bool:
        """No finding, and the signature is acceptable (see the module docstring)."""
        if self.findings:
            return False
        if self.signature_status is SignatureStatus.VALID:
            return True
        if self.keyring_given:
            return False
        return self.signature_status in (SignatureStatus.UNSIGNED, SignatureStatus.NOT_CHECKED)

    def findings_for(self, path: str) -> tuple[FindingCode, ...]:
        """Codes of the findings about ``path``."""
        return tuple(f.code for f in self.findings if f.path == path)

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line, verdict last (untrusted text is escaped)."""
        out = [f"bundle sha256 {self.sha256} ({self.size_bytes} bytes)"]
        if self.manifest is not None:
            estimate_id, revision = self.manifest.get("estimate_id"), self.manifest.get("revision")
            out.append(f"estimate {_printable(str(estimate_id))} revision {_printable(str(revision))}")
        out.extend(f"OK          {path}" for path in self.verified_paths)
        out.extend(
            f"{f.code.value:<11} {_printable(f.path) or '(archive)'}: {_printable(f.detail)}"
            for f in self.findings
        )
        sig = f"signature   {self.signature_status.value}"
        if self.signature_key_id is not None:
            sig += f" (key {_printable(self.signature_key_id)})"
        if self.signature_detail:
            sig += f": {_printable(self.signature_detail)}"
        out.append(sig)
        verdict = "VERIFIED" if self.ok else "FAILED"
        out.append(f"{verdict}: {len(self.findings)} finding(s), signature {self.signature_status.value}")
        return out


def _printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped, so one fact stays one line."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[:500])


# --------------------------------------------------------------------------- reading


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[bytes | None, Finding | None]:
    path = info.filename
    if info.flag_bits & 0x1:
        return None, Finding(FindingCode.UNREADABLE, path, "entry is encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
        return None, Finding(
            FindingCode.UNREADABLE, path, f"compression method {info.compress_type}; bundles are STORED"
        )
    if info.file_size > MAX_ENTRY_BYTES or info.compress_size > MAX_ENTRY_BYTES:
        return None, Finding(
            FindingCode.TOO_LARGE, path, f"header size {info.file_size} bytes exceeds {MAX_ENTRY_BYTES}"
        )
    try:
        with archive.open(info) as handle:
            data = handle.read(MAX_ENTRY_BYTES + 1)
    except zipfile.BadZipFile as exc:
        if "CRC" in str(exc):
            return None, Finding(FindingCode.ALTERED, path, "CRC-32 does not match the entry's bytes")
        return None, Finding(FindingCode.UNREADABLE, path, str(exc))
    except _ZIP_ERRORS as exc:
        return None, Finding(FindingCode.UNREADABLE, path, f"{type(exc).__name__}: {exc}")
    if len(data) > MAX_ENTRY_BYTES:
        return None, Finding(FindingCode.TOO_LARGE, path, f"more than {MAX_ENTRY_BYTES} bytes")
    return data, None


def _parse_json_object(data: bytes) -> tuple[dict[str, object] | None, str]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, f"not UTF-8 JSON: {type(exc).__name__}: {exc}"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, ""


@dataclass(slots=True)
class _ManifestCheck:
    files: dict[str, tuple[str, int]]  # well-formed items: path -> (sha256, size)
    problems: list[str]


def _check_manifest(manifest: dict[str, object]) -> _ManifestCheck:
    check = _ManifestCheck(files={}, problems=[])
    keys = set(manifest)
    if keys != _MANIFEST_KEYS:
        missing, extra = sorted(_MANIFEST_KEYS - keys), sorted(keys - _MANIFEST_KEYS)
        check.problems.append(f"keys: missing {missing}, unknown {extra}")
    if manifest.get("bundle_format") != BUNDLE_FORMAT:
        check.problems.append(
            f"bundle_format is {manifest.get('bundle_format')!r}, expected {BUNDLE_FORMAT!r}"
        )
    for key in ("estimate_id", "catalog_version", "rules_version"):
        if key in manifest and not isinstance(manifest[key], str):
            check.problems.append(f"{key} is not a string")
    revision = manifest.get("revision")
    if "revision" in manifest and (
        isinstance(revision, bool) or not isinstance(revision, int) or revision < 1
    ):
        check.problems.append("revision is not a positive integer")
    files = manifest.get("files")
    if not isinstance(files, list):
        check.problems.append("files is not a list")
        return check
    paths: list[str] = []
    for i, item in enumerate(files):
        if not isinstance(item, dict) or set(item) != _FILE_KEYS:
            check.problems.append(f"files[{i}] is not {{path, sha256, size_bytes}}")
            continue
        path, digest, size = item["path"], item["sha256"], item["size_bytes"]
        if not isinstance(path, str):
            check.problems.append(f"files[{i}].path is not a string")
            continue
        paths.append(path)
        if not isinstance(digest, str) or _SHA256_HEX.fullmatch(digest) is None:
            check.problems.append(f"files[{i}].sha256 is not 64 lowercase hex digits")
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            check.problems.append(f"files[{i}].size_bytes is not a non-negative integer")
            continue
        if path in check.files:
            check.problems.append(f"files lists {path} twice")
            continue
        check.files[path] = (digest, size)
    if paths != sorted(paths):
        check.problems.append("files are not sorted by path")
    for path in CONTENT_PATHS:
        if path not in paths:
            check.problems.append(f"files does not list {path}")
    for path in sorted(set(paths) - set(CONTENT_PATHS)):
        check.problems.append(f"files lists {path!r}, which {BUNDLE_FORMAT} does not define")
    return check


def _parse_signature(data: bytes) -> tuple[Signature | None, str]:
    doc, problem = _parse_json_object(data)
    if doc is None:
        return None, problem
    if set(doc) != _SIGNATURE_KEYS or not all(isinstance(doc[k], str) for k in _SIGNATURE_KEYS):
        return None, "not an object of string key_id, algorithm, signature"
    return Signature(
        key_id=str(doc["key_id"]), algorithm=str(doc["algorithm"]), signature=str(doc["signature"])
    ), ""


# --------------------------------------------------------------------------- verification


def verify_bundle(zip_bytes: bytes, keyring: KeyRing | None = None) -> VerificationReport:
    """Check a bundle against its own manifest and, with ``keyring``, its signature. Never raises."""
    digest, size = hashlib.sha256(zip_bytes).hexdigest(), len(zip_bytes)
    keyring_given = keyring is not None
    try:
        archive = zipfile.ZipFile(io.BytesIO(zip_bytes))
        infos = archive.infolist()
    except _ZIP_ERRORS as exc:
        return VerificationReport(
            sha256=digest,
            size_bytes=size,
            findings=(Finding(FindingCode.NOT_A_ZIP, "", f"{type(exc).__name__}: {exc}"),),
            signature_status=SignatureStatus.NOT_CHECKED,
            signature_detail="archive unreadable",
            keyring_given=keyring_given,
        )
    with archive:
        return _verify_archive(archive, infos, digest, size, keyring)


def _verify_archive(
    archive: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    digest: str,
    size: int,
    keyring: KeyRing | None,
) -> VerificationReport:
    findings: list[Finding] = []
    by_name: dict[str, zipfile.ZipInfo] = {}
    duplicates: set[str] = set()
    for info in infos:
        if info.filename in by_name:
            duplicates.add(info.filename)
        by_name[info.filename] = info
    findings.extend(
        Finding(FindingCode.DUPLICATE, name, "entry name occurs more than once")
        for name in sorted(duplicates)
    )

    def read(name: str) -> bytes | None:
        if name in duplicates:
            return None
        data, finding = _read_entry(archive, by_name[name])
        if finding is not None:
            findings.append(finding)
        return data

    # manifest.json
    manifest: dict[str, object] | None = None
    manifest_json: bytes | None = None
    listed: dict[str, tuple[str, int]] = {}
    if MANIFEST_PATH not in by_name:
        findings.append(Finding(FindingCode.MANIFEST_MISSING, MANIFEST_PATH, "no manifest.json entry"))
    else:
        manifest_json = read(MANIFEST_PATH)
        if manifest_json is not None:
            manifest, problem = _parse_json_object(manifest_json)
            if manifest is None:
                findings.append(Finding(FindingCode.MANIFEST_INVALID, MANIFEST_PATH, problem))
            else:
                check = _check_manifest(manifest)
                listed = check.files
                findings.extend(
                    Finding(FindingCode.MANIFEST_INVALID, MANIFEST_PATH, p) for p in check.problems
                )

    # content entries
    verified: list[str] = []
    expected = sorted(set(CONTENT_PATHS) | set(listed))
    for path in expected:
        if path not in by_name:
            findings.append(
                Finding(FindingCode.MISSING, path, "listed in the manifest but absent from the ZIP")
            )
            continue
        data = read(path)
        if data is None or path not in listed:
            continue
        want_sha, want_size = listed[path]
        got_sha = hashlib.sha256(data).hexdigest()
        if got_sha != want_sha or len(data) != want_size:
            findings.append(
                Finding(
                    FindingCode.ALTERED,
                    path,
                    f"sha256 {got_sha} ({len(data)} bytes), manifest says {want_sha} ({want_size} bytes)",
                )
            )
        else:
            verified.append(path)
    allowed = set(expected) | {MANIFEST_PATH, SIGNATURE_PATH}
    findings.extend(
        Finding(FindingCode.UNEXPECTED, name, "entry is not listed in the manifest")
        for name in sorted(by_name)
        if name not in allowed
    )

    status, detail, key_id = _check_signature(by_name, duplicates, read, manifest_json, keyring)
    findings.sort(key=lambda f: (f.path != "", f.path, f.code.value, f.detail))
    return VerificationReport(
        sha256=digest,
        size_bytes=size,
        findings=tuple(findings),
        signature_status=status,
        signature_detail=detail,
        signature_key_id=key_id,
        keyring_given=keyring is not None,
        manifest=manifest,
        verified_paths=tuple(verified),
    )


def _check_signature(
    by_name: Mapping[str, zipfile.ZipInfo],
    duplicates: set[str],
    read: Callable[[str], bytes | None],
    manifest_json: bytes | None,
    keyring: KeyRing | None,
) -> tuple[SignatureStatus, str, str | None]:
    if SIGNATURE_PATH not in by_name:
        return SignatureStatus.UNSIGNED, "", None
    if SIGNATURE_PATH in duplicates:
        return SignatureStatus.INVALID, "manifest.sig occurs more than once", None
    data = read(SIGNATURE_PATH)
    if data is None:
        return SignatureStatus.INVALID, "manifest.sig unreadable", None
    signature, problem = _parse_signature(data)
    if signature is None:
        return SignatureStatus.INVALID, f"manifest.sig {problem}", None
    if manifest_json is None:
        return SignatureStatus.INVALID, "no readable manifest.json to check against", signature.key_id
    if keyring is None:
        return SignatureStatus.NOT_CHECKED, "no key ring given", signature.key_id
    status = keyring.verify(manifest_json, signature)
    if status is SignatureStatus.UNKNOWN_KEY:
        detail = f"key id not in the key ring ({', '.join(sorted(keyring.key_ids))})"
    elif status is SignatureStatus.INVALID and signature.algorithm != ALGORITHM:
        detail = f"algorithm {signature.algorithm!r} is not {ALGORITHM!r}"
    elif status is SignatureStatus.INVALID:
        detail = "HMAC does not match manifest.json"
    else:
        detail = ""
    return status, detail, signature.key_id
