"""The API protos document every service, RPC, message, field, oneof, enum and enum value.

The protos are compiled with source info (grpcio-tools' protoc, as tools/genproto.py does), and every
element must have a leading comment. (tests/unit/test_docs.py checks that their rule citations name
sections of docs/pricing-rules.md.)
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
API_FILES = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / "kis").rglob("*.proto"))

# Field numbers of descriptor.proto, which SourceCodeInfo paths are made of.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE, _SERVICE_METHOD = 2, 2


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("protos") / "api.binpb"
    # `python -m grpc_tools.protoc` adds the well-known types' include path itself
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *API_FILES,
        ],
        check=True,
        cwd=PROTO_ROOT,
        timeout=60,
    )
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _elements(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source path, full name) of every documentable element of a file."""

    def enum(
        path: tuple[int, ...], e: descriptor_pb2.EnumDescriptorProto, scope: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        yield path, f"{scope}.{e.name}"
        for i, v in enumerate(e.value):
            yield (*path, _ENUM_VALUE, i), f"{scope}.{e.name}.{v.name}"

    def message(
        path: tuple[int, ...], m: descriptor_pb2.DescriptorProto, scope: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        name = f"{scope}.{m.name}"
        yield path, name
        for i, f in enumerate(m.field):
            yield (*path, _MSG_FIELD, i), f"{name}.{f.name}"
        for i, o in enumerate(m.oneof_decl):
            if not o.name.startswith("_"):  # synthetic oneof of a proto3 `optional` field
                yield (*path, _MSG_ONEOF, i), f"{name}.{o.name}"
        for i, nested in enumerate(m.nested_type):
            yield from message((*path, _MSG_NESTED, i), nested, name)
        for i, e in enumerate(m.enum_type):
            yield from enum((*path, _MSG_ENUM, i), e, name)

    for i, m in enumerate(file.message_type):
        yield from message((_FILE_MESSAGE, i), m, file.package)
    for i, e in enumerate(file.enum_type):
        yield from enum((_FILE_ENUM, i), e, file.package)
    for i, s in enumerate(file.service):
        yield (_FILE_SERVICE, i), f"{file.package}.{s.name}"
        for j, method in enumerate(s.method):
            yield (_FILE_SERVICE, i, _SERVICE_METHOD, j), f"{file.package}.{s.name}.{method.name}"


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location}


def test_every_element_of_the_api_has_a_comment(compiled: descriptor_pb2.FileDescriptorSet) -> None:
    api = [f for f in compiled.file if f.name in API_FILES]
    assert sorted(f.name for f in api) == API_FILES
    undocumented = []
    counted = 0
    for file in api:
        comments = _comments(file)
        for path, name in _elements(file):
            counted += 1
            if not comments.get(path):
                undocumented.append(name)
    assert undocumented == []
    assert counted > 250  # the walk really reached the fields (167 of them when this test was written)
