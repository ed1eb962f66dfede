"""A line chart drawn with braille dots (2 x 4 per cell), for the loss curves.

Written for the monitor's budget: a redraw maps each point once and builds one styled Text, a few
milliseconds for hundreds of points, so a chart that changes every second costs little CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

BRAILLE = 0x2800
# dot bit for (column 0..1, row 0..3) inside a braille cell
DOT = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
AXIS = "grey62"


@dataclass(frozen=True)
class Series:
    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    style: str
    points_only: bool = False
    """Dots at the points (sparse series such as eval loss) instead of joined lines."""


def nice_number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def _range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.04
    return lo - pad, hi + pad


Row = list[tuple[str, str]]
"""One line of the chart as (text, style) pieces."""


def chart_rows(series: list[Series], width: int, height: int, title: str = "") -> list[Row]:
    """The chart as at most `height` rows of `width` cells: a legend, the plot with a y axis, x ticks."""
    shown = [s for s in series if s.xs]
    legend: Row = [(f" {title}  " if title else " ", "")]
    for s in shown:
        legend += [("•• " if s.points_only else "── ", s.style), (f"{s.label}  ", "")]
    rows = [legend]
    plot_h = height - 3
    if not shown or plot_h < 2 or width < 20:
        rows.append([(" no points yet" if not shown else " (too small)", "dim")])
        return rows[:height]

    all_x = [x for s in shown for x in s.xs]
    x_lo, x_hi = min(all_x), max(all_x)  # the x axis spans the steps exactly
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    whole = all(float(x).is_integer() for x in all_x)
    y_lo, y_hi = _range([y for s in shown for y in s.ys])
    y_ticks = [y_hi - (y_hi - y_lo) * i / (plot_h - 1) for i in range(plot_h)]
    labelled = {0, plot_h - 1, (plot_h - 1) // 2}
    labels = {i: nice_number(y_ticks[i]) for i in labelled}
    label_w = max(len(v) for v in labels.values())
    plot_w = width - label_w - 2
    if plot_w < 10:
        rows.append([(" (too small)", "dim")])
        return rows

    dots_w, dots_h = plot_w * 2, plot_h * 4
    cells = [[0] * plot_w for _ in range(plot_h)]
    owner: list[list[str]] = [[""] * plot_w for _ in range(plot_h)]

    def to_dot(x: float, y: float) -> tuple[int, int]:
        dx = round((x - x_lo) / (x_hi - x_lo) * (dots_w - 1))
        dy = round((y_hi - y) / (y_hi - y_lo) * (dots_h - 1))
        return min(max(dx, 0), dots_w - 1), min(max(dy, 0), dots_h - 1)

    def put(dx: int, dy: int, style: str) -> None:
        row, col = dy // 4, dx // 2
        cells[row][col] |= DOT[dx % 2][dy % 4]
        owner[row][col] = style

    for s in shown:
        points = [to_dot(x, y) for x, y in zip(s.xs, s.ys, strict=True) if math.isfinite(y)]
        if s.points_only or len(points) == 1:
            for dx, dy in points:  # a 2 x 2 dot mark reads as a point, not as part of a line
                for mx, my in ((dx, dy), (dx + 1, dy), (dx, dy + 1), (dx + 1, dy + 1)):
                    if mx < dots_w and my < dots_h:
                        put(mx, my, s.style)
            continue
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            steps = max(abs(x1 - x0), abs(y1 - y0), 1)
            for i in range(steps + 1):
                put(x0 + (x1 - x0) * i // steps, y0 + (y1 - y0) * i // steps, s.style)

    for r in range(plot_h):
        row: Row = [(f"{labels.get(r, ''):>{label_w}} {'┤' if r in labels else '│'}", AXIS)]
        run_style, run = "", []
        for c in range(plot_w):
            bits = cells[r][c]
            style = owner[r][c] if bits else ""
            if style != run_style and run:
                row.append(("".join(run), run_style))
                run = []
            run_style = style
            run.append(chr(BRAILLE + bits) if bits else " ")
        if run:
            row.append(("".join(run), run_style))
        rows.append(row)

    rows.append([(" " * label_w + " └" + "─" * plot_w, AXIS)])
    ticks = [x_lo + (x_hi - x_lo) * f for f in (0.0, 0.5, 1.0)]
    tick_text = [nice_number(round(t)) if whole else nice_number(t) for t in ticks]
    line = [" "] * (label_w + 2 + plot_w)
    for frac, text in zip((0.0, 0.5, 1.0), tick_text, strict=True):
        shift = 0 if frac == 0 else len(text) // 2 if frac < 1 else len(text) - 1
        start = max(0, min(label_w + 2 + round(frac * (plot_w - 1)) - shift, len(line) - len(text)))
        line[start : start + len(text)] = list(text)
    rows.append([("".join(line).rstrip(), AXIS)])
    return rows[:height]


def render_chart(series: list[Series], width: int, height: int, title: str = "") -> Text:
    """The chart as styled text (what the widget shows, for tests and plain output)."""
    lines = []
    for row in chart_rows(series, width, height, title):
        line = Text()
        for text, style in row:
            line.append(text, style=style)
        lines.append(line)
    return Text("\n").join(lines)


class LineChart(Widget):
    """Shows the series last given to `plot`. Drawn line by line as strips of a few segments
    (Textual's line API), rebuilt only when the series or the size change."""

    DEFAULT_CSS = "LineChart { height: 1fr; }"

    def __init__(self, title: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.series: list[Series] = []
        self._strips: tuple[tuple[int, int], list[Strip]] | None = None
        self._styles: dict[str, Style] = {}

    def plot(self, series: list[Series]) -> None:
        self.series = series
        self._strips = None
        self.refresh()

    def _style(self, name: str) -> Style:
        if name not in self._styles:
            self._styles[name] = Style.parse(name) if name else Style()
        return self._styles[name]

    def render_line(self, y: int) -> Strip:
        size = (self.size.width, self.size.height)
        if self._strips is None or self._strips[0] != size:
            base = self.rich_style
            strips = []
            for row in chart_rows(self.series, *size, title=self.title):
                segments = [Segment(text, base + self._style(style)) for text, style in row]
                strips.append(Strip(segments).adjust_cell_length(size[0], base))
            self._strips = (size, strips)
        strips = self._strips[1]
        return strips[y] if y < len(strips) else Strip.blank(size[0], self.rich_style)

    @property
    def text(self) -> str:
        """What the chart shows, as plain text (for tests)."""
        return render_chart(self.series, self.size.width, self.size.height, self.title).plain
