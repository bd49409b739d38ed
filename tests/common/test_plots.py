"""common/plots.py: the charts the benchmarks and the CLI draw."""


def test_a_plot_named_without_a_format_is_a_png_under_the_name_returned(tmp_path):
    """matplotlib adds ".png" to a name without a suffix; the name returned (printed, and
    in --json) was the one without, a file that does not exist."""
    from pathlib import Path

    from common.plots import line_chart

    got = line_chart({"a": ([0, 1], [1, 2])}, tmp_path / "plots" / "best", "x", "y")
    assert got.endswith("best.png") and Path(got).is_file()
