"""The two large values of a create, packed with zstd by the replica before they reach the store.

Every create stores its JSON document (~13 KiB) and its evidence ZIP (~26 KiB, STORED entries:
JSON as it is, docs/pricing-rules.md §15). PostgreSQL would compress both itself (lz4, migration
0004), on the database's CPU, which every replica shares and which does not grow with them. So on
PostgreSQL the replica packs them first, as one zstd frame each (level 1), and the database keeps
the frames as they are (``STORAGE EXTERNAL``: no second compression; migration 0005). Measured on
the S01 create: zstd level 1 takes ~22 µs for the document and ~33 µs for the bundle on the
replica and packs them to 3.4 and 5.7 KB (lz4 left the document at ~6 KB). 400 such creates on
PostgreSQL: the estimate and evidence tables grew 12.3 KiB per create instead of 15.8, the WAL
14.7 KiB instead of 18.8; the database's CPU per create fell by 0.06–0.1 ms (bench/README.md,
tenth section).

What reads a value back unpacks it by its first four bytes: a zstd frame starts with the magic
``28 b5 2f fd``, which neither a JSON document (``{``) nor a ZIP (``PK``) can start with, so the
values PostgreSQL stored before migration 0005 read back as they were, unchanged. SQLite packs the
bundle too (its migration 0003; the ZIP is most of a create's bytes, which SQLite stored
uncompressed), not the document: its STRICT TEXT column could only change with ``estimates``
rebuilt, which other tables reference. Each store's ``packs`` decides.

A frame's header carries the unpacked size (the packer always writes it); a frame without one, or
one claiming more than :data:`MAX_UNPACKED_BYTES`, is refused as corrupt before anything is
allocated, as is a frame that does not decode.
"""

from __future__ import annotations

import threading

import zstandard

from kis_estimator.server.storage.repository import StorageError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LEVEL = 1
# Far above anything a create stores (its stored size is bounded by KIS_MAX_STORED_BYTES, 1 MiB
# by default), and a bound on what a corrupt or hostile header can make a reader allocate.
MAX_UNPACKED_BYTES = 64 * 1024 * 1024

# Compression contexts are not thread-safe; one per thread, made on first use. Each holds memory
# for the thread's life: after a create's values, ~260 KB (compressor) and ~96 KB (decompressor),
# so about 6 MB for the default 16 RPC threads of a worker.
_contexts = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    found: zstandard.ZstdCompressor | None = getattr(_contexts, "compressor", None)
    if found is None:
        found = _contexts.compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found: zstandard.ZstdDecompressor | None = getattr(_contexts, "decompressor", None)
    if found is None:
        found = _contexts.decompressor = zstandard.ZstdDecompressor()
    return found


def pack(raw: bytes) -> bytes:
    """``raw`` as one zstd frame that records its size."""
    return _compressor().compress(raw)


def is_packed(stored: bytes) -> bool:
    return stored[:4] == ZSTD_MAGIC


def unpack(stored: bytes, what: str) -> bytes:
    """The bytes ``stored`` holds: a zstd frame decoded, anything else as it is (module docstring).

    ``what`` names the value in the StorageError a corrupt frame raises."""
    if not is_packed(stored):
        return stored
    try:
        size = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as exc:
        raise StorageError(f"{what}: corrupt packed value: {exc}") from exc
    if size < 0 or size > MAX_UNPACKED_BYTES:
        raise StorageError(f"{what}: corrupt packed value: its header gives no usable size ({size})")
    try:
        raw = _decompressor().decompress(stored)
    except zstandard.ZstdError as exc:
        raise StorageError(f"{what}: corrupt packed value: {exc}") from exc
    if len(raw) != size:  # pragma: no cover - zstd checks the frame against its header
        raise StorageError(f"{what}: corrupt packed value: {len(raw)} bytes, the header says {size}")
    return raw


__all__ = ["LEVEL", "MAX_UNPACKED_BYTES", "ZSTD_MAGIC", "is_packed", "pack", "unpack"]
