"""The reference against values worked out by hand and against NumPy's float64 statistics."""
import numpy as np
import pytest

from normfast import reference


def test_hand_values():
    mean, var = reference.moments([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert var == 1.25  # (2.25 + 0.25 + 0.25 + 2.25) / 4
    _, var1 = reference.moments([1.0, 2.0, 3.0, 4.0], ddof=1)
    assert var1 == pytest.approx(5.0 / 3.0, rel=1e-15)


def test_axes_keepdims_and_empty():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    mean, var = reference.moments(x, axis=(0, 2), keepdims=True)
    assert mean.shape == (1, 3, 1)
    np.testing.assert_allclose(mean.ravel(), x.mean(axis=(0, 2)), rtol=1e-15)
    np.testing.assert_allclose(var.ravel(), x.var(axis=(0, 2)), rtol=1e-15)
    mean, var = reference.moments(np.zeros((0, 3)), axis=0)
    assert mean.shape == (3,) and np.isnan(mean).all() and np.isnan(var).all()


@pytest.mark.parametrize("axis", [1, -1])
def test_switchable_norm_reduces_to_each_component(axis):
    """A dominant logit selects one set of statistics: instance, layer (= one group) or batch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5, 6)) * 3 + 2
    c = x.shape[axis]
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    big = [[60.0, 0, 0], [0, 60.0, 0], [0, 0, 60.0]]
    want = [reference.instance_norm(x, axis=axis)[0], reference.group_norm(x, 1, axis=axis),
            reference.batch_norm(x, training=True, axis=axis)[0]]
    for logits, expected in zip(big, want):
        y, _, _ = reference.switchable_norm(x, None, None, logits, logits, training=True, axis=axis)
        np.testing.assert_allclose(y, expected, rtol=1e-9, atol=1e-9)
    # inference takes the batch component from the running statistics
    y, _, _ = reference.switchable_norm(x, None, None, big[2], big[2], rm, rv, training=False, axis=axis)
    np.testing.assert_allclose(y, reference.batch_norm(x, rm, rv, axis=axis)[0], rtol=1e-9, atol=1e-9)
