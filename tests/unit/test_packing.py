"""storage/packing.py: what the replica packs reads back exactly; anything else, or anything broken,
is told apart without a crash or an allocation a header asks for."""

from __future__ import annotations

import threading

import pytest
import zstandard

from kis_estimator.server.storage import packing
from kis_estimator.server.storage.repository import StorageError
from kis_estimator.server.storage.rows import Large

JSON = b'{"estimate_id":"est_1","lines":[' + b'{"model":"SBE-52","qty":1},' * 400 + b"{}]}"


def test_a_packed_value_is_a_zstd_frame_that_records_its_size_and_reads_back_exactly() -> None:
    packed = packing.pack(JSON)
    assert packed[:4] == packing.ZSTD_MAGIC
    assert zstandard.frame_content_size(packed) == len(JSON)
    assert len(packed) * 10 < len(JSON)
    assert packing.unpack(packed, "doc") == JSON


@pytest.mark.parametrize(
    "stored", [JSON, b"PK\x03\x04zip", b"", b"\x28\xb5\x2f"], ids=["json", "zip", "empty", "3-bytes"]
)
def test_what_is_not_a_frame_reads_back_as_it_is(stored: bytes) -> None:
    assert packing.unpack(stored, "value") is stored


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (packing.pack(JSON)[:30], "corrupt packed value"),  # cut short
        (packing.ZSTD_MAGIC + b"\xff" * 20, "corrupt packed value"),  # a header that is not one
        (zstandard.ZstdCompressor(write_content_size=False).compress(JSON), "no usable size"),
    ],
    ids=["truncated", "garbage", "no-size"],
)
def test_a_broken_frame_is_a_storage_error(stored: bytes, reason: str) -> None:
    with pytest.raises(StorageError, match=f"what: .*{reason}"):
        packing.unpack(stored, "what")


def test_a_header_claiming_more_than_the_bound_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packing, "MAX_UNPACKED_BYTES", len(JSON) - 1)
    with pytest.raises(StorageError, match=f"no usable size \\({len(JSON)}\\)"):
        packing.unpack(packing.pack(JSON), "doc")


def test_threads_packing_at_once_each_get_their_own_value_back() -> None:
    """Compression contexts are per thread: shared, concurrent use corrupts them or crashes."""
    values = [JSON + str(i).encode() * i for i in range(8)]
    failures: list[int] = []

    def work(i: int) -> None:
        for _ in range(200):
            if packing.unpack(packing.pack(values[i]), "v") != values[i]:
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_large_value_packs_once_and_compares_by_what_it_holds() -> None:
    document = Large(JSON.decode())
    first = document.packed()
    assert document.packed() is first
    assert packing.unpack(first, "doc") == JSON
    assert document == Large(JSON.decode()) and document != Large(JSON)
