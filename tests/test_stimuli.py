"""Model-space stimuli: geometry, image preparation, Gabor rendering (analytic properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meireport.errors import MeireportError
from meireport.stimuli import ScreenGeometry, parse_pair, prepare_image, render_gabor

G = ScreenGeometry()


@given(st.floats(-60, 60), st.floats(-40, 40))
def test_deg_px_roundtrip(x, y):
    col, row = G.deg_to_px(x, y)
    x2, y2 = G.px_to_deg(col, row)
    assert x2 == pytest.approx(x, abs=1e-9) and y2 == pytest.approx(y, abs=1e-9)


def test_up_is_smaller_row():
    _, row_up = G.deg_to_px(0, 10)
    _, row_down = G.deg_to_px(0, -10)
    assert row_up < G.centre_px[1] < row_down


def test_prepare_image_scaling_and_shape():
    u8 = np.tile(np.linspace(0, 255, 192).astype(np.uint8), (120, 1))
    img = prepare_image(u8)
    assert img.shape == (60, 96) and 0 <= img.min() < 0.02 and 0.98 < img.max() <= 1
    assert prepare_image(u8.astype(float)).max() == pytest.approx(img.max())
    rgb = np.stack([u8] * 3, axis=-1)
    np.testing.assert_allclose(prepare_image(rgb), img)
    with pytest.raises(MeireportError, match="image: expected a 2-D"):
        prepare_image(np.zeros(5))


def test_gabor_geometry():
    g = render_gabor(G, 15, 15, 0, 0.08, 20, contrast=0.8)
    col, row = G.deg_to_px(15, 15)
    energy = (g - 0.5) ** 2
    rr, cc = np.unravel_index(np.argmax(energy), g.shape)
    assert abs(rr - row) <= 1 and abs(cc - col) <= 1
    on_pixel = render_gabor(G, 15.75, 15.75, 0, 0.08, 20, contrast=0.8)  # centre on a pixel
    assert on_pixel.max() == pytest.approx(0.9)  # 0.5 + contrast / 2 at the peak
    # orientation 0: vertical bars, constant along a column near the centre
    c0 = render_gabor(G, 0, 0, 0, 0.08, 1000)  # a huge envelope: the carrier alone
    assert np.ptp(c0[25:35, 47]) < 0.02 and np.ptp(c0[29, 40:56]) > 0.3
    # rotating by 180 degrees gives the same cosine Gabor
    np.testing.assert_allclose(
        render_gabor(G, 0, 0, 30, 0.08, 20), render_gabor(G, 0, 0, 210, 0.08, 20), atol=1e-12
    )
    # spatial frequency: the carrier's FFT peak is at sf * deg_per_px cycles/px
    line = render_gabor(G, 0, 0, 0, 0.08, 1000)[30] - 0.5
    f = np.fft.rfftfreq(96)[np.argmax(np.abs(np.fft.rfft(line)))]
    assert f == pytest.approx(0.08 * 1.5, abs=1 / 96)


def test_parse_pair():
    assert parse_pair("[20.0, 20.0]") == 20.0
    assert parse_pair(b"[3.5, 1]") == 3.5
    with pytest.raises(MeireportError):
        parse_pair("abc")
