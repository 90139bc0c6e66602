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


def on_render(monkeypatch, note) -> None:
    """Call `note(figure)` for each chart actually rendered (matplotlib's `Figure.savefig`)."""
    render = Figure.savefig

    def noted(self, *args, **kwargs):
        note(self)
        return render(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", noted)


@pytest.fixture
def drawings(monkeypatch) -> list[int]:
    """One entry per chart actually rendered."""
    calls: list[int] = []
    on_render(monkeypatch, lambda figure: calls.append(1))
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


def _drawn_figure(monkeypatch, cells, metric, path, title=None) -> Figure:
    """The figure `plot_metric` renders, caught at `savefig`."""
    caught: list[Figure] = []
    on_render(monkeypatch, caught.append)
    plot_metric(cells, metric, path, title=title)
    (figure,) = caught
    return figure


GROUPED = [  # two suites, each with its pooled "(all)" listed first, and a setup missing in one group
    Cell("base", "s1", "(all)", "exact", 6, 0.5, 0.25, 0.75, "rate"),
    Cell("tuned", "s1", "(all)", "exact", 6, 0.8, 0.4, 0.95, "rate"),
    Cell("base", "s1", "single", "exact", 3, 0.6, 0.2, 0.9, "rate"),
    Cell("tuned", "s1", "single", "exact", 3, 1.0, 0.45, 1.0, "rate"),
    Cell("base", "s2", "(all)", "exact", 2, 0.0, 0.0, 0.65, "rate"),
    Cell("base", "s2", "pair", "exact", 2, 0.5, 0.1, 0.9, "rate"),
]


def test_the_chart_shows_each_cells_mean_and_interval_in_its_group(tmp_path, monkeypatch) -> None:
    """The reference is the cells: one bar per setup and group at the cell's mean, an error bar
    from its low to its high end, groups as suite/category with each suite's "(all)" last, and
    rates on a 0-1 axis labelled with Wilson intervals."""
    figure = _drawn_figure(monkeypatch, GROUPED, "exact", tmp_path / "exact.png", title="exact match")
    (axes,) = figure.axes
    labels = [label.get_text() for label in axes.get_xticklabels()]
    assert labels == ["s1/single", "s1/(all)", "s2/pair", "s2/(all)"]
    bars = {container.get_label(): container for container in axes.containers if hasattr(container, "patches")}
    assert list(bars) == ["base", "tuned"]
    errors = [container for container in axes.containers if not hasattr(container, "patches")]
    for (setup, container), error in zip(bars.items(), errors):
        expected = {labels.index(f"{cell.suite}/{cell.category}"): cell for cell in GROUPED if cell.setup == setup}
        centres = [patch.get_x() + patch.get_width() / 2 for patch in container.patches]
        groups = [round(centre) for centre in centres]  # each bar sits within its group's slot
        assert sorted(groups) == sorted(expected) and all(abs(c - g) < 0.4 for c, g in zip(centres, groups))
        assert [patch.get_height() for patch in container.patches] == [expected[g].mean for g in groups]
        segments = error.lines[2][0].get_segments()
        assert [(float(s[0][1]), float(s[1][1])) for s in segments] == [
            pytest.approx((expected[g].low, expected[g].high)) for g in groups
        ]
    widths = [patch.get_width() for container in bars.values() for patch in container.patches]
    assert widths == pytest.approx([0.4] * 6)  # 0.8 of a group's slot, shared by the two setups
    assert {error.lines[1][0].get_markersize() for error in errors} == {6.0}  # caps of capsize 3 points
    assert {(label.get_rotation(), label.get_horizontalalignment()) for label in axes.get_xticklabels()} == {
        (45.0, "right")
    }
    assert axes.get_ylim() == (0.0, 1.0)
    assert axes.get_ylabel() == "exact (rate, 95% Wilson interval)"
    assert axes.get_title() == "exact match"
    legend = axes.get_legend()
    assert legend.get_title().get_text() == "setup" and [t.get_text() for t in legend.get_texts()] == ["base", "tuned"]


def test_a_mean_metric_is_labelled_with_bootstrap_intervals_on_its_own_scale(tmp_path, monkeypatch) -> None:
    cells = [Cell("a", "s", "c", "clip_score", 4, 1.7, 1.5, 1.9, "mean")]
    (axes,) = _drawn_figure(monkeypatch, cells, "clip_score", tmp_path / "clip.png").axes
    assert axes.get_ylabel() == "clip_score (mean, 95% bootstrap interval)"
    assert axes.get_title() == "clip_score"  # the metric's name when no title is given
    assert axes.get_ylim()[1] > 1.9  # not cut at 1


def test_objects_found_is_a_mean_on_a_0_to_1_axis(tmp_path, monkeypatch) -> None:
    """The share of a prompt's objects found: a mean (bootstrap), bounded by 1."""
    cells = [Cell("a", "s", "c", "objects_found", 4, 0.5, 0.3, 0.7, "mean")]
    (axes,) = _drawn_figure(monkeypatch, cells, "objects_found", tmp_path / "objects.png").axes
    assert axes.get_ylim() == (0.0, 1.0)
    assert axes.get_ylabel() == "objects_found (mean, 95% bootstrap)"


def test_a_metric_without_cells_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(ValueError) as refusal:
        plot_metric(CELLS, "relation", tmp_path / "relation.png")
    assert str(refusal.value) == "no results for metric 'relation'"
    assert not (tmp_path / "relation.png").exists()


def test_a_chart_in_a_new_folder_is_written_there(tmp_path) -> None:
    path = tmp_path / "run" / "plots" / "exact.png"
    assert plot_metric(CELLS, "exact", str(path)) == path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 450)  # 6 x 4.5 inches at 100 dpi


@pytest.mark.parametrize("groups, setups, inches", [(12, 4, 0.6 * 12 * 2 + 2), (6, 1, 6.0), (3, 9, 0.6 * 3 * 3 + 2)])
def test_a_chart_widens_with_its_groups_and_setups(tmp_path, groups, setups, inches) -> None:
    """0.6 inch a group, times the square root of the setups, plus 2 for the labels; 6 at least."""
    cells = [
        Cell(f"setup{k}", "s", f"c{g}", "exact", 2, 0.5, 0.2, 0.8, "rate") for g in range(groups) for k in range(setups)
    ]
    path = plot_metric(cells, "exact", tmp_path / "wide.png")
    with Image.open(path) as image:
        assert image.size == (round(inches * 100), 450)
