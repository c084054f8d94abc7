"""The evidence bundle of an estimate revision, a byte-reproducible ZIP (docs/pricing-rules.md §15, [EVD-*]).

Entries (§15), written in path order with the §15 ZIP rules (:func:`write_zip`) and JSON rules
(:func:`document_bytes`)::

    inputs_snapshot.json  {request (canonical, §13), request_hash, request_id, dedup_key, actor,
                           accepted_at, mixed_reason?}
    manifest.json         {bundle_format "kis-evidence/1", estimate_id, revision, catalog_version,
                           rules_version, files [{path, sha256, size_bytes}] of the five others}
    manifest.sig          extension, only with a signer (see below)
    result.json           the estimate as GetEstimate returns it, without the evidence hash
    rules_doc.json        {rules_version, rules [{rule_id, applied_to, why}]}
    tables/pricing.json   {catalog_version, rows {"accessories.csv": [...], "breakers.csv": [...],
                           "enclosures.csv": [...]}}, each row {line, values {header: raw cell}}
    trace.json            ``Quote.trace`` as the engine recorded it

Extension (not in §15): with a ``signer``, a seventh entry ``manifest.sig`` holds
``{"algorithm": "hmac-sha256", "key_id": ..., "signature": <lowercase hex HMAC-SHA256 of the
manifest.json bytes>}`` in the same JSON form. It signs the manifest, so the manifest does not list it
(§15's "five other entries" stays true); the manifest lists a SHA-256 of every other entry, so the
signature covers the whole content. HMAC is deterministic: the same revision signed with the same
key gives the same bytes, but a bundle rebuilt after a key rotation differs in ``manifest.sig``
(and so in its ZIP SHA-256) while ``manifest.json`` stays identical.

Choices where §15 is silent (docs/conventions.md §10):

* timestamps are truncated to whole seconds (``2025-10-01T03:04:05Z``); codec.py's microsecond
  text is the source, so storage and evidence agree on the instant up to the second;
* ``result.json`` uses the Estimate message's field names with JSON values, not proto3 JSON: money
  and counts are integers, decimals fixed-point strings (``decimal_to_text``), enums their names,
  absent values ``null`` (proto's ``""``/``0`` defaults would be ambiguous). A line carries ``qty`` or,
  on BUSBAR, ``qty_kg`` (the proto ``oneof``), never both. ``status``/``decision`` are the record's
  (its lifecycle), the rest the quote's. Review reasons carry ``resolution`` (``null`` or
  ``{reason_id, model, unit_price_krw}``). The request itself is not repeated: it is in
  ``inputs_snapshot.json``, in canonical form;
* ``inputs_snapshot.json`` writes ``request_id``/``dedup_key`` as ``null`` when absent and omits
  ``mixed_reason`` when absent (§15 marks only that one optional);
* rules are ``quote.rules`` plus ``extra_rules`` (facts the service owns: MIX-1 quota counter and
  grant, REV-R reviewer and answers), sorted by (rule_id, applied_to, why) as plain strings; ``why``
  only breaks ties so the order never depends on the caller's order; duplicates are kept;
* ``tables/pricing.json`` always has the three file keys (an unused file has ``[]``); a row used
  twice appears once; a reference to a line the catalog lacks is an :class:`EvidenceError`;
* every document is checked to hold only str/int/bool/None/list/dict with string keys: a float or a
  Decimal in the trace raises :class:`EvidenceError` rather than being written lossy or unstable.

Byte-reproducibility: the ZIP records are packed by :func:`write_zip` itself, in exactly the layout
the stdlib ``zipfile`` writer produces with §15's settings (pinned by a test against both a
hand-built APPNOTE archive and ``zipfile``), so they do not depend on the Python version.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from json.encoder import encode_basestring as _quote  # the C function json.dumps uses for str

from kis_estimator.server.engine.catalog import CATALOG_FILES, Catalog
from kis_estimator.server.engine.codec import (
    datetime_to_text,
    decimal_to_text,
    enclosure_document,
    phase_document,
    reason_document,
    selection_document,
    sizing_document,
    totals_document,
)
from kis_estimator.server.engine.model import (
    PricedLine,
    Quote,
    RuleApplication,
)
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.engine.request import canonical_request
from kis_estimator.server.evidence.signing import ManifestSigner, Signature

__all__ = [
    "BUNDLE_FORMAT",
    "CONTENT_PATHS",
    "INPUTS_PATH",
    "MANIFEST_PATH",
    "PRICING_PATH",
    "RESULT_PATH",
    "RULES_PATH",
    "SIGNATURE_PATH",
    "TRACE_PATH",
    "ZIP_DATE_TIME",
    "ZIP_EXTERNAL_ATTR",
    "ZIP_UNIX_SYSTEM",
    "EvidenceBundle",
    "EvidenceError",
    "build_bundle",
    "document_bytes",
    "evidence_timestamp",
    "inputs_document",
    "pricing_document",
    "result_document",
    "rules_document",
    "write_zip",
]

BUNDLE_FORMAT = "kis-evidence/1"
INPUTS_PATH = "inputs_snapshot.json"
MANIFEST_PATH = "manifest.json"
SIGNATURE_PATH = "manifest.sig"
RESULT_PATH = "result.json"
RULES_PATH = "rules_doc.json"
PRICING_PATH = "tables/pricing.json"
TRACE_PATH = "trace.json"
CONTENT_PATHS = (INPUTS_PATH, RESULT_PATH, RULES_PATH, PRICING_PATH, TRACE_PATH)  # sorted by path

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_UNIX_SYSTEM = 3
ZIP_EXTERNAL_ATTR = 0o100644 << 16  # regular file, rw-r--r--


class EvidenceError(ValueError):
    """The bundle cannot be built faithfully (wrong catalog, unknown row, non-JSON value)."""


@dataclass(frozen=True, slots=True)
class EvidenceBundle:
    """A built bundle; ``sha256`` is lowercase hex of ``zip_bytes`` (docs/pricing-rules.md §15)."""

    zip_bytes: bytes
    sha256: str
    size_bytes: int
    manifest: dict[str, object]
    manifest_json: bytes  # exactly the manifest.json entry
    signature: Signature | None


# --------------------------------------------------------------------------- §15 byte rules


def _check_json(value: object, path: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EvidenceError(f"{path}: key {key!r} is not a string")
            _check_json(item, f"{path}.{key}")
        return
    # floats and Decimals included: §15 wants fixed-decimal strings, written by the producer
    raise EvidenceError(f"{path}: {type(value).__name__} is not a JSON value of the evidence bundle")


class _NotPlain(Exception):
    """A value the fast writer leaves to ``json.dumps``: not of an exact JSON type, or refused."""


def _write_indented(value: object, out: list[str], newline: str) -> None:
    """Append ``value`` as ``json.dumps(..., ensure_ascii=False, sort_keys=True, indent=2)`` writes it.

    ``newline`` is ``"\\n"`` plus the indentation of the enclosing level. Only the exact types str,
    int, None, True, False, dict (str keys), list and tuple are written; anything else, subclasses
    included (StrEnum, IntEnum, a Mapping that is no dict), raises :class:`_NotPlain`.

    Why not ``json.dumps``: with ``indent`` CPython (< 3.14) uses its pure-Python encoder, whose
    nested generators re-yield every chunk once per level; this writer appends each chunk once and
    writes scalar members inline. The bytes are the same (tests/unit/test_evidence.py compares them
    over generated documents and every acceptance case's bundle).
    """
    kind = type(value)
    if kind is dict:
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        separator = "{" + inner
        for key, item in sorted(value.items()):  # type: ignore[attr-defined]  # kind is dict
            if type(key) is not str:
                raise _NotPlain
            item_kind = type(item)
            if item_kind is str:
                out.append(separator + _quote(key) + ": " + _quote(item))
            elif item_kind is int:
                out.append(separator + _quote(key) + ": " + int.__repr__(item))
            elif item is None:
                out.append(separator + _quote(key) + ": null")
            elif item is True:
                out.append(separator + _quote(key) + ": true")
            elif item is False:
                out.append(separator + _quote(key) + ": false")
            else:
                out.append(separator + _quote(key) + ": ")
                _write_indented(item, out, inner)
            separator = "," + inner
        out.append(newline + "}")
    elif kind is list or kind is tuple:
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        separator = "[" + inner
        for item in value:  # type: ignore[attr-defined]  # kind is list or tuple
            item_kind = type(item)
            if item_kind is str:
                out.append(separator + _quote(item))
            elif item_kind is int:
                out.append(separator + int.__repr__(item))
            else:
                out.append(separator)
                _write_indented(item, out, inner)
            separator = "," + inner
        out.append(newline + "]")
    elif kind is str:
        out.append(_quote(value))  # type: ignore[arg-type]  # kind is str
    elif kind is int:
        out.append(int.__repr__(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    else:
        raise _NotPlain


def document_bytes(obj: Mapping[str, object], name: str = "document") -> bytes:
    """UTF-8 of ``json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\\n"`` (§15)."""
    out: list[str] = []
    try:
        _write_indented(obj, out, "\n")
        text = "".join(out) + "\n"
    except _NotPlain:
        # Subclasses of the JSON types, or a value §15 refuses: the reference path, whose check
        # names the offending value.
        _check_json(obj, name)
        text = json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2, allow_nan=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate in some string
        raise EvidenceError(f"{name}: not encodable as UTF-8: {exc}") from None


def evidence_timestamp(value: datetime) -> str:
    """RFC 3339 UTC with whole seconds, e.g. ``2025-10-01T03:04:05Z`` (fraction truncated)."""
    return datetime_to_text(value).partition(".")[0] + "Z"


# PKWARE APPNOTE 6.3.x records, as the stdlib zipfile writer produces them for STORED entries with
# ASCII names and no extras (tests/unit/test_evidence.py pins the layout and compares with zipfile):
# local file header (4.3.7), central directory header (4.3.12), end of central directory (4.3.16).
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_END_RECORD = struct.Struct("<IHHHHIIH")
_ZIP_VERSION = 20  # 2.0: what zipfile writes as "made by" and "needed" for STORED entries
_ZIP_DOS_TIME = 0  # 00:00:00
_ZIP_DOS_DATE = (ZIP_DATE_TIME[0] - 1980) << 9 | ZIP_DATE_TIME[1] << 5 | ZIP_DATE_TIME[2]
_ZIP_MAX = 0xFFFF_FFFE  # beyond this zipfile switches to ZIP64 records; bundles are kilobytes


def write_zip(entries: Mapping[str, bytes]) -> bytes:
    """A ZIP of ``entries`` by the §15 rules: path order, STORED, 1980-01-01, Unix 0644, no extras.

    The records are packed directly (the bytes of ``zipfile.ZipFile.writestr`` with those settings,
    at a fifth of its cost); entry names must be ASCII, as every bundle path is.
    """
    local: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for path in sorted(entries):
        data = entries[path]
        try:
            name = path.encode("ascii")
        except UnicodeEncodeError:
            raise EvidenceError(f"ZIP entry name {path!r} is not ASCII") from None
        crc, size = zlib.crc32(data), len(data)
        if size > _ZIP_MAX or offset > _ZIP_MAX:
            raise EvidenceError(f"ZIP entry {path} does not fit a ZIP without ZIP64 records")
        header = _LOCAL_HEADER.pack(
            0x04034B50, _ZIP_VERSION, 0, 0, _ZIP_DOS_TIME, _ZIP_DOS_DATE, crc, size, size, len(name), 0
        )
        central.append(
            _CENTRAL_HEADER.pack(
                0x02014B50,
                ZIP_UNIX_SYSTEM << 8 | _ZIP_VERSION,
                _ZIP_VERSION,
                0,  # flags: no data descriptor, no encryption, no UTF-8 names
                0,  # STORED
                _ZIP_DOS_TIME,
                _ZIP_DOS_DATE,
                crc,
                size,
                size,
                len(name),
                0,  # extra field length
                0,  # comment length
                0,  # disk number
                0,  # internal attributes
                ZIP_EXTERNAL_ATTR,
                offset,
            )
            + name
        )
        local += (header, name, data)
        offset += len(header) + len(name) + size
    directory = b"".join(central)
    if len(entries) > 0xFFFE or offset > _ZIP_MAX:
        raise EvidenceError("the bundle does not fit a ZIP without ZIP64 records")
    end = _END_RECORD.pack(0x06054B50, 0, 0, len(entries), len(entries), len(directory), offset, 0)
    return b"".join(local) + directory + end


# --------------------------------------------------------------------------- documents


def _opt_decimal(value: Decimal | None) -> str | None:
    return None if value is None else decimal_to_text(value)


def _opt_timestamp(value: datetime | None) -> str | None:
    return None if value is None else evidence_timestamp(value)


def inputs_document(record: EstimateRecord) -> dict[str, object]:
    """``inputs_snapshot.json`` (§15)."""
    doc: dict[str, object] = {
        "request": canonical_request(record.request),
        "request_hash": record.request_hash,
        "request_id": record.request_id,
        "dedup_key": record.dedup_key,
        "actor": record.actor,
        "accepted_at": evidence_timestamp(record.accepted_at),
    }
    if record.request.mixed_reason is not None:
        doc["mixed_reason"] = record.request.mixed_reason
    return doc


def rules_document(quote: Quote, extra_rules: Iterable[RuleApplication]) -> dict[str, object]:
    """``rules_doc.json`` (§15): the quote's rules and the service's, sorted by rule_id, applied_to."""
    rules = sorted((*quote.rules, *extra_rules), key=lambda r: (r.rule_id, r.applied_to, r.why))
    return {
        "rules_version": quote.rules_version,
        "rules": [{"rule_id": r.rule_id, "applied_to": r.applied_to, "why": r.why} for r in rules],
    }


def pricing_document(quote: Quote, catalog: Catalog) -> dict[str, object]:
    """``tables/pricing.json`` (§15): exactly the catalog rows the quote used, raw cells, by line."""
    if catalog.version != quote.catalog_version:
        raise EvidenceError(
            f"estimate was priced with catalog {quote.catalog_version} but the catalog given is "
            f"{catalog.version}; evidence needs the rows of the estimate's own catalog"
        )
    used: dict[str, dict[int, Mapping[str, str]]] = {name: {} for name in CATALOG_FILES}
    for ref in quote.catalog_rows:
        if ref.file not in used:
            raise EvidenceError(f"catalog row reference to unknown file {ref.file!r}")
        raw = catalog.raw_row(ref.file, ref.line)
        if raw is None:
            raise EvidenceError(f"catalog {catalog.version[:8]} has no row at {ref.file}:{ref.line}")
        used[ref.file][ref.line] = raw
    return {
        "catalog_version": catalog.version,
        "rows": {
            name: [{"line": line, "values": dict(rows[line])} for line in sorted(rows)]
            for name, rows in used.items()
        },
    }


def _line_doc(line: PricedLine) -> dict[str, object]:
    doc: dict[str, object] = {
        "no": line.no,
        "section": line.section,
        "name": line.name,
        "spec": line.spec,
        "unit": line.unit,
        "unit_price_krw": line.unit_price_krw,
        "amount_krw": line.amount_krw,
        "rule_id": line.rule_id,
        "notes": line.notes,
        "reason_id": line.reason_id,
    }
    # the Estimate message's `oneof quantity`, as convert.py fills it
    if line.qty_kg is not None:
        doc["qty_kg"] = decimal_to_text(line.qty_kg)
    else:
        doc["qty"] = line.qty
    return doc


def result_document(record: EstimateRecord) -> dict[str, object]:
    """``result.json`` (§15): the estimate as GetEstimate returns it, without the evidence hash."""
    q = record.quote
    return {
        "estimate_id": record.estimate_id,
        "revision": record.revision,
        "status": record.status.value,
        "decision": record.decision.value,
        "catalog_version": q.catalog_version,
        "rules_version": q.rules_version,
        "request_hash": record.request_hash,
        "request_id": record.request_id,
        "dedup_key": record.dedup_key,
        "accepted_at": evidence_timestamp(record.accepted_at),
        "completed_at": _opt_timestamp(record.completed_at),
        "enclosure": enclosure_document(q.enclosure),
        "sizing": sizing_document(q.sizing),
        "selections": [selection_document(s) for s in q.selections],
        "lines": [_line_doc(line) for line in q.lines],
        "totals": totals_document(q.totals),
        "review_reasons": [reason_document(r) for r in q.review_reasons],
        "warnings": [
            {"code": w.code, "path": w.path, "message_en": w.message_en, "message_ko": w.message_ko}
            for w in q.warnings
        ],
        "phase_balance": phase_document(q.phase_balance),
    }


def _signature_document(signature: Signature) -> dict[str, object]:
    return {"key_id": signature.key_id, "algorithm": signature.algorithm, "signature": signature.signature}


# --------------------------------------------------------------------------- the bundle


def build_bundle(
    record: EstimateRecord,
    catalog: Catalog,
    *,
    signer: ManifestSigner | None,
    extra_rules: Sequence[RuleApplication] = (),
) -> EvidenceBundle:
    """The §15 ZIP of ``record``'s revision; same inputs (and signing key) give the same bytes.

    ``catalog`` must be the catalog the estimate was priced with (``EvidenceError`` otherwise).
    """
    quote = record.quote
    entries = {
        INPUTS_PATH: document_bytes(inputs_document(record), INPUTS_PATH),
        RESULT_PATH: document_bytes(result_document(record), RESULT_PATH),
        RULES_PATH: document_bytes(rules_document(quote, extra_rules), RULES_PATH),
        PRICING_PATH: document_bytes(pricing_document(quote, catalog), PRICING_PATH),
        TRACE_PATH: document_bytes(quote.trace, TRACE_PATH),
    }
    manifest: dict[str, object] = {
        "bundle_format": BUNDLE_FORMAT,
        "estimate_id": record.estimate_id,
        "revision": record.revision,
        "catalog_version": quote.catalog_version,
        "rules_version": quote.rules_version,
        "files": [
            {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
            for path, data in sorted(entries.items())
        ],
    }
    manifest_json = document_bytes(manifest, MANIFEST_PATH)
    entries[MANIFEST_PATH] = manifest_json
    signature = None if signer is None else signer.sign(manifest_json)
    if signature is not None:
        entries[SIGNATURE_PATH] = document_bytes(_signature_document(signature), SIGNATURE_PATH)
    zip_bytes = write_zip(entries)
    return EvidenceBundle(
        zip_bytes=zip_bytes,
        sha256=hashlib.sha256(zip_bytes).hexdigest(),
        size_bytes=len(zip_bytes),
        manifest=manifest,
        manifest_json=manifest_json,
        signature=signature,
    )
