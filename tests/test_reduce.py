"""convnp.ops.reduce: per-channel sums by matrix-vector products equal NumPy's sums, in every layout."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.ops.reduce import channel_sums, sum_rows


def _layouts(x):
    """x as C-contiguous NCHW, as an NCHW view of channels-last memory, and as a strided slice."""
    last = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    yield "nchw", x
    yield "channels_last", np.moveaxis(last, -1, 1)
    wide = np.zeros((x.shape[0], x.shape[1] + 1) + x.shape[2:], x.dtype)
    wide[:, 1:] = x
    yield "strided", wide[:, 1:]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("shape", [(7, 3), (5, 6, 4, 4), (2, 16, 9, 7), (3, 4, 10), (1, 1, 1, 1), (0, 3, 2, 2)])
def test_channel_sums_equal_numpy_in_every_layout(shape, dtype, tol):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    axes = (0, *range(2, x.ndim))
    want = x.astype(np.float64).sum(axis=axes)
    for layout, a in _layouts(x):
        got = channel_sums(a)
        assert got.dtype == dtype and got.shape == (shape[1],), layout
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1, x.size), err_msg=layout)
        kept = channel_sums(a, keepdims=True)
        assert kept.shape == x.sum(axis=axes, keepdims=True).shape
        np.testing.assert_array_equal(kept.reshape(-1), got)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 300), cols=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_sum_rows_equals_numpy(rows, cols, seed):
    m = np.random.default_rng(seed).standard_normal((rows, cols))
    np.testing.assert_allclose(sum_rows(m), m.sum(axis=0), rtol=1e-12, atol=1e-12)
    ints = np.arange(rows * cols).reshape(rows, cols)
    np.testing.assert_array_equal(sum_rows(ints), ints.sum(axis=0))  # non-float: NumPy's own sum
