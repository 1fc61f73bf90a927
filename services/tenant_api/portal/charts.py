"""Usage charts as inline SVG, drawn on the server (no browser library): one bar per day, the
numbers themselves in a table beside each chart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 640, 180, 48, 22, 10


@dataclass(frozen=True)
class DailySeries:
    title: str
    unit: str
    days: list[tuple[date, int]]  # every day of the range, zero included

    @property
    def total(self) -> int:
        return sum(value for _, value in self.days)

    @property
    def peak(self) -> int:
        return max((value for _, value in self.days), default=0)


def days_between(start: date, end: date) -> list[date]:
    """Every day in [start, end)."""
    return [start + timedelta(days=n) for n in range((end - start).days)]


def _nice_ceiling(value: int) -> int:
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def bar_chart(series: DailySeries, chart_id: str) -> Markup:
    """An accessible SVG bar chart (role=img, titled, described by its data table)."""
    top = _nice_ceiling(series.peak)
    plot_w, plot_h = WIDTH - PAD_LEFT - 4, HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(len(series.days), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title" aria-describedby="usage-table" '
        'preserveAspectRatio="none">',
        f'<title id="{chart_id}-title">{escape(series.title)} per day</title>',
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - 4}" '
        f'y2="{PAD_TOP + plot_h}"/>',
        f'<text class="tick" x="{PAD_LEFT - 6}" y="{PAD_TOP + 8}" text-anchor="end">{top:,}</text>',
        f'<text class="tick" x="{PAD_LEFT - 6}" y="{PAD_TOP + plot_h}" text-anchor="end">0</text>',
    ]
    for index, (day, value) in enumerate(series.days):
        height = plot_h * value / top
        x = PAD_LEFT + index * slot + slot * 0.15
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{PAD_TOP + plot_h - height:.1f}" '
            f'width="{slot * 0.7:.1f}" height="{height:.1f}"><title>{day.isoformat()}: '
            f"{value:,} {escape(series.unit)}</title></rect>"
        )
        if day.day in (1, 15):
            parts.append(
                f'<text class="tick" x="{x + slot * 0.35:.1f}" y="{HEIGHT - 6}" '
                f'text-anchor="middle">{day.strftime("%d %b")}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
