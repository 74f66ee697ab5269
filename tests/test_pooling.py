"""scatter_mean_pool: both forms against a float64 Python-loop reference of the ScatterMeanPool contract."""

from __future__ import annotations

import pytest
import torch

from sg2v.models.pooling import scatter_mean_pool


def _reference(values, index, mask, num_segments):
    b, n, d = values.shape
    out = torch.zeros(b, num_segments, d, dtype=torch.float64)
    for i in range(b):
        for o in range(num_segments):
            rows = [values[i, k].double() for k in range(n)
                    if int(index[i, k]) == o and float(mask[i, k]) != 0]
            if rows:
                out[i, o] = torch.stack(rows).sum(0) / len(rows)
    return out


def _inputs(seed, b=4, n=12, d=5, o=6, index_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(b, n, d, generator=g)
    index = torch.randint(0, 3, (b, n), generator=g).to(index_dtype)  # few segments: many repeats
    index[:, n // 2:] = torch.randint(0, o, (b, n - n // 2), generator=g).to(index_dtype)
    mask = (torch.rand(b, n, generator=g) > 0.3).float()
    mask[1] = 0.0  # a wholly padded row (empty graph)
    mask[2, : n // 2] = 0.5  # non-binary mask values count as "real", unweighted
    return values, index, mask, o


@pytest.mark.parametrize("form", ["scatter", "onehot"])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(form, index_dtype, seed):
    values, index, mask, o = _inputs(seed, index_dtype=index_dtype)
    out = scatter_mean_pool(values, index, mask, o, form=form)
    ref = _reference(values, index, mask, o)
    assert out.shape == (4, o, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.all(out[1] == 0)  # all-padded row pools to zeros, not NaN


def test_forms_agree_and_backprop():
    values, index, mask, o = _inputs(7)
    v1 = values.clone().requires_grad_(True)
    v2 = values.clone().requires_grad_(True)
    a = scatter_mean_pool(v1, index, mask, o, form="scatter")
    b = scatter_mean_pool(v2, index, mask, o, form="onehot")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-5, atol=1e-6)
    assert torch.all(v1.grad[mask == 0] == 0)  # padded messages get no gradient


def test_float16_onehot():
    values, index, mask, o = _inputs(3)
    out = scatter_mean_pool(values.half(), index, mask, o, form="onehot")
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), _reference(values, index, mask, o), rtol=2e-3, atol=2e-3)


def test_unknown_form():
    values, index, mask, o = _inputs(0)
    with pytest.raises(ValueError, match="pooling form"):
        scatter_mean_pool(values, index, mask, o, form="plugin")
