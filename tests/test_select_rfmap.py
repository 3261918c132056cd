"""Science tests of meireport.select.rfmap on synthetic gabor sessions with planted RFs."""

import numpy as np
import pandas as pd
import pytest

from meireport.errors import MeireportError
from meireport.select import RFMaps, receptive_fields, rf_centres, rf_maps, rf_pvalues

GRID = np.arange(-40.0, 41.0, 10.0)


def deg_to_px(x_deg, y_deg, deg_per_px=1.5):
    """Reference mapping: 60 x 96 image, centre (row 29.5, col 47.5) = (0, 0) deg, y up."""
    return 47.5 + np.asarray(x_deg) / deg_per_px, 29.5 - np.asarray(y_deg) / deg_per_px


def gabor_table(n_repeats=15, seed=0):
    """9 x 9 positions x 3 orientations x n_repeats presentations, in random order."""
    x, y, ori = (a.ravel() for a in np.meshgrid(GRID, GRID, [0.0, 45.0, 90.0]))
    x, y, ori = (np.tile(a, n_repeats) for a in (x, y, ori))
    order = np.random.default_rng(seed).permutation(x.size)
    index = pd.Index(np.arange(x.size) + 40000, name="stimulus_presentation_id")
    return pd.DataFrame(
        {"orientation": ori[order], "x_position": x[order], "y_position": y[order]}, index=index
    )


def planted_counts(table, centres, sigma=8.0, base=1.0, gain=5.0, untuned=(), seed=1):
    """Poisson counts: Gaussian RF at each (x, y) centre; untuned units fire at a flat rate."""
    rng = np.random.default_rng(seed)
    x, y = table["x_position"].to_numpy(), table["y_position"].to_numpy()
    columns = {}
    for k, (cx, cy) in enumerate(centres):
        rate = base + gain * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        columns[1000 + k] = rng.poisson(rate)
    for k, rate in enumerate(untuned):
        columns[2000 + k] = rng.poisson(rate, size=x.size)
    return pd.DataFrame(columns, index=table.index)


CENTRES = [(20.0, -10.0), (-30.0, 20.0), (0.0, 0.0), (15.0, 25.0)]


@pytest.fixture(scope="module")
def session():
    table = gabor_table()
    counts = planted_counts(table, CENTRES, untuned=(3.0, 0.5))
    return table, counts


def test_map_layout_top_row_is_highest_elevation(session):
    table, counts = session
    maps = rf_maps(table, counts)
    assert maps.maps.shape == (6, 9, 9)
    np.testing.assert_array_equal(maps.x_deg, GRID)
    np.testing.assert_array_equal(maps.y_deg, GRID[::-1])
    # unit 1001 has its RF at (-30, +20): column 1, row 2 from the top
    truth = 1.0 + 5.0 * np.exp(-((GRID[None] + 30) ** 2 + (GRID[::-1, None] - 20) ** 2) / 128)
    assert np.unravel_index(np.argmax(truth), truth.shape) == (2, 1)
    assert np.corrcoef(maps.maps[1].ravel(), truth.ravel())[0, 1] > 0.95


def test_map_averages_orientations_not_presentations():
    # orientation 0 is shown three times as often but must weigh 1/3, as the others
    rows = [(0.0, 0.0, 0.0)] * 3 + [(45.0, 0.0, 0.0), (90.0, 0.0, 0.0)]
    table = pd.DataFrame(rows, columns=["orientation", "x_position", "y_position"])
    counts = pd.DataFrame({7: [9, 9, 9, 0, 0]})
    assert rf_maps(table, counts).maps[0, 0, 0] == pytest.approx(3.0)


def test_recovers_planted_centres_and_pixels(session):
    table, counts = session
    out = receptive_fields(table, counts, deg_to_px, n_shuffles=500, seed=0).set_index("unit_id")
    for k, (cx, cy) in enumerate(CENTRES):
        row = out.loc[1000 + k]
        assert abs(row["rf_x_deg"] - cx) < 2.5 and abs(row["rf_y_deg"] - cy) < 2.5, (k, row)
        col, r = deg_to_px(row["rf_x_deg"], row["rf_y_deg"])
        assert row["rf_col_px"] == pytest.approx(col) and row["rf_row_px"] == pytest.approx(r)
        assert row["rf_p_value"] < 0.01 and row["rf_significant"] and row["has_rf"]
    for unit in (2000, 2001):
        assert out.loc[unit, "rf_p_value"] > 0.05 and not out.loc[unit, "has_rf"]
    # the pixel convention: up is a smaller row, right a larger column
    assert out.loc[1003, "rf_row_px"] < 29.5 < out.loc[1000, "rf_row_px"]
    assert out.loc[1000, "rf_col_px"] > 47.5 > out.loc[1001, "rf_col_px"]


def test_peak_method_lands_on_the_grid_point():
    grid_x, grid_y = np.meshgrid(GRID, GRID[::-1])
    rf = 1 + 4 * np.exp(-((grid_x - 10) ** 2 + (grid_y - 30) ** 2) / (2 * 9.0**2))
    maps = RFMaps(rf[None], GRID, GRID[::-1], np.array([1]))
    out = rf_centres(maps, method="peak")
    assert out.loc[1, ["rf_x_deg", "rf_y_deg"]].tolist() == [10.0, 30.0]


def test_noise_free_gaussian_rf_gives_exact_centre_and_width():
    grid_x, grid_y = np.meshgrid(GRID, GRID[::-1])
    sigmas = [4.0, 6.0, 10.0, 15.0, 25.0]
    maps = np.stack([1 + 4 * np.exp(-((grid_x - 3) ** 2 + (grid_y + 2) ** 2) / (2 * s**2))
                     for s in sigmas])
    out = rf_centres(RFMaps(maps, GRID, GRID[::-1], np.arange(5)))
    np.testing.assert_allclose(out["rf_x_deg"], 3.0, atol=1e-3)
    np.testing.assert_allclose(out["rf_y_deg"], -2.0, atol=1e-3)
    np.testing.assert_allclose(out["rf_width_deg"], sigmas, rtol=1e-3)
    np.testing.assert_allclose(out["rf_height_deg"], sigmas, rtol=1e-3)
    assert np.all(np.diff(out["rf_area_deg2"]) >= 0) and out["rf_area_deg2"].iloc[-1] > 100
    assert out["rf_fit_ok"].all() and out["rf_on_screen"].all()


def test_edge_rf_is_off_screen():
    grid_x, grid_y = np.meshgrid(GRID, GRID[::-1])
    edge = 1 + 4 * np.exp(-((grid_x - 45) ** 2 + grid_y**2) / (2 * 6.0**2))
    inner = 1 + 4 * np.exp(-((grid_x - 30) ** 2 + grid_y**2) / (2 * 6.0**2))
    out = rf_centres(RFMaps(np.stack([edge, inner]), GRID, GRID[::-1], np.array([1, 2])))
    assert not out.loc[1, "rf_on_screen"] and out.loc[2, "rf_on_screen"]


@pytest.mark.parametrize("method, tolerance", [("gaussian", 2.5), ("com", 5.0), ("peak", 5.0)])
def test_every_centre_method_is_within_half_a_grid_step(session, method, tolerance):
    table, counts = session
    out = rf_centres(rf_maps(table, counts), method=method)
    for k, (cx, cy) in enumerate(CENTRES):
        assert abs(out.loc[1000 + k, "rf_x_deg"] - cx) <= tolerance
        assert abs(out.loc[1000 + k, "rf_y_deg"] - cy) <= tolerance


def test_pvalue_reproducible_and_calibrated_under_the_null():
    table = gabor_table(n_repeats=5, seed=3)
    rng = np.random.default_rng(4)
    null = pd.DataFrame(rng.poisson(2.0, size=(len(table), 60)), index=table.index)
    a = rf_pvalues(table, null, n_shuffles=200, seed=5)
    b = rf_pvalues(table, null, n_shuffles=200, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 1 / 201
    assert (a < 0.05).mean() <= 0.15  # ~5% expected for untuned units
    assert 0.3 < np.median(a) < 0.7  # p is roughly uniform under the null


def test_silent_unit_gets_nan_and_no_rf(session):
    table, counts = session
    counts = counts.assign(**{"9999": 0})
    out = receptive_fields(table, counts, deg_to_px, n_shuffles=50).set_index("unit_id")
    row = out.loc["9999"]
    assert np.isnan(row["rf_p_value"]) and np.isnan(row["rf_x_deg"])
    assert not row["rf_significant"] and not row["has_rf"] and row["rf_area_deg2"] == 0


def test_blank_presentations_are_ignored(session):
    table, counts = session
    blank = pd.DataFrame({"orientation": [np.nan], "x_position": [np.nan],
                          "y_position": [np.nan]}, index=pd.Index([1], name=table.index.name))
    with_blank = pd.concat([blank, table])
    counts_blank = pd.concat([pd.DataFrame(50, index=blank.index, columns=counts.columns),
                              counts])
    np.testing.assert_array_equal(rf_maps(with_blank, counts_blank).maps,
                                  rf_maps(table, counts).maps)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t, c: (t.drop(columns="x_position"), c), "table: expected columns x_position"),
        (lambda t, c: (t, c.iloc[:-1]), "counts: expected the same index"),
        (lambda t, c: (t, -c), "counts: expected finite, non-negative"),
        (lambda t, c: (t, c.iloc[:, :0]), "counts: expected presentations x units"),
    ],
)
def test_bad_input_is_named(session, mutate, match):
    table, counts = mutate(*session)
    with pytest.raises(MeireportError, match=match):
        rf_maps(table, counts)


def test_bad_parameters_are_named(session):
    table, counts = session
    with pytest.raises(MeireportError, match="n_shuffles: expected an integer >= 1"):
        rf_pvalues(table, counts, n_shuffles=0)
    with pytest.raises(MeireportError, match="deg_to_px: expected a callable"):
        receptive_fields(table, counts, deg_to_px=None)
    with pytest.raises(MeireportError, match="method: expected 'gaussian', 'com' or 'peak'"):
        rf_centres(rf_maps(table, counts), method="gauss")


def test_rf_figure_has_one_labelled_panel_per_unit(session):
    from meireport.plots.select import plot_rf_maps

    table, counts = session
    maps = rf_maps(table, counts)
    rf = receptive_fields(table, counts, deg_to_px, n_shuffles=50)
    fig = plot_rf_maps(maps, rf, units=[1000, 1001, 2000], ncols=2)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3
    assert all(ax.get_xlabel() == "Azimuth (deg)" for ax in panels)
    assert all(ax.get_ylabel() == "Elevation (deg)" for ax in panels)
    cross = panels[0].lines[0]
    assert cross.get_xdata()[0] == pytest.approx(rf.set_index("unit_id").loc[1000, "rf_x_deg"])
    with pytest.raises(MeireportError, match="units: expected ids present in maps"):
        plot_rf_maps(maps, units=[12345])
