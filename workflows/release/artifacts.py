"""Release artifacts: build the wheel and sdist, write the release manifest, verify hashes.

``kis-release build`` → :func:`run_build`; ``kis-release verify`` → :func:`run_verify`.

Build (:func:`build_release`)
  The source is staged into a temporary directory (``pyproject.toml``, ``README.md``, the
  ``server``/``workflows`` folders, the ``kis_estimator`` namespace that links them, and ``proto/``): either
  exported from a git revision (``source_ref``, e.g. ``HEAD`` or a release tag: exactly the committed files,
  the right choice for a release) or copied from the working tree (without caches; the manifest's
  ``git_dirty`` says whether it differed from ``HEAD``). The staged copy may get a patched ``version`` and a
  replacement catalog directory: the integration test builds two versions of one commit that way. The wheel
  and the sdist are built by setuptools' PEP 517 backend (``setuptools.build_meta``) in a child process.
  ``python -m build`` is not installed here and ``pip wheel`` cannot make an sdist; the backend needs nothing
  beyond setuptools, which the project's build-system already requires. Without build isolation the build uses
  the setuptools of the running interpreter, so it works offline.

Reproducibility
  ``SOURCE_DATE_EPOCH`` is the commit time of ``HEAD``, so the wheel of one commit has the same
  bytes on every build (setuptools' wheel writer clamps entry times to it). The sdist is
  re-packed with sorted entries, fixed owner and that time, and a gzip header without a name or a
  clock time, so it is reproducible too. The manifest's ``build_time`` is that same source date
  (``SOURCE_DATE_EPOCH`` when set, else the commit time), never the wall clock, so the manifest
  of one commit — and its SHA-256 — can be rebuilt and re-verified byte for byte.

catalog_version and rules_version
  ``workflows`` may not import ``kis_estimator.server.engine`` (docs/conventions.md §1), so both are read
  from the *built wheel*: the three catalog CSVs under ``kis_estimator/server/data/catalog/`` hashed with
  the formula of docs/pricing-rules.md §5.4 (reimplemented in :func:`catalog_version`; a unit test compares
  it with the engine's), and ``RULES_VERSION`` parsed (``ast``, never imported) from
  ``kis_estimator/server/engine/model.py``. Reading the artifact rather than the checkout means the manifest
  states what ships, also when the catalog was replaced for the build.

Manifest
  JSON with sorted keys and a final newline (:meth:`ReleaseManifest.to_json`), so its SHA-256 is a
  function of its content. Short hashes are written as the seed notice does: first 16 hex digits,
  ``...``, last 4 (:func:`short_sha`).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from kis_estimator.workflows.errors import WorkflowError

__all__ = [
    "CATALOG_FILES",
    "MANIFEST_SCHEMA",
    "ArtifactInfo",
    "BuildError",
    "BuildOptions",
    "BuildResult",
    "Mismatch",
    "ReleaseManifest",
    "VerifyReport",
    "build_release",
    "catalog_version",
    "descriptor_set_sha256",
    "is_full_sha256",
    "read_manifest",
    "run_build",
    "run_verify",
    "sha256_file",
    "short_sha",
    "verify_release",
]

MANIFEST_SCHEMA = "kis-release-manifest/1"
CATALOG_FILES = ("accessories.csv", "breakers.csv", "enclosures.csv")  # docs/pricing-rules.md §5.4 order
# Paths inside the wheel, and inside the staged tree too (its kis_estimator/server links to server/).
CATALOG_IN_WHEEL = "kis_estimator/server/data/catalog"
RULES_MODULE_IN_WHEEL = "kis_estimator/server/engine/model.py"
STAGED_ITEMS = ("pyproject.toml", "README.md", "kis_estimator", "server", "workflows", "proto")
BUILD_TIMEOUT_S = 300.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# PEP 440 public versions as releases use them: 1.0.0, 1.1.0rc1, 1.0.1.post2, 1.2.0.dev3
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$")
_PYPROJECT_VERSION = re.compile(r'^version\s*=\s*"[^"]*"\s*$', re.MULTILINE)

# Runs in the child process: the build backend writes to stdout and changes directories, and
# SOURCE_DATE_EPOCH must be in the backend's environment (workflows do not touch os.environ).
_BUILD_SCRIPT = """
import json, os, sys
out, epoch, names_file = sys.argv[1:4]  # read first: the backend rewrites sys.argv
os.environ["SOURCE_DATE_EPOCH"] = epoch
from setuptools import build_meta
names = {"wheel": build_meta.build_wheel(out), "sdist": build_meta.build_sdist(out)}
with open(names_file, "w", encoding="utf-8") as f:
    json.dump(names, f)
"""
# grpcio-tools is a dev dependency, so it is imported only in this child, never by workflows.
_PROTOC_SCRIPT = """
import pathlib, sys
import grpc_tools
from grpc_tools import protoc
include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
out, root, *protos = sys.argv[1:]
sys.exit(protoc.main(["protoc", f"-I{root}", f"-I{include}", "--include_imports",
                      f"--descriptor_set_out={out}", *protos]))
"""


class BuildError(WorkflowError):
    """The build could not produce an artifact; the message says which step and why."""


# ------------------------------------------------------------------------------------ hashes


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def short_sha(sha256: str) -> str:
    """The seed notice's short form: ``0de4aaa84955cdda...d451`` (first 16, ``...``, last 4)."""
    return f"{sha256[:16]}...{sha256[-4:]}"


def is_full_sha256(text: str) -> bool:
    return bool(_SHA256.match(text))


def catalog_version(files: Mapping[str, bytes]) -> str:
    """docs/pricing-rules.md §5.4: SHA-256 of ``<name>:<sha256 of bytes>\\n`` over the files in order."""
    text = "".join(f"{name}:{hashlib.sha256(files[name]).hexdigest()}\n" for name in CATALOG_FILES)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _rules_version(model_source: str) -> str:
    for node in ast.parse(model_source).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "RULES_VERSION" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise BuildError(f"{RULES_MODULE_IN_WHEEL}: no RULES_VERSION = '...' assignment")


def _wheel_versions(wheel: Path) -> tuple[str, str]:
    """(catalog_version, rules_version) of the service inside a built wheel."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            files = {name: zf.read(f"{CATALOG_IN_WHEEL}/{name}") for name in CATALOG_FILES}
            model = zf.read(RULES_MODULE_IN_WHEEL).decode("utf-8")
        except KeyError as exc:
            raise BuildError(f"{wheel.name}: missing {exc.args[0]}") from None
    return catalog_version(files), _rules_version(model)


# ------------------------------------------------------------------------------------ manifest


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    name: str
    kind: str  # "wheel" | "sdist"
    size_bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "size_bytes": self.size_bytes, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class ReleaseManifest:
    version: str
    git_commit: str  # "unknown" outside a git checkout
    git_dirty: bool  # the working tree differed from the commit when it was built
    build_time: str  # ISO 8601, UTC
    artifacts: tuple[ArtifactInfo, ...]
    descriptor_set_name: str
    descriptor_set_sha256: str
    catalog_version: str
    rules_version: str
    schema: str = MANIFEST_SCHEMA
    changes: tuple[str, ...] = ()  # the release's change list (CHANGELOG.md, else commit subjects)

    def to_json(self) -> bytes:
        """Deterministic bytes: sorted keys, two-space indent, UTF-8, final newline."""
        data = {
            "schema": self.schema,
            "version": self.version,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "build_time": self.build_time,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "descriptor_set": {"name": self.descriptor_set_name, "sha256": self.descriptor_set_sha256},
            "catalog_version": self.catalog_version,
            "rules_version": self.rules_version,
            "changes": list(self.changes),
        }
        return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> ReleaseManifest:
        """Parse a manifest; ValueError names the missing or malformed field."""
        try:
            raw = json.loads(data)
            if raw.get("schema") != MANIFEST_SCHEMA:
                raise ValueError(f"schema: expected {MANIFEST_SCHEMA!r}, got {raw.get('schema')!r}")
            return cls(
                version=str(raw["version"]),
                git_commit=str(raw["git_commit"]),
                git_dirty=bool(raw["git_dirty"]),
                build_time=str(raw["build_time"]),
                artifacts=tuple(
                    ArtifactInfo(
                        name=str(a["name"]),
                        kind=str(a["kind"]),
                        size_bytes=int(a["size_bytes"]),
                        sha256=str(a["sha256"]),
                    )
                    for a in raw["artifacts"]
                ),
                descriptor_set_name=str(raw["descriptor_set"]["name"]),
                descriptor_set_sha256=str(raw["descriptor_set"]["sha256"]),
                catalog_version=str(raw["catalog_version"]),
                rules_version=str(raw["rules_version"]),
                changes=tuple(str(c) for c in raw.get("changes") or ()),
            )
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"missing or malformed field {exc}") from None

    def artifact(self, name: str) -> ArtifactInfo | None:
        return next((a for a in self.artifacts if a.name == name), None)

    @property
    def wheel(self) -> ArtifactInfo:
        return next(a for a in self.artifacts if a.kind == "wheel")


def read_manifest(path: Path) -> ReleaseManifest:
    """The manifest at ``path``; ValueError names the file and the problem."""
    try:
        return ReleaseManifest.from_json(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from None


# ------------------------------------------------------------------------------------ build


@dataclass(frozen=True, slots=True)
class BuildOptions:
    source_dir: Path  # a checkout: pyproject.toml, README.md, server/, workflows/, proto/
    out_dir: Path
    version_override: str | None = None  # patch [project] version in the staged copy
    catalog_dir: Path | None = None  # replace server/data/catalog/*.csv in the staged copy
    # A git revision (``HEAD``, a tag, a commit) to build from, via ``git archive``: exactly that
    # commit's files, whatever the working tree holds. None: the working tree as it is (git_dirty
    # records whether it differed from HEAD).
    source_ref: str | None = None
    python: Path = Path(sys.executable)  # interpreter with setuptools (and grpcio-tools for protoc)
    timeout_s: float = BUILD_TIMEOUT_S
    source_date_epoch: str | None = None  # SOURCE_DATE_EPOCH; None: the commit's time


@dataclass(frozen=True, slots=True)
class BuildResult:
    manifest: ReleaseManifest
    manifest_path: Path
    manifest_sha256: str
    wheel_path: Path
    sdist_path: Path
    descriptor_set_path: Path

    def lines(self) -> list[str]:
        """What ``kis-release build`` prints: every hash in full and in the notice's short form."""
        out = [f"version {self.manifest.version}  commit {self.manifest.git_commit}"]
        if self.manifest.git_dirty:
            out.append("warning: built from a working tree with uncommitted changes (git_dirty: true)")
        for a in self.manifest.artifacts:
            out.append(f"{a.kind:<8} {a.name}  {a.size_bytes} bytes")
            out.append(f"  SHA-256 {a.sha256}  ({short_sha(a.sha256)})")
        out.append(f"proto    {self.manifest.descriptor_set_name}")
        proto_sha = self.manifest.descriptor_set_sha256
        out.append(f"  SHA-256 {proto_sha}  ({short_sha(proto_sha)})")
        out.append(f"catalog_version {self.manifest.catalog_version}")
        out.append(f"rules_version {self.manifest.rules_version}")
        out.append(f"manifest {self.manifest_path.name}")
        out.append(f"  SHA-256 {self.manifest_sha256}  ({short_sha(self.manifest_sha256)})")
        return out


def _run(cmd: Sequence[str], cwd: Path, what: str, timeout_s: float) -> str:
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{what}: {exc}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _git(source: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


CHANGELOG = "CHANGELOG.md"
MAX_CHANGES = 10
_CHANGELOG_HEADING = re.compile(r"^##\s+\[?v?(?P<version>[0-9A-Za-z.+_-]+)\]?")


def changelog_entries(text: str, version: str) -> tuple[str, ...]:
    """The bullet lines of ``## <version>`` (``## [1.0.1] - 2025-09-23`` too) in a Keep-a-Changelog file."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        heading = _CHANGELOG_HEADING.match(line)
        if heading or line.startswith("# "):
            inside = bool(heading) and heading is not None and heading.group("version") == version
            continue
        item = line.strip()
        if inside and item[:2] in ("- ", "* "):
            out.append(item[2:].strip())
    return tuple(out)


def release_changes(source: Path, ref: str | None, version: str) -> tuple[str, ...]:
    """What changed in ``version``: its CHANGELOG.md section at ``ref``, else the newest commit subjects.

    The Korean deployment notice and the DEPLOY issue list these, so each release says its own.
    """
    if ref is not None:
        text = _git(source, "show", f"{ref}:{CHANGELOG}") or ""
    else:
        try:
            text = (source / CHANGELOG).read_text(encoding="utf-8")
        except OSError:
            text = ""
    entries = changelog_entries(text, version)
    if entries:
        return entries[:MAX_CHANGES]
    subjects = _git(source, "log", "--no-merges", "--format=%s", "-n", str(MAX_CHANGES), ref or "HEAD") or ""
    return tuple(line[:120] for line in subjects.splitlines() if line.strip())


def _export_ref(source: Path, ref: str, into: Path, timeout_s: float) -> None:
    """``git archive REF -- STAGED_ITEMS`` unpacked into ``into``."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(source), "archive", "--format=tar", ref, "--", *STAGED_ITEMS],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"git archive {ref}: {exc}") from None
    if proc.returncode != 0:
        raise BuildError(f"git archive {ref} failed: {proc.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(into, filter="data")


def _stage(options: BuildOptions, into: Path, commit: str) -> str:
    """Copy the buildable tree (or export ``source_ref``) into ``into``; returns the version it builds.

    The commit is written to ``server/BUILD_COMMIT`` so the installed server reports it
    (``kis_build_info``, ``GetServerInfo``) without a git checkout.
    """
    if options.source_ref is not None:
        _export_ref(options.source_dir, options.source_ref, into, options.timeout_s)
    else:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
        for item in STAGED_ITEMS:
            src = options.source_dir / item
            if src.is_dir():
                shutil.copytree(src, into / item, ignore=ignore, symlinks=True)
            elif src.is_file():
                shutil.copy2(src, into / item)
    for item in STAGED_ITEMS:
        if not (into / item).exists():
            raise BuildError(f"{item}: missing from the source ({options.source_ref or options.source_dir})")
    pyproject = into / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    match = _PYPROJECT_VERSION.search(text)
    if match is None:
        raise BuildError('pyproject.toml: no static `version = "..."` line')
    version = match.group(0).split('"')[1]
    if options.version_override is not None:
        if not _VERSION.match(options.version_override):
            raise BuildError(
                f"version {options.version_override!r}: expected a PEP 440 version such as 1.0.1"
            )
        version = options.version_override
        text = text[: match.start()] + f'version = "{version}"' + text[match.end() :]
        pyproject.write_text(text, encoding="utf-8")
    if commit != "unknown":
        (into / "server" / "BUILD_COMMIT").write_text(commit + "\n", encoding="ascii")
    if options.catalog_dir is not None:
        for name in CATALOG_FILES:
            src = options.catalog_dir / name
            if not src.is_file():
                raise BuildError(f"catalog override {options.catalog_dir}: missing {name}")
            shutil.copyfile(src, into / CATALOG_IN_WHEEL / name)
    return version


def _normalise_sdist(path: Path, epoch: int) -> None:
    """Re-pack the sdist reproducibly: sorted entries, fixed owner/mode/time, gzip without a clock."""
    with tarfile.open(path, "r:gz") as src:
        members = sorted(src.getmembers(), key=lambda m: m.name)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst:
            for m in members:
                data = src.extractfile(m) if m.isfile() else None
                m.mtime = min(int(m.mtime), epoch)
                m.uid = m.gid = 0
                m.uname = m.gname = ""
                m.mode = 0o755 if m.isdir() or m.mode & 0o111 else 0o644
                m.pax_headers = {}
                dst.addfile(m, data)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=epoch) as gz:
        gz.write(buf.getvalue())


def descriptor_set_sha256(proto_root: Path, out_file: Path, python: Path, timeout_s: float = 120.0) -> str:
    """Compile every ``*.proto`` under ``proto_root`` into a descriptor set (with imports); its SHA-256."""
    protos = sorted(p.relative_to(proto_root).as_posix() for p in proto_root.rglob("*.proto"))
    if not protos:
        raise BuildError(f"{proto_root}: no .proto files")
    _run(
        [str(python), "-c", _PROTOC_SCRIPT, str(out_file), str(proto_root), *protos],
        proto_root,
        "protoc --descriptor_set_out (needs grpcio-tools: pip install -e '.[dev]')",
        timeout_s,
    )
    return sha256_file(out_file)


def source_date_epoch(explicit: str | None, commit_time: str | None) -> int:
    """The reproducible build date: ``SOURCE_DATE_EPOCH`` if given, else the commit's time."""
    for text in (explicit, commit_time):
        if text and text.strip().isdigit():
            return int(text.strip())
    return 315532800  # 1980-01-01: zip's minimum, for a tree outside git


def build_release(options: BuildOptions) -> BuildResult:
    """Build wheel + sdist + descriptor set into ``out_dir`` and write the manifest beside them."""
    source = options.source_dir.resolve()
    ref = options.source_ref or "HEAD"
    commit = _git(source, "rev-parse", "--verify", f"{ref}^{{commit}}") or "unknown"
    if options.source_ref is not None and commit == "unknown":
        raise BuildError(f"{source}: {options.source_ref!r} is not a commit")
    dirty = options.source_ref is None and bool(_git(source, "status", "--porcelain", "--", *STAGED_ITEMS))
    epoch = source_date_epoch(options.source_date_epoch, _git(source, "log", "-1", "--format=%ct", ref))
    # Absolute: the children (setuptools, protoc) run in the staged tree, where a relative
    # --out such as "dist/" would name another directory.
    options = replace(options, out_dir=options.out_dir.resolve())
    options.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kis-build-") as tmp:
        staged, built = Path(tmp) / "src", Path(tmp) / "dist"
        staged.mkdir()
        built.mkdir()
        version = _stage(options, staged, commit)
        names_file = Path(tmp) / "names.json"
        _run(
            [str(options.python), "-c", _BUILD_SCRIPT, str(built), str(epoch), str(names_file)],
            staged,
            "setuptools build (wheel, sdist)",
            options.timeout_s,
        )
        names = json.loads(names_file.read_text(encoding="utf-8"))
        _normalise_sdist(built / names["sdist"], epoch)
        wheel = options.out_dir / names["wheel"]
        sdist = options.out_dir / names["sdist"]
        shutil.copyfile(built / names["wheel"], wheel)
        shutil.copyfile(built / names["sdist"], sdist)
        descriptor = options.out_dir / f"kis_estimator-{version}.descriptor.binpb"
        descriptor_sha = descriptor_set_sha256(staged / "proto", descriptor, options.python)
    catalog, rules = _wheel_versions(wheel)
    manifest = ReleaseManifest(
        version=version,
        git_commit=commit,
        git_dirty=dirty,
        build_time=datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        artifacts=tuple(
            ArtifactInfo(name=p.name, kind=kind, size_bytes=p.stat().st_size, sha256=sha256_file(p))
            for kind, p in (("wheel", wheel), ("sdist", sdist))
        ),
        descriptor_set_name=descriptor.name,
        descriptor_set_sha256=descriptor_sha,
        catalog_version=catalog,
        rules_version=rules,
        changes=release_changes(source, options.source_ref, version),
    )
    manifest_path = options.out_dir / f"kis_estimator-{version}.manifest.json"
    data = manifest.to_json()
    manifest_path.write_bytes(data)
    return BuildResult(
        manifest=manifest,
        manifest_path=manifest_path,
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        wheel_path=wheel,
        sdist_path=sdist,
        descriptor_set_path=descriptor,
    )


# ------------------------------------------------------------------------------------ verify


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One failed comparison: which file, against what, and both hashes (or values) in full."""

    file: str
    against: str  # "expected SHA-256" | "manifest entry" | "manifest entry size" | ...
    expected: str
    actual: str

    def line(self) -> str:
        return f"MISMATCH {self.file}: {self.against}: expected {self.expected}, actual {self.actual}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    artifact: Path
    manifest_path: Path
    artifact_sha256: str
    manifest_sha256: str
    manifest: ReleaseManifest | None
    mismatches: tuple[Mismatch, ...]
    errors: tuple[str, ...] = ()  # unreadable files, malformed manifest, bad expected hashes

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.errors

    def lines(self) -> list[str]:
        out = [
            f"{label} {path.name}  SHA-256 {sha}  ({short_sha(sha)})"
            for label, path, sha in (
                ("artifact", self.artifact, self.artifact_sha256),
                ("manifest", self.manifest_path, self.manifest_sha256),
            )
        ]
        out += [f"ERROR {e}" for e in self.errors]
        out += [m.line() for m in self.mismatches]
        out.append("verify: OK" if self.ok else "verify: FAILED")
        return out

    def summary(self) -> str:
        """One line for messages: the first problem, or OK."""
        if self.errors:
            return self.errors[0]
        if self.mismatches:
            m = self.mismatches[0]
            return f"{m.file}: {m.against}: expected {m.expected}, actual {m.actual}"
        return "artifact and manifest verified"


def verify_release(
    artifact: Path,
    manifest_path: Path,
    *,
    expected_artifact_sha256: str | None,
    expected_manifest_sha256: str | None,
) -> VerifyReport:
    """Check both files against the expected full hashes and the artifact against its manifest entry.

    An expected hash of ``None`` skips that comparison (``kis-release promote`` always passes both).
    Short forms are refused: 20 characters of a hash cannot verify anything.
    """
    errors: list[str] = []
    mismatches: list[Mismatch] = []
    art_sha = man_sha = ""
    try:
        art_sha = sha256_file(artifact)
    except OSError as exc:
        errors.append(f"{artifact}: cannot read: {exc.strerror}")
    try:
        man_sha = sha256_file(manifest_path)
    except OSError as exc:
        errors.append(f"{manifest_path}: cannot read: {exc.strerror}")
    for label, path, want, got in (
        ("artifact", artifact, expected_artifact_sha256, art_sha),
        ("manifest", manifest_path, expected_manifest_sha256, man_sha),
    ):
        if want is None or not got:
            continue
        want_norm = want.strip().lower()
        if not is_full_sha256(want_norm):
            errors.append(f"expected {label} SHA-256 {want!r}: give all 64 hex digits, not a short form")
        elif want_norm != got:
            mismatches.append(Mismatch(path.name, "expected SHA-256", want_norm, got))
    manifest: ReleaseManifest | None = None
    if man_sha:
        try:
            manifest = read_manifest(manifest_path)
        except ValueError as exc:
            errors.append(str(exc))
    if manifest is not None and art_sha:
        entry = manifest.artifact(artifact.name)
        if entry is None:
            listed = ", ".join(a.name for a in manifest.artifacts)
            errors.append(f"{artifact.name}: not listed in {manifest_path.name} (lists {listed})")
        else:
            if entry.sha256 != art_sha:
                mismatches.append(
                    Mismatch(artifact.name, f"entry in {manifest_path.name}", entry.sha256, art_sha)
                )
            size = artifact.stat().st_size
            if entry.size_bytes != size:
                mismatches.append(
                    Mismatch(artifact.name, f"size in {manifest_path.name}", str(entry.size_bytes), str(size))
                )
    return VerifyReport(
        artifact=artifact,
        manifest_path=manifest_path,
        artifact_sha256=art_sha,
        manifest_sha256=man_sha,
        manifest=manifest,
        mismatches=tuple(mismatches),
        errors=tuple(errors),
    )


# ------------------------------------------------------------------------------------ CLI entry points


def _write(out: TextIO, lines: Sequence[str]) -> None:
    out.write("".join(f"{line}\n" for line in lines))


def run_build(
    out_dir: Path,
    version_override: str | None = None,
    *,
    source_dir: Path | None = None,
    source_ref: str | None = None,
    catalog_dir: Path | None = None,
    out: TextIO | None = None,
    source_date_epoch: str | None = None,
) -> int:
    """``kis-release build``: 0 built (hashes printed), 1 build failed (reason printed).

    ``source_ref`` (e.g. ``HEAD`` or a tag) builds that commit's files; None builds the working tree.
    ``source_date_epoch`` (``SOURCE_DATE_EPOCH``) overrides the commit time as the build date.
    """
    stream = out or sys.stdout
    options = BuildOptions(
        source_dir=source_dir or Path.cwd(),
        out_dir=out_dir,
        version_override=version_override,
        catalog_dir=catalog_dir,
        source_ref=source_ref,
        source_date_epoch=source_date_epoch,
    )
    try:
        result = build_release(options)
    except (BuildError, OSError) as exc:
        _write(stream, [f"build failed: {exc}"])
        return 1
    _write(stream, result.lines())
    return 0


def run_verify(
    artifact: Path,
    manifest: Path,
    expected_artifact_sha: str,
    expected_manifest_sha: str,
    *,
    out: TextIO | None = None,
) -> int:
    """``kis-release verify``: 0 all hashes agree; 1 a mismatch or error (named, both hashes shown)."""
    report = verify_release(
        artifact,
        manifest,
        expected_artifact_sha256=expected_artifact_sha,
        expected_manifest_sha256=expected_manifest_sha,
    )
    _write(out or sys.stdout, report.lines())
    return 0 if report.ok else 1
