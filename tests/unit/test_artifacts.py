"""Release artifacts without building: hashes, the short form, the manifest, verify, catalog_version."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from kis_estimator.server.engine.catalog import DEFAULT_CATALOG_DIR
from kis_estimator.server.engine.catalog import catalog_version as engine_catalog_version
from kis_estimator.server.engine.model import RULES_VERSION
from kis_estimator.workflows.release.artifacts import (
    CATALOG_FILES,
    ArtifactInfo,
    Mismatch,
    ReleaseManifest,
    _normalise_sdist,
    _rules_version,
    catalog_version,
    read_manifest,
    run_verify,
    short_sha,
    verify_release,
)

NOTICE_ARTIFACT = "0de4aaa84955cdda" + "0" * 44 + "d451"


def test_short_sha_is_the_notice_form() -> None:
    assert short_sha(NOTICE_ARTIFACT) == "0de4aaa84955cdda...d451"


def test_catalog_version_matches_the_engine_for_the_packaged_catalog() -> None:
    files = {name: (DEFAULT_CATALOG_DIR / name).read_bytes() for name in CATALOG_FILES}
    assert catalog_version(files) == engine_catalog_version(files)


def test_rules_version_is_read_from_the_model_source_without_importing_it() -> None:
    source = (Path(__file__).resolve().parents[2] / "server" / "engine" / "model.py").read_text(
        encoding="utf-8"
    )
    assert _rules_version(source) == RULES_VERSION


def _manifest(wheel_sha: str, size: int = 3) -> ReleaseManifest:
    return ReleaseManifest(
        version="1.0.1",
        git_commit="c0ffee",
        git_dirty=False,
        build_time="2025-09-23T03:00:00Z",
        artifacts=(
            ArtifactInfo("kis_estimator-1.0.1-py3-none-any.whl", "wheel", size, wheel_sha),
            ArtifactInfo("kis_estimator-1.0.1.tar.gz", "sdist", 5, "b" * 64),
        ),
        descriptor_set_name="kis_estimator-1.0.1.descriptor.binpb",
        descriptor_set_sha256="c" * 64,
        catalog_version="d" * 64,
        rules_version="KIS-RULES-1.0",
    )


def test_manifest_json_is_sorted_deterministic_and_round_trips() -> None:
    manifest = _manifest("a" * 64)
    data = manifest.to_json()
    assert data == manifest.to_json() and data.endswith(b"\n")
    parsed = json.loads(data)
    assert list(parsed) == sorted(parsed)
    assert ReleaseManifest.from_json(data) == manifest


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not JSON"),
        (b'{"schema": "other"}', "schema: expected"),
        (b'{"schema": "kis-release-manifest/1", "version": "1"}', "missing or malformed field"),
    ],
    ids=["not-json", "wrong-schema", "missing-field"],
)
def test_malformed_manifest_is_named(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message) as info:
        read_manifest(path)
    assert str(info.value).startswith("m.json: ")


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, Path, str, str]:
    wheel = tmp_path / "kis_estimator-1.0.1-py3-none-any.whl"
    wheel.write_bytes(b"PK!")
    wheel_sha = hashlib.sha256(b"PK!").hexdigest()
    manifest = tmp_path / "kis_estimator-1.0.1.manifest.json"
    manifest.write_bytes(_manifest(wheel_sha).to_json())
    return wheel, manifest, wheel_sha, hashlib.sha256(manifest.read_bytes()).hexdigest()


def test_verify_accepts_matching_files(release: tuple[Path, Path, str, str]) -> None:
    wheel, manifest, wheel_sha, manifest_sha = release
    report = verify_release(
        wheel, manifest, expected_artifact_sha256=wheel_sha.upper(), expected_manifest_sha256=manifest_sha
    )
    assert (report.ok, report.mismatches, report.errors) == (True, (), ())
    assert report.lines()[-1] == "verify: OK"


def test_verify_names_the_file_and_both_hashes_on_an_expected_hash_mismatch(
    release: tuple[Path, Path, str, str],
) -> None:
    wheel, manifest, wheel_sha, manifest_sha = release
    report = verify_release(
        wheel, manifest, expected_artifact_sha256=NOTICE_ARTIFACT, expected_manifest_sha256=manifest_sha
    )
    assert report.mismatches == (Mismatch(wheel.name, "expected SHA-256", NOTICE_ARTIFACT, wheel_sha),)
    assert (
        f"MISMATCH {wheel.name}: expected SHA-256: expected {NOTICE_ARTIFACT}, actual {wheel_sha}"
        in report.lines()
    )


def test_verify_catches_an_artifact_that_differs_from_its_manifest_entry(
    release: tuple[Path, Path, str, str],
) -> None:
    wheel, manifest, wheel_sha, manifest_sha = release
    wheel.write_bytes(b"PK?")  # swapped after the build; the caller was given the new file's hash
    new_sha = hashlib.sha256(b"PK?").hexdigest()
    report = verify_release(
        wheel, manifest, expected_artifact_sha256=new_sha, expected_manifest_sha256=manifest_sha
    )
    assert report.mismatches == (Mismatch(wheel.name, f"entry in {manifest.name}", wheel_sha, new_sha),)


def test_verify_catches_an_edited_manifest(release: tuple[Path, Path, str, str]) -> None:
    wheel, manifest, wheel_sha, manifest_sha = release
    manifest.write_bytes(manifest.read_bytes().replace(b"KIS-RULES-1.0", b"KIS-RULES-9.9"))
    report = verify_release(
        wheel, manifest, expected_artifact_sha256=wheel_sha, expected_manifest_sha256=manifest_sha
    )
    assert [(m.file, m.expected) for m in report.mismatches] == [(manifest.name, manifest_sha)]


def test_verify_refuses_a_short_form_as_expected_hash(release: tuple[Path, Path, str, str]) -> None:
    wheel, manifest, _, manifest_sha = release
    report = verify_release(
        wheel,
        manifest,
        expected_artifact_sha256="0de4aaa84955cdda...d451",
        expected_manifest_sha256=manifest_sha,
    )
    assert not report.ok and "not a short form" in report.errors[0]


def test_run_verify_exits_non_zero_and_prints_both_hashes(release: tuple[Path, Path, str, str]) -> None:
    wheel, manifest, wheel_sha, _ = release
    out = io.StringIO()
    assert run_verify(wheel, manifest, wheel_sha, "e" * 64, out=out) == 1
    text = out.getvalue()
    assert f"MISMATCH {manifest.name}: expected SHA-256: expected {'e' * 64}, actual " in text
    assert text.rstrip().endswith("verify: FAILED")


def test_sdist_repacking_is_byte_reproducible(tmp_path: Path) -> None:
    def sdist(name: str, mtime: int) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for entry in ("pkg/b.txt", "pkg/a.txt"):
                info = tarfile.TarInfo(entry)
                info.size, info.mtime, info.uid, info.uname = 2, mtime, 1000, "someone"
                tar.addfile(info, io.BytesIO(b"hi"))
        _normalise_sdist(path, epoch=1_700_000_000)
        return path

    first, second = sdist("one.tar.gz", 1_800_000_000), sdist("two.tar.gz", 1_900_000_000)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert [(m.name, m.mtime, m.uid, m.uname) for m in tar.getmembers()] == [
            ("pkg/a.txt", 1_700_000_000, 0, ""),
            ("pkg/b.txt", 1_700_000_000, 0, ""),
        ]
