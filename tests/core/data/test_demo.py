"""prepare_demo: fetch, shifted target, validation and printable statistics of both domains."""
from __future__ import annotations

from core.data.demo import format_table, prepare_demo


def test_prepare_demo(tmp_path, nc_data):
    out = prepare_demo(tmp_path, data_dir=nc_data["b10"].parent)
    assert out["paths"]["target"].parent == tmp_path and out["paths"]["target"].is_file()
    assert out["valid_pixels"]["source"] == out["valid_pixels"]["target"] == 135092
    rows = out["table"]
    assert [r["band"] for r in rows][0] == "B1 blue" and len(rows) == 6
    assert rows[0]["target_mean"] > rows[0]["source_mean"] + 20  # haze brightens blue
    assert "source mean" in format_table(rows)
    assert out["domains"]["source"]["region"]["columns"] == [0.0, 0.6]
    mtime = out["paths"]["target"].stat().st_mtime_ns
    again = prepare_demo(tmp_path, data_dir=nc_data["b10"].parent)  # the built target is reused
    assert again["paths"]["target"].stat().st_mtime_ns == mtime
