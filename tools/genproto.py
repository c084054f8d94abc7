"""Generate server/gen from proto/ reproducibly (pinned grpcio-tools + mypy-protobuf).

Usage: python tools/genproto.py [OUT_DIR]   (default: server/gen)

protoc emits absolute imports rooted at proto/ (``from kis.estimator.v1 import ...``); they are
rewritten to ``kis_estimator.server.gen.kis...`` so the generated package imports without touching sys.path.

What is generated: every proto under proto/kis, and the vendored grpc/reflection/v1/reflection.proto
(server reflection v1, which grpcio-reflection does not ship; server/api/reflection.py). Not generated:
the vendored proto/google/api/*.proto, which exist only so that buf resolves the import offline; the
generated code imports ``google.api.field_behavior_pb2`` from googleapis-common-protos, so one module
(and one descriptor) serves the annotation at run time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_PREFIX = "kis_estimator.server.gen."
GENERATED = ("kis/", "grpc/reflection/v1/")  # path prefixes under proto/ that get Python code
_IMPORT = re.compile(r"^(from|import) (kis|grpc\.reflection\.v1)\b", re.MULTILINE)


def generate(out_dir: Path) -> None:
    protos = sorted(
        rel
        for rel in (p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
        if rel.startswith(GENERATED)
    )
    bindir = Path(sys.executable).parent  # the venv's bin/, where mypy-protobuf installs its plugins
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "__init__.py").write_text(
            '"""Generated from proto/ by tools/genproto.py; never hand-edited."""\n'
        )
        for src in sorted(Path(tmp).rglob("*")):
            if src.is_dir():
                continue
            rel = src.relative_to(tmp)
            dst = out_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = src.read_text(encoding="utf-8")
            text = _IMPORT.sub(lambda m: f"{m.group(1)} {PACKAGE_PREFIX}{m.group(2)}", text)
            dst.write_text(text, encoding="utf-8")
        for pkg in sorted(d for d in out_dir.rglob("*") if d.is_dir()):
            init = pkg / "__init__.py"
            if not init.exists():
                init.write_text("")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "server" / "gen")
