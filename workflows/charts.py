"""PNG charts attached to DEPLOY and ROLLBACK issues (matplotlib, Agg canvas, no pyplot state).

Figures are built with ``Figure`` + ``FigureCanvasAgg`` directly, so nothing global (pyplot's figure
registry, the interactive backend) is touched and charts can be rendered from any thread. Size and
dpi are fixed and the PNG carries no "Software" text chunk, so the same input gives the same bytes.

Hangul is drawn with NanumGothic (Debian ``fonts-nanum``, which ``make setup`` installs; the same
font the 견적서 PDF embeds), so titles and labels may carry the notice's Korean wording. Where no
Hangul font is installed, matplotlib's bundled DejaVu is used and a character it lacks is drawn as
"?" (rather than an empty box and a warning).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, DateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font

from kis_estimator.workflows.clock import KST

# The percentile of the SLO gate (nearest rank), so the chart's p95 agrees with the reported one.
from kis_estimator.workflows.percentiles import percentile

__all__ = ["breach_chart_png", "latency_chart_png"]

_FIGSIZE_IN = (8.0, 4.5)
_DPI = 100
_BUCKETS = 20  # latency samples are grouped into this many time windows for p50/p95
_SLO_COLOR = "#c0392b"


HANGUL_FONTS = (
    Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf"),  # Debian fonts-nanum
    Path("/usr/share/fonts/nanum/NanumGothic.ttf"),
)


@functools.cache
def _font() -> font_manager.FontProperties:
    """NanumGothic when it is installed, else matplotlib's default (DejaVu Sans)."""
    for path in HANGUL_FONTS:
        if path.is_file():
            return font_manager.FontProperties(fname=str(path))
    return font_manager.FontProperties()


@functools.cache
def _glyphs() -> frozenset[int]:
    """Code points the chart font can draw."""
    font = _font()
    return frozenset(FT2Font(font.get_file() or font_manager.findfont(font)).get_charmap())


def _small_font() -> font_manager.FontProperties:
    font = _font().copy()
    font.set_size(8)
    return font


def _drawable(text: str) -> str:
    # "$" would switch matplotlib to mathtext; a literal dollar is what a label means.
    return "".join(c if c.isspace() or ord(c) in _glyphs() else "?" for c in text).replace("$", r"\$")


def _new_axes() -> tuple[Figure, Axes]:
    fig = Figure(figsize=_FIGSIZE_IN, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="grey")


def latency_chart_png(samples: Sequence[tuple[float, float]], *, title: str, slo_ms: float = 30.0) -> bytes:
    """p50/p95 latency over time with the SLO line; ``samples`` are (seconds since start, ms)."""
    fig, ax = _new_axes()
    ax.set_title(_drawable(title), fontproperties=_font())
    ax.set_xlabel("seconds since start of check", fontproperties=_font())
    ax.set_ylabel("latency (ms)", fontproperties=_font())
    ax.axhline(slo_ms, color=_SLO_COLOR, linestyle="--", linewidth=1.2, label=f"SLO p95 < {slo_ms:g} ms")
    if samples:
        ordered = sorted(samples)
        start, end = ordered[0][0], ordered[-1][0]
        width = (end - start) / _BUCKETS or 1.0
        buckets: dict[int, list[float]] = {}
        for t, ms in ordered:
            buckets.setdefault(min(int((t - start) / width), _BUCKETS - 1), []).append(ms)
        centers = [start + (i + 0.5) * width for i in sorted(buckets)]
        values = [buckets[i] for i in sorted(buckets)]
        p50 = [percentile(v, 0.50) or 0.0 for v in values]  # buckets are never empty: never None
        p95 = [percentile(v, 0.95) or 0.0 for v in values]
        ax.scatter(
            [t for t, _ in ordered],
            [ms for _, ms in ordered],
            s=4,
            color="#7f8c8d",
            alpha=0.35,
            label="requests",
        )
        ax.plot(centers, p50, marker="o", markersize=3, color="#2980b9", label="p50")
        ax.plot(centers, p95, marker="o", markersize=3, color="#e67e22", label="p95")
        ax.set_ylim(0, max(max(p95), slo_ms) * 1.25)
        ax.set_xlim(start - width / 2, end + width / 2)
    else:
        ax.set_ylim(0, slo_ms * 1.25)
        _no_data(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", prop=_small_font())
    return _png(fig)


def breach_chart_png(
    series: Sequence[tuple[str, Sequence[tuple[datetime | float, float]]]],
    threshold: float | None,
    *,
    title: str,
    unit: str,
) -> bytes:
    """Each series against ``threshold`` (None: none on the value axis, e.g. a trend criterion).

    x values are all aware datetimes (drawn on a KST clock axis) or all seconds; points above the
    threshold are marked.
    """
    fig, ax = _new_axes()
    ax.set_title(_drawable(title), fontproperties=_font())
    ax.set_ylabel(_drawable(unit), fontproperties=_font())
    xs_all = [x for _, points in series for x, _ in points]
    dated = bool(xs_all) and all(isinstance(x, datetime) for x in xs_all)
    if xs_all and not dated and any(isinstance(x, datetime) for x in xs_all):
        raise ValueError("breach_chart_png: x values must be all datetimes or all seconds")

    def x_value(x: datetime | float) -> float:
        if isinstance(x, datetime):
            return float(date2num(x))  # type: ignore[no-untyped-call]  # matplotlib.dates is unannotated
        return float(x)

    values = [y for _, points in series for _, y in points]
    for label, points in series:
        if not points:
            continue
        xs = [x_value(x) for x, _ in points]
        ys = [y for _, y in points]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=_drawable(label))
        over = [(x, y) for x, y in zip(xs, ys, strict=True) if threshold is not None and y > threshold]
        if over:
            ax.scatter([x for x, _ in over], [y for _, y in over], s=22, color=_SLO_COLOR, zorder=3)
    levels = values + ([threshold] if threshold is not None else [])
    low = min([0.0, *levels])
    high = max(levels, default=1.0)
    top = high * 1.2 if high > 0 else 1.0
    if threshold is not None:
        label = _drawable(f"threshold {threshold:g} {unit}")
        ax.axhline(threshold, color=_SLO_COLOR, linestyle="--", linewidth=1.2, label=label)
        ax.axhspan(threshold, top, color=_SLO_COLOR, alpha=0.06)
    ax.set_ylim(low * 1.2, top)
    if dated:
        ax.xaxis.set_major_locator(AutoDateLocator(tz=KST))  # type: ignore[no-untyped-call]  # as above
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=KST))  # type: ignore[no-untyped-call]  # as above
        ax.set_xlabel("time (KST)")
    else:
        ax.set_xlabel("seconds")
    if not xs_all:
        _no_data(ax)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", prop=_small_font())
    return _png(fig)
