"""What the benchmarks share: a report plot is written and closed, and a plot that fails leaves no file."""
from __future__ import annotations

import matplotlib
import pytest

from benchmarks.common import saved_figure


def test_a_figure_is_written_laid_out_and_closed(tmp_path):
    with saved_figure(tmp_path / "a.png", 1, 2, figsize=(6, 3), squeeze=False, dpi=50) as (fig, axes):
        axes[0][0].plot([0, 1], [1, 0])
        assert axes.shape == (1, 2)
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.pyplot.get_fignums() == []


def test_a_plot_that_fails_writes_nothing_and_still_closes(tmp_path):
    with pytest.raises(KeyError):
        with saved_figure(tmp_path / "b.png") as (fig, ax):
            raise KeyError("mean_miou")
    assert not (tmp_path / "b.png").exists() and matplotlib.pyplot.get_fignums() == []
