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


def test_the_blocks_split_cuts_the_scene_into_two_regions_with_one_class_mix(tmp_path, nc_data):
    import numpy as np
    import pytest

    from core.data.demo import benchmark_a_domains, ensure_shifted_target
    from core.data.nc import nc_class_specs
    from core.jobspec import DomainSpec
    from core.raster.domain import Domain

    shifted = ensure_shifted_target(nc_data, tmp_path / "shifted.tif", 0)

    def regions(split):
        d = benchmark_a_domains(nc_data, shifted, split)
        out = {}
        for name in ("source", "target", "target_test"):
            with Domain.open(DomainSpec.model_validate(d[name]), nc_class_specs()) as dom:
                (item,) = dom.items
                inside = item.in_region(item.grid.full_window())
                counts = dom.class_counts()
                out[name] = (inside, counts / counts.sum())
        return out

    blocks, columns = regions("blocks"), regions("columns")
    train, test = blocks["target"][0], blocks["target_test"][0]
    assert np.array_equal(train, blocks["source"][0])  # one ground for source and target, as in the column split
    assert not (train & test).any() and (train | test).all()  # every pixel in exactly one region
    assert 0.45 < train.mean() < 0.55
    assert train[0, 0] and not train[0, 96] and not train[96, 0] and train[96, 96]  # 96 px cells, alternating
    # the class mixes: far apart by columns (developed 19 % / 48 %), within 1.5 points of each other by blocks
    assert np.abs(columns["target"][1] - columns["target_test"][1]).max() > 0.25
    assert np.abs(blocks["target"][1] - blocks["target_test"][1]).max() < 0.015
    with pytest.raises(ValueError, match="split must be one of"):
        benchmark_a_domains(nc_data, shifted, "rows")
