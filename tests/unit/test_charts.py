"""PNG charts (workflows/charts.py): valid, never empty, byte-for-byte deterministic."""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from kis_estimator.workflows.charts import breach_chart_png, latency_chart_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = datetime(2025, 9, 23, 3, 0, tzinfo=UTC)
LATENCY = [(i * 0.05, 8.0 + (i * 37 % 11) + (25.0 if i % 40 == 0 else 0.0)) for i in range(200)]


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == PNG_SIGNATURE
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


CHARTS: list[tuple[str, Callable[[], bytes]]] = [
    ("latency", lambda: latency_chart_png(LATENCY, title="KIS Estimator GA-1.0.0 latency")),
    ("latency-empty", lambda: latency_chart_png([], title="no samples")),
    ("latency-one-instant", lambda: latency_chart_png([(0.0, 12.0), (0.0, 14.0)], title="one instant")),
    (
        "breach-datetimes",
        lambda: breach_chart_png(
            [("latency_p95_ms", [(T0 + timedelta(minutes=i), 40.0 + 15 * i) for i in range(15)])],
            200.0,
            title="p95 latency > 200 ms for 5 min",
            unit="ms",
        ),
    ),
    (
        "breach-seconds-no-threshold",
        lambda: breach_chart_png(
            [("rss", [(0.0, 10.0), (60.0, 14.0), (120.0, 21.0)])], None, title="memory_leak", unit="MiB"
        ),
    ),
    ("breach-empty", lambda: breach_chart_png([], 2.0, title="error rate", unit="%")),
    (
        "breach-korean-title",
        lambda: breach_chart_png([("p95", [(0.0, 250.0)])], 200.0, title="P95 > 200ms (5분 지속)", unit="ms"),
    ),
]


@pytest.mark.parametrize("render", [c[1] for c in CHARTS], ids=[c[0] for c in CHARTS])
def test_chart_is_a_valid_nonempty_png_of_fixed_size(render: Callable[[], bytes]) -> None:
    data = render()

    chunks = png_chunks(data)
    assert len(data) > 1024
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert (width, height) == (800, 450)
    assert not [kind for kind, _ in chunks if kind in {b"tEXt", b"iTXt", b"zTXt", b"tIME"}]


@pytest.mark.parametrize("render", [c[1] for c in CHARTS], ids=[c[0] for c in CHARTS])
def test_same_input_renders_the_same_bytes(render: Callable[[], bytes]) -> None:
    assert render() == render()


def test_latency_chart_differs_when_the_samples_do() -> None:
    slower = [(t, ms + 20.0) for t, ms in LATENCY]
    assert latency_chart_png(LATENCY, title="x") != latency_chart_png(slower, title="x")


def test_breach_chart_rejects_mixed_x_values() -> None:
    with pytest.raises(ValueError, match="all datetimes or all seconds"):
        breach_chart_png([("a", [(T0, 1.0), (5.0, 2.0)])], 1.0, title="mixed", unit="ms")


def test_hangul_is_drawn_with_the_hangul_font_not_question_marks() -> None:
    import warnings

    from kis_estimator.workflows import charts

    if not any(p.is_file() for p in charts.HANGUL_FONTS):
        pytest.skip("no Hangul font installed (make setup installs fonts-nanum)")
    assert charts._drawable("P95 > 200ms (5분 지속)") == "P95 > 200ms (5분 지속)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph … missing from font" for a box
        png = charts.breach_chart_png(
            (("응답시간 p95", ((0.0, 150.0), (15.0, 250.0))),),
            200.0,
            title="P95 > 200ms (5분 지속)",
            unit="ms",
        )
    assert png.startswith(b"\x89PNG")
