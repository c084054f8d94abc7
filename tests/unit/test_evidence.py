"""Evidence bundles (docs/pricing-rules.md §15): byte-reproducible ZIPs, manifest signing, verification."""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import io
import json
import struct
import sys
import zipfile
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kis_estimator.server.engine.catalog import CATALOG_FILES, DEFAULT_CATALOG_DIR, Catalog, load_catalog
from kis_estimator.server.engine.codec import record_from_document, record_to_document
from kis_estimator.server.engine.estimate import price_estimate
from kis_estimator.server.engine.model import CatalogRowRef, Resolution, RuleApplication, Status
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.engine.request import canonical_request, request_from_dict, request_hash
from kis_estimator.server.evidence.bundle import (
    CONTENT_PATHS,
    EvidenceBundle,
    EvidenceError,
    build_bundle,
    document_bytes,
    evidence_timestamp,
    write_zip,
)
from kis_estimator.server.evidence.signing import (
    KeyRing,
    ManifestSigner,
    Signature,
    SignatureStatus,
    parse_keyring,
)
from kis_estimator.server.evidence.verify import MAX_ENTRY_BYTES, FindingCode, verify_bundle

CASES_DIR = Path(__file__).resolve().parents[2] / "server" / "acceptance" / "cases"
ACCEPTED = datetime(2025, 10, 1, 3, 4, 5, 987654, tzinfo=UTC)
COMPLETED = ACCEPTED + timedelta(seconds=1)  # 2025-10-01T03:04:06.987654Z
KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 148))
RESULT_KEYS = {
    "estimate_id",
    "revision",
    "status",
    "decision",
    "catalog_version",
    "rules_version",
    "request_hash",
    "request_id",
    "dedup_key",
    "accepted_at",
    "completed_at",
    "enclosure",
    "sizing",
    "selections",
    "lines",
    "totals",
    "review_reasons",
    "warnings",
    "phase_balance",
}
ZIP_ORDER = [
    "inputs_snapshot.json",
    "manifest.json",
    "result.json",
    "rules_doc.json",
    "tables/pricing.json",
    "trace.json",
]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()  # expensive and immutable (docs/conventions.md §9)


def case_request(case_id: str) -> dict[str, Any]:
    case = json.loads((CASES_DIR / f"{case_id}.json").read_text(encoding="utf-8"))
    text = json.dumps(case["steps"][0]["request"], ensure_ascii=False).replace("{run}", "t1-")
    request: dict[str, Any] = json.loads(text)
    return request


def make_record(
    case_id: str, catalog: Catalog, resolutions: Mapping[str, Resolution] | None = None, revision: int = 1
) -> EstimateRecord:
    req = request_from_dict(case_request(case_id))
    quote = price_estimate(req, catalog, resolutions)
    done = quote.status in (Status.COMPLETED, Status.REVIEWED)
    return EstimateRecord(
        estimate_id=f"E-{case_id}",
        revision=revision,
        status=quote.status,
        decision=quote.decision,
        request=req,
        request_hash=request_hash(req),
        request_id=req.request_id,
        dedup_key=req.dedup_key,
        actor="estimator@example",
        accepted_at=ACCEPTED,
        completed_at=COMPLETED if done else None,
        quote=quote,
    )


def entries(bundle: EvidenceBundle | bytes) -> dict[str, bytes]:
    data = bundle.zip_bytes if isinstance(bundle, EvidenceBundle) else bundle
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def doc(bundle: EvidenceBundle, path: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(entries(bundle)[path].decode("utf-8"))
    return loaded


def rezip(bundle: EvidenceBundle, **changes: bytes | None) -> bytes:
    """The bundle's entries with some replaced (``None`` removes one), written by the §15 rules.

    Keyword names use ``__`` for ``/`` and ``_json``/``_sig`` for the extension.
    """
    out = entries(bundle)
    for key, value in changes.items():
        path = key.replace("__", "/").replace("_json", ".json").replace("_sig", ".sig")
        if value is None:
            del out[path]
        else:
            out[path] = value
    return write_zip(out)


def flip_first_byte_of(data: bytes, needle: bytes) -> bytes:
    i = data.index(needle)
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


# --------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("case_id", ["S01", "S08", "M31"], ids=["completed", "needs_review", "mixed"])
def test_same_record_gives_identical_bytes(case_id: str, catalog: Catalog) -> None:
    record = make_record(case_id, catalog)
    first = build_bundle(record, catalog, signer=None)
    second = build_bundle(make_record(case_id, catalog), catalog, signer=None)
    assert first.zip_bytes == second.zip_bytes
    assert first.sha256 == second.sha256 == hashlib.sha256(first.zip_bytes).hexdigest()
    assert first.size_bytes == len(first.zip_bytes)


@pytest.mark.parametrize("case_id", ["S01", "S08", "M31"], ids=["completed", "needs_review", "mixed"])
def test_record_read_back_from_storage_gives_identical_bytes(case_id: str, catalog: Catalog) -> None:
    record = make_record(case_id, catalog)
    stored = json.loads(json.dumps(record_to_document(record), ensure_ascii=False))
    ring = KeyRing({"k1": KEY_1}, "k1")
    original = build_bundle(record, catalog, signer=ring)
    reread = build_bundle(record_from_document(stored), catalog, signer=ring)
    assert reread.zip_bytes == original.zip_bytes
    assert reread.sha256 == original.sha256


def test_signed_bundle_bytes_depend_only_on_the_signing_key(catalog: Catalog) -> None:
    record = make_record("S01", catalog)
    old = build_bundle(record, catalog, signer=KeyRing({"k1": KEY_1}, "k1"))
    rotated = KeyRing({"k1": KEY_1, "k2": KEY_2}, "k2")
    assert build_bundle(record, catalog, signer=KeyRing({"k1": KEY_1, "k2": KEY_2}, "k1")).zip_bytes == (
        old.zip_bytes
    )
    new = build_bundle(record, catalog, signer=rotated)
    assert new.manifest_json == old.manifest_json
    assert new.sha256 != old.sha256


def _appnote_zip(files: dict[str, bytes]) -> bytes:
    """The §15 ZIP built by hand from PKWARE APPNOTE 4.3.7 / 4.3.12 / 4.3.16 (sorted, STORED)."""
    dos_date = (0 << 9) | (1 << 5) | 1  # 1980-01-01; DOS time 00:00:00 is 0
    local, central = b"", b""
    for name, data in sorted(files.items()):
        raw, crc = name.encode("ascii"), zlib.crc32(data)
        fixed = struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, dos_date, crc, len(data), len(data), len(raw), 0)
        central += struct.pack("<IBB", 0x02014B50, 20, 3) + fixed
        central += struct.pack("<HHHII", 0, 0, 0, 0o100644 << 16, len(local)) + raw
        local += struct.pack("<I", 0x04034B50) + fixed + raw + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(files), len(files), len(central), len(local), 0)
    return local + central + end


def test_write_zip_is_the_appnote_layout_of_section_15() -> None:
    # Pins the stdlib zipfile output: a change here would change every stored evidence.sha256.
    files = {"tables/c.json": b"{}\n", "a.json": "한\n".encode()}
    assert write_zip(files) == _appnote_zip(files)


def _stdlib_zip(files: dict[str, bytes]) -> bytes:
    """The §15 ZIP as the stdlib zipfile writer builds it (what write_zip used to call)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            archive.writestr(info, files[path])
    return buffer.getvalue()


_ZIP_NAMES = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_ZIP_NAMES, st.binary(max_size=3000), max_size=8))
def test_write_zip_equals_the_stdlib_zipfile_writer(files: dict[str, bytes]) -> None:
    assert write_zip(files) == _stdlib_zip(files)


def test_write_zip_refuses_names_a_bundle_never_has() -> None:
    with pytest.raises(EvidenceError, match="not ASCII"):
        write_zip({"결과.json": b"{}"})


# --------------------------------------------------------------------------- ZIP layout (§15)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_zip_members_follow_the_section_15_rules(signed: bool, catalog: Catalog) -> None:
    signer = KeyRing({"k1": KEY_1}, "k1") if signed else None
    bundle = build_bundle(make_record("S08", catalog), catalog, signer=signer)
    with zipfile.ZipFile(io.BytesIO(bundle.zip_bytes)) as archive:
        infos = archive.infolist()
        assert archive.comment == b""
    expected = sorted([*ZIP_ORDER, "manifest.sig"]) if signed else ZIP_ORDER
    assert [i.filename for i in infos] == expected
    for info in infos:
        assert not info.is_dir()
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.compress_size == info.file_size
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.create_system == 3
        assert info.external_attr == 0o100644 << 16
        assert info.comment == b""
        assert info.extra == b""
        assert info.flag_bits == 0  # no data descriptor, no encryption, ASCII names
    # local headers carry no extra field either (central-directory extras are checked above)
    for offset in (info.header_offset for info in infos):
        name_len, extra_len = struct.unpack("<HH", bundle.zip_bytes[offset + 26 : offset + 30])
        assert extra_len == 0
        assert name_len > 0


def test_manifest_lists_the_five_other_entries_with_their_hashes(catalog: Catalog) -> None:
    bundle = build_bundle(make_record("S01", catalog), catalog, signer=KeyRing({"k1": KEY_1}, "k1"))
    files = entries(bundle)
    assert files["manifest.json"] == bundle.manifest_json
    assert json.loads(bundle.manifest_json) == bundle.manifest
    assert bundle.manifest == {
        "bundle_format": "kis-evidence/1",
        "estimate_id": "E-S01",
        "revision": 1,
        "catalog_version": catalog.version,
        "rules_version": "KIS-RULES-1.0",
        "files": [
            {"path": path, "sha256": hashlib.sha256(files[path]).hexdigest(), "size_bytes": len(files[path])}
            for path in CONTENT_PATHS
        ],
    }
    assert list(CONTENT_PATHS) == sorted(CONTENT_PATHS)
    assert bundle.signature is not None
    assert json.loads(files["manifest.sig"]) == {
        "key_id": "k1",
        "algorithm": "hmac-sha256",
        "signature": bundle.signature.signature,
    }


@pytest.mark.parametrize("case_id", ["S01", "S08", "M31"], ids=["completed", "needs_review", "mixed"])
def test_json_entries_are_written_exactly_as_section_15_says(case_id: str, catalog: Catalog) -> None:
    bundle = build_bundle(make_record(case_id, catalog), catalog, signer=KeyRing({"k1": KEY_1}, "k1"))
    for path, data in entries(bundle).items():
        text = data.decode("utf-8")
        expected = json.dumps(json.loads(text), ensure_ascii=False, sort_keys=True, indent=2) + "\n"
        assert text == expected, path
        assert "\\u" not in text, path  # non-ASCII written as itself
        assert not text.endswith("\n\n"), path


class _Colour(StrEnum):
    RED = "red"


class _Level(IntEnum):
    HIGH = 3


_JSON_TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('"\\\n\t\x00\x1f\u2028한'))
_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | _JSON_TEXT
    | st.sampled_from([_Colour.RED, _Level.HIGH])  # subclasses take json.dumps's own path
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(_JSON_TEXT, inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_JSON_TEXT, _JSON_VALUES, max_size=5))
def test_document_bytes_equal_the_reference_json_dumps(document: dict[str, object]) -> None:
    # document_bytes writes indented JSON itself (speed); it must stay byte for byte §15's json.dumps
    expected = json.dumps(document, ensure_ascii=False, sort_keys=True, indent=2) + "\n"
    assert document_bytes(document) == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"a": [1, {"b": 1.5}]}, r"doc.a\[1\].b: float"),
        ({"a": {"b": Decimal("1.5")}}, r"doc.a.b: Decimal"),
        ({"a": {1: "x"}}, r"doc.a: key 1 is not a string"),
        ({"a": ["\ud800"]}, r"doc: not encodable as UTF-8"),
    ],
    ids=["float", "decimal", "int_key", "lone_surrogate"],
)
def test_document_bytes_refuse_what_section_15_cannot_hold(document: dict[str, object], message: str) -> None:
    with pytest.raises(EvidenceError, match=message):
        document_bytes(document, "doc")


def test_korean_text_is_written_unescaped(catalog: Catalog) -> None:
    bundle = build_bundle(make_record("S08", catalog), catalog, signer=None)
    result = entries(bundle)["result.json"].decode("utf-8")
    question_ko = doc(bundle, "result.json")["review_reasons"][0]["question_ko"]
    assert "제작 외함 단가(원)를 알려 주세요." in question_ko
    assert json.dumps(question_ko, ensure_ascii=False) in result


def test_floats_in_the_trace_are_refused(catalog: Catalog) -> None:
    record = make_record("S01", catalog)
    bad = dataclasses.replace(record.quote, trace={"steps": [{"kg": 7.35}]})
    with pytest.raises(EvidenceError, match=r"trace.json.steps\[0\].kg: float"):
        build_bundle(dataclasses.replace(record, quote=bad), catalog, signer=None)


# --------------------------------------------------------------------------- entry contents


def test_inputs_snapshot_of_a_single_brand_estimate(catalog: Catalog) -> None:
    record = make_record("S01", catalog)
    bundle = build_bundle(record, catalog, signer=None)
    assert doc(bundle, "inputs_snapshot.json") == {
        "request": canonical_request(record.request),
        "request_hash": record.request_hash,
        "request_id": "t1-S01",
        "dedup_key": "t1-dedup:ab12cd34",
        "actor": "estimator@example",
        "accepted_at": "2025-10-01T03:04:05Z",
    }
    assert "request_id" not in doc(bundle, "inputs_snapshot.json")["request"]


def test_mixed_estimate_keeps_its_reason_and_quota_facts(catalog: Catalog) -> None:
    record = make_record("M31", catalog)
    extra = [
        RuleApplication("MIX-1", "quota", "month 2025-10 (KST), counter after acceptance 2/2"),
        RuleApplication("MIX-1", "grant", "grant G-7 used"),
    ]
    bundle = build_bundle(record, catalog, signer=None, extra_rules=extra)
    reason = "Customer supplies the LS main breaker spec; branches SANGDO"
    assert doc(bundle, "inputs_snapshot.json")["mixed_reason"] == reason
    mix = [r for r in doc(bundle, "rules_doc.json")["rules"] if r["rule_id"] == "MIX-1"]
    assert mix == [
        {"rule_id": "MIX-1", "applied_to": "brand", "why": f"MIXED: {reason}"},
        {"rule_id": "MIX-1", "applied_to": "grant", "why": "grant G-7 used"},
        {
            "rule_id": "MIX-1",
            "applied_to": "quota",
            "why": "month 2025-10 (KST), counter after acceptance 2/2",
        },
    ]


def test_rules_are_the_quote_rules_plus_extra_rules_sorted(catalog: Catalog) -> None:
    record = make_record("S01", catalog)
    extra = [
        RuleApplication(
            "REV-R", "R1", "reviewer kim@example at 2025-10-02T01:00:00Z: model SBS-53, 15600 KRW"
        ),
        RuleApplication("MIX-1", "quota", "1/2"),
        RuleApplication("DUP-2", "meta.dedup_key", "b"),
        RuleApplication("DUP-2", "meta.dedup_key", "a"),
    ]
    rules_doc = doc(build_bundle(record, catalog, signer=None, extra_rules=extra), "rules_doc.json")
    assert rules_doc["rules_version"] == "KIS-RULES-1.0"
    got = [(r["rule_id"], r["applied_to"], r["why"]) for r in rules_doc["rules"]]
    everything = [(r.rule_id, r.applied_to, r.why) for r in (*record.quote.rules, *extra)]
    assert got == sorted(everything)
    assert sorted(got) == got
    assert ("REV-R", "R1", extra[0].why) in got
    # the caller's order of extra rules does not matter
    again = build_bundle(record, catalog, signer=None, extra_rules=list(reversed(extra)))
    assert again.zip_bytes == build_bundle(record, catalog, signer=None, extra_rules=extra).zip_bytes


def _csv_line(file: str, line: int) -> dict[str, str]:
    lines = (DEFAULT_CATALOG_DIR / file).read_text(encoding="utf-8").splitlines()
    header = next(csv.reader([lines[0]]))
    cells = next(csv.reader([lines[line - 1]]))
    return dict(zip(header, cells, strict=True))


@pytest.mark.parametrize("case_id", ["S01", "S08", "M31"], ids=["completed", "needs_review", "mixed"])
def test_pricing_rows_are_the_used_csv_lines_verbatim(case_id: str, catalog: Catalog) -> None:
    record = make_record(case_id, catalog)
    pricing = doc(build_bundle(record, catalog, signer=None), "tables/pricing.json")
    assert pricing["catalog_version"] == catalog.version
    assert sorted(pricing["rows"]) == sorted(CATALOG_FILES)
    used = {(ref.file, ref.line) for ref in record.quote.catalog_rows}
    got = {(file, row["line"]) for file, rows in pricing["rows"].items() for row in rows}
    assert got == used
    for file, rows in pricing["rows"].items():
        assert [row["line"] for row in rows] == sorted(row["line"] for row in rows)
        for row in rows:
            assert row["values"] == _csv_line(file, row["line"]), (file, row["line"])


def test_pricing_rows_hold_the_chosen_models(catalog: Catalog) -> None:
    pricing = doc(build_bundle(make_record("M31", catalog), catalog, signer=None), "tables/pricing.json")
    assert {row["values"]["model"] for row in pricing["rows"]["breakers.csv"]} == {"ABN-103", "SBE-103"}
    assert [row["values"]["model"] for row in pricing["rows"]["enclosures.csv"]] == ["HS 60 70 15"]


def test_wrong_catalog_is_refused(catalog: Catalog) -> None:
    other = dataclasses.replace(catalog, version="0" * 64)
    with pytest.raises(EvidenceError, match="priced with catalog fa2a6102"):
        build_bundle(make_record("S01", catalog), other, signer=None)


def test_unknown_catalog_row_is_refused(catalog: Catalog) -> None:
    record = make_record("S01", catalog)
    quote = dataclasses.replace(record.quote, catalog_rows=(CatalogRowRef("breakers.csv", 999),))
    with pytest.raises(EvidenceError, match=r"no row at breakers.csv:999"):
        build_bundle(dataclasses.replace(record, quote=quote), catalog, signer=None)


def test_trace_entry_is_the_quote_trace(catalog: Catalog) -> None:
    record = make_record("S01", catalog)
    trace = doc(build_bundle(record, catalog, signer=None), "trace.json")
    assert trace == json.loads(json.dumps(record.quote.trace))
    assert [step["step"] for step in trace["steps"]][:2] == ["normalise", "select"]


def test_result_of_a_completed_estimate(catalog: Catalog) -> None:
    record = make_record("S01", catalog)
    result = doc(build_bundle(record, catalog, signer=None), "result.json")
    assert set(result) == RESULT_KEYS
    assert (result["estimate_id"], result["revision"], result["status"], result["decision"]) == (
        "E-S01",
        1,
        "COMPLETED",
        "OK",
    )
    assert (result["accepted_at"], result["completed_at"]) == ("2025-10-01T03:04:05Z", "2025-10-01T03:04:06Z")
    assert result["totals"] == {
        "subtotal_krw": 450350,
        "vat_krw": 45035,
        "total_krw": 495385,
        "partial_subtotal_krw": 450350,
    }
    assert result["enclosure"]["model"] == "HS 60 70 15"
    assert result["phase_balance"] == {
        "applicable": True,
        "r_a": "133.33",
        "s_a": "133.33",
        "t_a": "133.33",
        "imbalance_pct": "0.00",
    }
    for line, priced in zip(result["lines"], record.quote.lines, strict=True):
        if priced.qty_kg is not None:
            assert "qty" not in line
            assert line["qty_kg"] == format(priced.qty_kg, "f")
        else:
            assert "qty_kg" not in line
            assert line["qty"] == priced.qty
            assert isinstance(line["qty"], int)
    assert any("qty_kg" in line for line in result["lines"])  # S01 has a BUSBAR line


def test_result_of_an_estimate_needing_review_has_null_totals(catalog: Catalog) -> None:
    result = doc(build_bundle(make_record("S08", catalog), catalog, signer=None), "result.json")
    assert (result["status"], result["decision"], result["completed_at"]) == ("NEEDS_REVIEW", "ABSTAIN", None)
    assert result["totals"] == {
        "subtotal_krw": None,
        "vat_krw": None,
        "total_krw": None,
        "partial_subtotal_krw": 1633800,
    }
    assert result["enclosure"]["unit_price_krw"] is None
    assert [(r["reason_id"], r["code"], r["path"], r["resolution"]) for r in result["review_reasons"]] == [
        ("R1", "CUSTOM_ENCLOSURE_PRICE", "enclosure", None)
    ]


def test_result_of_a_reviewed_estimate_carries_the_resolution(catalog: Catalog) -> None:
    answer = Resolution("R1", 15600, "SBS-53")
    record = make_record("S19", catalog, {"R1": answer}, revision=2)
    result = doc(build_bundle(record, catalog, signer=None), "result.json")
    assert (result["status"], result["revision"], result["totals"]["total_krw"]) == ("REVIEWED", 2, 475970)
    assert result["review_reasons"][0]["resolution"] == {
        "reason_id": "R1",
        "model": "SBS-53",
        "unit_price_krw": 15600,
    }


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2025, 10, 1, 3, 4, 5, tzinfo=UTC), "2025-10-01T03:04:05Z"),
        (datetime(2025, 10, 1, 3, 4, 5, 999999, tzinfo=UTC), "2025-10-01T03:04:05Z"),
        (datetime(2025, 10, 1, 12, 4, 5, tzinfo=timezone(timedelta(hours=9))), "2025-10-01T03:04:05Z"),
    ],
    ids=["whole", "fraction_truncated", "kst_to_utc"],
)
def test_evidence_timestamps_are_utc_seconds(value: datetime, text: str) -> None:
    assert evidence_timestamp(value) == text


# --------------------------------------------------------------------------- verification


@pytest.fixture
def signed(catalog: Catalog) -> EvidenceBundle:
    return build_bundle(make_record("S01", catalog), catalog, signer=KeyRing({"k1": KEY_1}, "k1"))


def test_good_bundle_verifies(signed: EvidenceBundle) -> None:
    report = verify_bundle(signed.zip_bytes, KeyRing({"k1": KEY_1}, "k1"))
    assert report.ok
    assert report.findings == ()
    assert report.signature_status is SignatureStatus.VALID
    assert report.signature_key_id == "k1"
    assert report.verified_paths == CONTENT_PATHS
    assert report.sha256 == signed.sha256
    assert report.lines()[-1] == "VERIFIED: 0 finding(s), signature VALID"


def test_unsigned_bundle_verifies_without_a_key_ring(catalog: Catalog) -> None:
    bundle = build_bundle(make_record("S08", catalog), catalog, signer=None)
    report = verify_bundle(bundle.zip_bytes)
    assert report.ok
    assert report.signature_status is SignatureStatus.UNSIGNED


def test_signed_bundle_without_a_key_ring_is_not_checked(signed: EvidenceBundle) -> None:
    report = verify_bundle(signed.zip_bytes)
    assert report.ok
    assert report.signature_status is SignatureStatus.NOT_CHECKED


def test_one_changed_byte_in_trace_is_named(signed: EvidenceBundle) -> None:
    trace = entries(signed)["trace.json"]
    tampered = rezip(signed, trace_json=flip_first_byte_of(trace, b'"step"'))
    report = verify_bundle(tampered, KeyRing({"k1": KEY_1}, "k1"))
    assert not report.ok
    assert [(f.code, f.path) for f in report.findings] == [(FindingCode.ALTERED, "trace.json")]
    assert report.signature_status is SignatureStatus.VALID  # the manifest itself is intact
    assert any(line.startswith("ALTERED     trace.json: sha256 ") for line in report.lines())
    assert report.lines()[-1] == "FAILED: 1 finding(s), signature VALID"


def test_byte_changed_in_place_fails_the_crc_and_is_named(signed: EvidenceBundle) -> None:
    info = next(
        i for i in zipfile.ZipFile(io.BytesIO(signed.zip_bytes)).infolist() if i.filename == "trace.json"
    )
    start = info.header_offset + 30 + len(b"trace.json")
    data = signed.zip_bytes
    patched = data[:start] + bytes([data[start] ^ 0x20]) + data[start + 1 :]
    report = verify_bundle(patched)
    assert [(f.code, f.path) for f in report.findings] == [(FindingCode.ALTERED, "trace.json")]
    assert "CRC-32" in report.findings[0].detail


def test_removed_entry_is_missing(signed: EvidenceBundle) -> None:
    report = verify_bundle(rezip(signed, tables__pricing_json=None))
    assert not report.ok
    assert [(f.code, f.path) for f in report.findings] == [(FindingCode.MISSING, "tables/pricing.json")]


def test_added_entry_is_unexpected(signed: EvidenceBundle) -> None:
    report = verify_bundle(rezip(signed, notes_json=b"{}\n"))
    assert not report.ok
    assert [(f.code, f.path) for f in report.findings] == [(FindingCode.UNEXPECTED, "notes.json")]


def test_report_lines_escape_hostile_entry_names(signed: EvidenceBundle) -> None:
    files = {**entries(signed), "x\nVERIFIED: 0 finding(s)": b""}
    lines = verify_bundle(write_zip(files)).lines()
    assert "UNEXPECTED  x\\nVERIFIED: 0 finding(s): entry is not listed in the manifest" in lines
    assert lines[-1].startswith("FAILED")
    assert all("\n" not in line for line in lines)


def test_duplicate_entry_is_named(signed: EvidenceBundle) -> None:
    buffer = io.BytesIO(signed.zip_bytes)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("result.json", b"{}\n")
    report = verify_bundle(buffer.getvalue())
    assert not report.ok
    assert report.findings_for("result.json") == (FindingCode.DUPLICATE,)


def test_rotated_key_ring_still_verifies_the_old_key(signed: EvidenceBundle) -> None:
    rotated = parse_keyring(f"k2:{KEY_2.hex()},k1:{KEY_1.hex()}", None)
    assert rotated.active_key_id == "k2"
    report = verify_bundle(signed.zip_bytes, rotated)
    assert report.ok
    assert (report.signature_status, report.signature_key_id) == (SignatureStatus.VALID, "k1")


def test_tampered_manifest_invalidates_the_signature(signed: EvidenceBundle) -> None:
    manifest = signed.manifest_json.replace(b'"E-S01"', b'"E-S02"')
    report = verify_bundle(rezip(signed, manifest_json=manifest), KeyRing({"k1": KEY_1}, "k1"))
    assert not report.ok
    assert report.findings == ()
    assert report.signature_status is SignatureStatus.INVALID
    assert "signature   INVALID (key k1): HMAC does not match manifest.json" in report.lines()


def test_rewritten_manifest_and_entry_still_fail_on_the_signature(signed: EvidenceBundle) -> None:
    files = entries(signed)
    trace = flip_first_byte_of(files["trace.json"], b'"step"')
    manifest = signed.manifest_json.replace(
        hashlib.sha256(files["trace.json"]).hexdigest().encode(), hashlib.sha256(trace).hexdigest().encode()
    )
    forged = rezip(signed, trace_json=trace, manifest_json=manifest)
    assert verify_bundle(forged).ok  # consistent, but only the key can tell who wrote it
    assert verify_bundle(forged, KeyRing({"k1": KEY_1}, "k1")).signature_status is SignatureStatus.INVALID
    stripped = rezip(signed, trace_json=trace, manifest_json=manifest, manifest_sig=None)
    report = verify_bundle(stripped, KeyRing({"k1": KEY_1}, "k1"))
    assert (report.ok, report.signature_status) == (False, SignatureStatus.UNSIGNED)


def test_key_ring_without_the_key_reports_unknown_key(signed: EvidenceBundle) -> None:
    report = verify_bundle(signed.zip_bytes, KeyRing({"k2": KEY_2}, "k2"))
    assert not report.ok
    assert (report.signature_status, report.signature_key_id) == (SignatureStatus.UNKNOWN_KEY, "k1")


@pytest.mark.parametrize(
    ("sig", "status"),
    [
        (b"not json", SignatureStatus.INVALID),
        (b'{"key_id": "k1"}\n', SignatureStatus.INVALID),
        (b'{"algorithm": "hmac-sha1", "key_id": "k1", "signature": "00"}\n', SignatureStatus.INVALID),
        (b'{"algorithm": "hmac-sha256", "key_id": "k1", "signature": "\\u00e9"}\n', SignatureStatus.INVALID),
        (b'{"algorithm": "hmac-sha256", "key_id": "zz", "signature": "00"}\n', SignatureStatus.UNKNOWN_KEY),
    ],
    ids=["not_json", "missing_fields", "other_algorithm", "non_ascii_signature", "unknown_key"],
)
def test_malformed_signatures_are_reported(
    signed: EvidenceBundle, sig: bytes, status: SignatureStatus
) -> None:
    report = verify_bundle(rezip(signed, manifest_sig=sig), KeyRing({"k1": KEY_1}, "k1"))
    assert not report.ok
    assert report.signature_status is status


@pytest.mark.parametrize(
    ("manifest", "detail"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[]\n", "not a JSON object"),
        (b"[" * 100_000, "not UTF-8 JSON: RecursionError"),
        (b'{"bundle_format": "kis-evidence/2"}', "bundle_format is 'kis-evidence/2'"),
    ],
    ids=["not_utf8", "not_object", "deeply_nested", "wrong_format"],
)
def test_bad_manifest_is_reported_not_raised(signed: EvidenceBundle, manifest: bytes, detail: str) -> None:
    report = verify_bundle(rezip(signed, manifest_json=manifest))
    assert not report.ok
    assert FindingCode.MANIFEST_INVALID in report.findings_for("manifest.json")
    assert any(detail in f.detail for f in report.findings), report.lines()


def test_manifest_not_listing_an_entry_is_reported(signed: EvidenceBundle) -> None:
    manifest = json.loads(signed.manifest_json)
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "trace.json"]
    text = json.dumps(manifest, ensure_ascii=False, sort_keys=True, indent=2) + "\n"
    report = verify_bundle(rezip(signed, manifest_json=text.encode()))
    assert [(f.code, f.detail) for f in report.findings] == [
        (FindingCode.MANIFEST_INVALID, "files does not list trace.json")
    ]


def test_missing_manifest_is_reported(signed: EvidenceBundle) -> None:
    report = verify_bundle(rezip(signed, manifest_json=None))
    assert report.findings_for("manifest.json") == (FindingCode.MANIFEST_MISSING,)
    assert not report.ok


def test_entry_claiming_a_huge_size_is_not_read(signed: EvidenceBundle) -> None:
    data = signed.zip_bytes
    # the central directory is last, so the last "trace.json" is its name there (manifest.json
    # mentions it too, earlier); patch both sizes to 4 GiB - 2, just below the ZIP64 marker
    header = data.rindex(b"trace.json") - 46
    assert data[header : header + 4] == b"PK\x01\x02"
    huge = struct.pack("<II", 0xFFFFFFFE, 0xFFFFFFFE)
    patched = data[: header + 20] + huge + data[header + 28 :]
    report = verify_bundle(patched)
    assert report.findings_for("trace.json") == (FindingCode.TOO_LARGE,)
    assert str(MAX_ENTRY_BYTES) in report.findings[0].detail


def test_deflated_entry_is_not_decompressed(signed: EvidenceBundle) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in entries(signed).items():
            archive.writestr(path, data, compress_type=zipfile.ZIP_DEFLATED if path == "trace.json" else None)
    report = verify_bundle(buffer.getvalue())
    assert report.findings_for("trace.json") == (FindingCode.UNREADABLE,)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"PK\x05\x06" + b"\x00" * 18, b"PK\x03\x04" + b"\xff" * 100],
    ids=["empty", "text", "empty_zip", "local_header_only"],
)
def test_garbage_is_reported_not_raised(data: bytes) -> None:
    report = verify_bundle(data)
    assert not report.ok
    assert report.findings
    assert report.lines()[-1].startswith("FAILED")


def test_truncated_bundle_is_reported(signed: EvidenceBundle) -> None:
    for cut in (len(signed.zip_bytes) // 2, len(signed.zip_bytes) - 1):
        report = verify_bundle(signed.zip_bytes[:cut])
        assert not report.ok
        assert report.findings_for("") == (FindingCode.NOT_A_ZIP,)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_verify_never_raises_on_random_bytes(data: bytes) -> None:
    assert not verify_bundle(data).ok


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=8))
def test_verify_never_raises_on_mutated_bundles(signed: EvidenceBundle, edits: list[tuple[int, int]]) -> None:
    data = bytearray(signed.zip_bytes)
    for position, value in edits:
        data[position % len(data)] = value
    report = verify_bundle(bytes(data), KeyRing({"k1": KEY_1}, "k1"))
    assert report.lines()
    if bytes(data) == signed.zip_bytes:
        assert report.ok


# --------------------------------------------------------------------------- key ring


def test_key_ring_signs_with_the_active_key_and_verifies_all() -> None:
    old = KeyRing({"k1": KEY_1}, "k1")
    ring = KeyRing({"k1": KEY_1, "k2": KEY_2}, "k2")
    signer: ManifestSigner = ring  # KeyRing satisfies the builder's seam
    new_sig = signer.sign(b"manifest")
    assert new_sig.key_id == "k2"
    assert new_sig.algorithm == "hmac-sha256"
    assert len(new_sig.signature) == 64
    assert ring.verify(b"manifest", old.sign(b"manifest")) is SignatureStatus.VALID
    assert ring.verify(b"manifest", new_sig) is SignatureStatus.VALID
    assert ring.verify(b"manifest!", new_sig) is SignatureStatus.INVALID
    assert old.verify(b"manifest", new_sig) is SignatureStatus.UNKNOWN_KEY
    upper = Signature("k2", "hmac-sha256", new_sig.signature.upper())
    assert ring.verify(b"manifest", upper) is SignatureStatus.INVALID


@pytest.mark.parametrize(
    ("keys", "active", "message"),
    [
        ({}, "k1", "empty"),
        ({"k1": KEY_1}, "k2", "active key id 'k2' is not in the key ring"),
        ({"k 1": KEY_1}, "k 1", "must match"),
        ({"k" * 65: KEY_1}, "k" * 65, "must match"),
        ({"k1": b"short"}, "k1", "at least 32 bytes"),
    ],
    ids=["empty", "active_missing", "bad_id", "long_id", "short_key"],
)
def test_key_ring_rejects_bad_keys(keys: dict[str, bytes], active: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyRing(keys, active)


def test_key_ring_repr_hides_keys() -> None:
    ring = KeyRing({"k1": KEY_1, "k2": KEY_2}, "k2")
    assert repr(ring) == "KeyRing(active_key_id='k2', key_ids=['k1', 'k2'])"


def test_parse_keyring_takes_the_first_key_unless_told() -> None:
    spec = f" k2:{KEY_2.hex()} , k1:{KEY_1.hex().upper()} "
    assert parse_keyring(spec, None).active_key_id == "k2"
    ring = parse_keyring(spec, "k1")
    assert (ring.active_key_id, ring.key_ids) == ("k1", frozenset({"k1", "k2"}))
    assert ring.sign(b"x") == KeyRing({"k1": KEY_1}, "k1").sign(b"x")


@pytest.mark.parametrize(
    ("spec", "active", "message"),
    [
        ("", None, "item 1 is empty"),
        (f"k1:{KEY_1.hex()},", None, "item 2 is empty"),
        (KEY_1.hex(), None, "item 1 must be <key id>:<hex key>"),
        (f"bad id:{KEY_1.hex()}", None, "item 1: key id must match"),
        (f"k1:{KEY_1.hex()},k1:{KEY_2.hex()}", None, "key id 'k1' appears twice"),
        ("k1:zz" + KEY_1.hex(), None, "key 'k1' is not hexadecimal"),
        ("k1:abcd", None, "key 'k1' has 2 bytes; at least 32 required"),
        (f"k1:{KEY_1.hex()}", "k9", r"active evidence key 'k9' is not in the key list \(k1\)"),
    ],
    ids=["empty", "trailing_comma", "no_id", "bad_id", "duplicate", "not_hex", "short", "active_unknown"],
)
def test_parse_keyring_errors_name_the_item_not_the_key(spec: str, active: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_keyring(spec, active)
    assert KEY_1.hex() not in str(caught.value)
    assert KEY_2.hex() not in str(caught.value)


# -------------------------------------------------------------------- layering (docs/conventions.md §1)


def test_evidence_imports_only_the_stdlib_and_the_engine() -> None:
    package = Path(__file__).resolve().parents[2] / "server" / "evidence"
    bad = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [(node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = [(node.lineno, node.module)]
            else:
                continue
            bad += [
                f"{path.name}:{lineno} imports {name}"
                for lineno, name in found
                if name.split(".")[0] not in sys.stdlib_module_names
                and not name.startswith(("kis_estimator.server.engine", "kis_estimator.server.evidence"))
            ]
    assert bad == []
