import numpy as np
import pytest

from convnp.errors import ConfigError, ShapeError
from convnp.ops.im2col import col2im, im2col, output_hw, output_size, pair


@pytest.mark.parametrize("size,f,s,p,d,expected", [
    (227, 11, 4, 0, 1, 55),   # AlexNet CONV1
    (5, 3, 1, 1, 1, 5),       # the notes' 1-D example, S=1
    (5, 3, 2, 1, 1, 3),       # ... and S=2
    (224, 2, 2, 0, 1, 112),   # POOL F=2 S=2
    (7, 3, 1, 0, 2, 3),       # dilation 2 spans 5
])
def test_output_size_notes(size, f, s, p, d, expected):
    assert output_size(size, f, s, p, d) == expected


def test_notes_non_integer_example_message():
    with pytest.raises(ShapeError) as e:
        output_size(10, 3, 2, 0, layer="Conv2d(3->8, k=3, s=2, p=0)", input_desc="10x10")
    msg = str(e.value)
    assert "Conv2d(3->8, k=3, s=2, p=0)" in msg and "(10-3+2*0)/2+1 = 4.5" in msg and "10x10" in msg


@pytest.mark.parametrize("size,f,s,p,rounding,expected", [
    (10, 3, 2, 0, "floor", 4), (10, 3, 2, 0, "ceil", 5),
    (112, 3, 2, 0, "ceil", 56), (5, 2, 2, 1, "ceil", 3),  # ceil never starts a window in the padding
])
def test_rounding_modes_match_pytorch(size, f, s, p, rounding, expected):
    assert output_size(size, f, s, p, 1, rounding) == expected


def test_too_small_and_bad_config():
    with pytest.raises(ShapeError, match="too small"):
        output_size(2, 5, 1, 1)
    with pytest.raises(ConfigError):
        pair(0, "stride")
    with pytest.raises(ConfigError):
        output_size(5, 3, 1, 0, rounding="round")


def test_col2im_is_adjoint_of_im2col(rng):
    # <im2col(x), g> == <x, col2im(g)> for every geometry, including ceil-mode overhang.
    for (k, s, p, d, rnd) in [((3, 2), (2, 1), (1, 0), (1, 2), "floor"), ((3, 3), (2, 2), (0, 0), (1, 1), "ceil")]:
        x = rng.standard_normal((2, 3, 9, 8))
        out = output_hw((9, 8), k, s, p, d, rnd)
        cols = im2col(x, k, s, p, d, out)
        g = rng.standard_normal(cols.shape)
        dx = col2im(g, x.shape, k, s, p, d)
        assert dx.shape == x.shape
        np.testing.assert_allclose(np.sum(cols * g), np.sum(x * dx), rtol=1e-10)
