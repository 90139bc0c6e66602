"""The experiment's charts are drawn again exactly when what they show changed: the same cells
leave the PNG on disk untouched (no drawing at all), changed cells, title, drawing code or
matplotlib draw it anew, and a chart that is damaged, or a PNG that clipcond did not draw, is
replaced. Each test draws one or two small charts (about 0.1 s each)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib
import pytest
from matplotlib.figure import Figure
from PIL import Image

from clipcond.lab import plots
from clipcond.lab.plots import CHART_KEY, plot_metric
from clipcond.lab.summary import Cell

CELLS = [
    Cell("a", "mini", "single", "exact", 4, 0.5, 0.2, 0.8, "rate"),
    Cell("b", "mini", "single", "exact", 4, 0.25, 0.05, 0.7, "rate"),
    Cell("a", "mini", "single", "clip_score", 4, 0.31, 0.29, 0.33, "mean"),
]


@pytest.fixture
def drawings(monkeypatch) -> list[int]:
    """One entry per chart actually rendered (matplotlib's `Figure.savefig`)."""
    calls: list[int] = []
    render = Figure.savefig

    def counted(self, *args, **kwargs):
        calls.append(1)
        return render(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", counted)
    return calls


def test_the_same_cells_leave_the_chart_on_disk_untouched(tmp_path, drawings) -> None:
    path = tmp_path / "plots" / "exact.png"
    plot_metric(CELLS, "exact", path)
    first = path.read_bytes()
    written = path.stat().st_mtime_ns
    assert drawings == [1]
    with Image.open(path) as image:
        assert image.text[CHART_KEY] == plots.chart_key(CELLS[:2], "exact", None)
    assert plot_metric(list(CELLS), "exact", path) == path
    assert drawings == [1] and path.read_bytes() == first and path.stat().st_mtime_ns == written


def test_another_metrics_cells_do_not_redraw_a_chart(tmp_path, drawings) -> None:
    path = tmp_path / "exact.png"
    plot_metric(CELLS, "exact", path)
    changed = [*CELLS[:2], dataclasses.replace(CELLS[2], mean=0.9)]
    plot_metric(changed, "exact", path)
    assert drawings == [1]


@pytest.mark.parametrize(
    "change",
    [
        lambda cells, title: ([dataclasses.replace(cells[0], mean=0.75), *cells[1:]], title),
        lambda cells, title: ([dataclasses.replace(cells[1], high=0.71), *cells[:1], *cells[2:]], title),
        lambda cells, title: ([cells[1], cells[0], cells[2]], title),  # the setups' order: the bars' order
        lambda cells, title: ([dataclasses.replace(cells[0], count=5), *cells[1:]], title),
        lambda cells, title: (cells[1:], title),  # a setup fewer
        lambda cells, title: (cells, "exact match"),
    ],
    ids=["a_mean", "an_interval", "the_setup_order", "a_count", "a_setup_fewer", "the_title"],
)
def test_a_change_in_what_the_chart_shows_draws_it_again(tmp_path, drawings, change) -> None:
    path = tmp_path / "exact.png"
    plot_metric(CELLS, "exact", path)
    cells, title = change(CELLS, None)
    plot_metric(cells, "exact", path, title=title)
    assert drawings == [1, 1]
    with Image.open(path) as image:
        assert image.text[CHART_KEY] == plots.chart_key([c for c in cells if c.metric == "exact"], "exact", title)


def test_new_drawing_code_or_matplotlib_draws_it_again(tmp_path, drawings, monkeypatch) -> None:
    path = tmp_path / "exact.png"
    plot_metric(CELLS, "exact", path)
    monkeypatch.setattr(matplotlib, "__version__", matplotlib.__version__ + ".post1")
    plot_metric(CELLS, "exact", path)
    assert drawings == [1, 1]
    edited = tmp_path / "plots.py"
    edited.write_bytes(Path(plots.__file__).read_bytes() + b"# a changed line\n")
    monkeypatch.setattr(plots, "__file__", str(edited))
    plot_metric(CELLS, "exact", path)
    assert drawings == [1, 1, 1]


DAMAGE = {
    "cut in half": lambda data: data[: len(data) // 2],
    "one bit flipped in the pixels": lambda data: data[:-30] + bytes([data[-30] ^ 1]) + data[-29:],
    "not a png": lambda data: b"garbage" * 20,
    "empty": lambda data: b"",
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_chart_is_drawn_again(tmp_path, drawings, damage) -> None:
    path = tmp_path / "exact.png"
    plot_metric(CELLS, "exact", path)
    whole = path.read_bytes()
    path.write_bytes(damage(whole))
    plot_metric(CELLS, "exact", path)
    assert drawings == [1, 1] and path.read_bytes() == whole  # the drawing is deterministic


def test_a_png_clipcond_did_not_draw_is_replaced(tmp_path, drawings) -> None:
    path = tmp_path / "exact.png"
    Image.new("RGB", (8, 8), "red").save(path)
    plot_metric(CELLS, "exact", path)
    assert drawings == [1]
    with Image.open(path) as image:
        assert image.size != (8, 8) and CHART_KEY in image.text
