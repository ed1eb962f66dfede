"""The monitor's braille line chart and the thinning that keeps long runs cheap to draw."""

from __future__ import annotations

import math

from tui.app.chart import BRAILLE, Series, render_chart
from tui.app.monitor import thin


def dots(line: str) -> list[int]:
    """Columns of a chart line that hold braille dots."""
    return [i for i, ch in enumerate(line) if BRAILLE < ord(ch) <= BRAILLE + 0xFF]


def test_a_falling_line_starts_top_left_and_ends_bottom_right():
    xs = tuple(range(1, 101))
    lines = render_chart([Series("train", xs, tuple(2.0 - i / 100 for i in xs), "cyan")], 60, 14).plain.split("\n")
    assert len(lines) == 14 and all(len(line) <= 60 for line in lines)
    plot = lines[1:-2]
    assert "train" in lines[0]
    first_row = next(i for i, line in enumerate(plot) if dots(line))
    last_row = max(i for i, line in enumerate(plot) if dots(line))
    assert first_row == 0 and last_row == len(plot) - 1
    assert min(dots(plot[0])) < min(dots(plot[-1]))  # high on the left, low on the right
    assert lines[-1].split()[0] == "1" and lines[-1].split()[-1] == "100"  # the steps, exactly


def test_eval_points_are_marks_and_a_nan_is_skipped():
    train = Series("train", (1, 2, 3, 4), (2.0, float("nan"), 1.5, 1.0), "cyan")
    evals = Series("eval", (2, 4), (1.8, 1.2), "magenta", points_only=True)
    text = render_chart([train, evals], 40, 10)
    assert "•• eval" in text.plain and "── train" in text.plain
    styles = {str(span.style) for span in text.spans}
    assert "magenta" in styles and "cyan" in styles


def test_no_points_and_tiny_sizes_say_so_instead_of_failing():
    assert "no points yet" in render_chart([], 40, 10).plain
    assert "too small" in render_chart([Series("t", (1,), (1.0,), "cyan")], 15, 10).plain
    one = render_chart([Series("t", (7,), (1.0,), "cyan")], 40, 10).plain
    assert any(dots(line) for line in one.split("\n"))


def test_thinning_keeps_the_ends_and_every_spike():
    xs = list(range(100_000))
    ys = [1.0] * len(xs)
    ys[54_321] = 9.0  # one spike among a hundred thousand points
    ys[77_777] = -3.0
    tx, ty = thin(xs, ys, 400)
    assert tx == sorted(tx)
    assert 9.0 in ty and -3.0 in ty and tx[0] == 0 and tx[-1] == 99_999
    assert len(tx) <= 402
    assert thin(xs[:50], ys[:50], 400) == (xs[:50], ys[:50])
    assert all(math.isfinite(y) for y in ty)
