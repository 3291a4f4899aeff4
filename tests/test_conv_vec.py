"""Vectorised channel loads in the conv kernels (``VEC`` / ``VEC_W`` / ``VEC_DY``).

The launchers pass a vector width only where a tensor's channels are contiguous and its other strides and
the group width are multiples of it (:func:`channel_vec`); the kernels then rewrite those values as
``(v // VEC) * VEC`` so that Triton can prove the alignment. The values do not change, so a launch with the
vectors must give bit-identical results to one without (``VEC = 1``, the element-wise loads): checked here
under the interpreter on channels_last, NCHW and sliced inputs, grouped and dense, strided and fused.
Whether the loads really vectorise is a property of the compiled binary: ``tests/test_aot.py`` and the
``vector_loads`` / ``scalar_loads`` columns of ``python -m regnet_kernels aot``.
"""
import pytest
import torch

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.triton import conv

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter numerics (CPU)")

CL = torch.channels_last


def _cl(t):
    return t.contiguous(memory_format=CL)


def test_channel_vec():
    x = _cl(torch.zeros(2, 24, 5, 5, dtype=torch.bfloat16))
    assert conv.channel_vec(x) == 8 and conv.channel_vec(x, 24) == 8
    assert conv.channel_vec(x, 12) == 4 and conv.channel_vec(x, 3) == 1
    assert conv.channel_vec(x.float()) == 4  # 16 bytes of fp32
    assert conv.channel_vec(_cl(torch.zeros(2, 12, 5, 5, dtype=torch.bfloat16))) == 4
    assert conv.channel_vec(_cl(torch.zeros(2, 3, 5, 5))) == 1  # the stem
    assert conv.channel_vec(torch.zeros(2, 24, 5, 5)) == 1  # NCHW: channels not contiguous
    assert conv.channel_vec(x[:, 8:]) == 8  # a channel slice keeps the full pixel stride
    assert conv.channel_vec(x[:, :, :, ::2]) == 8 and conv.channel_vec(x[:, :, ::2, 1:]) == 8
    # 1x1 weights: size-1 dims do not count; 3x3 channels_last weights are contiguous along C_in/g
    assert conv.channel_vec(torch.zeros(16, 24, 1, 1, dtype=torch.bfloat16), 24) == 8
    assert conv.channel_vec(_cl(torch.zeros(16, 8, 3, 3, dtype=torch.bfloat16)), 8) == 8
    assert conv.channel_vec(torch.zeros(16, 8, 3, 3, dtype=torch.bfloat16), 8) == 1


def _both(fn):
    """``fn()`` with the launchers' vector widths, then with every width forced to 1."""
    got = fn()
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(conv, "channel_vec", lambda *a, **k: 1)
        ref = fn()
    finally:
        mp.undo()
    return got, ref


def _equal(got, ref):
    for g, r in zip(got, ref):
        if g is None:
            assert r is None
            continue
        assert g.dtype == r.dtype and g.shape == r.shape
        assert torch.equal(g, r) or torch.equal(g.nan_to_num(), r.nan_to_num())


# (k, stride, groups, cin, cout, layout): cin/g 24 and 8 vectorise by 8 in bf16, 12 by 4, 3 (stem) never
CASES = [
    (3, 1, 5, 40, 40, "cl"),  # 8 per group
    (3, 2, 2, 48, 24, "cl"),  # 24 per group, strided
    (3, 1, 2, 24, 24, "cl"),  # 12 per group
    (1, 1, 1, 40, 24, "cl"),  # dense 1x1
    (1, 2, 1, 24, 16, "slice"),  # strided 1x1 on a channel slice of a wider tensor (storage offset)
    (3, 2, 1, 3, 16, "cl"),  # stem
    (3, 1, 5, 40, 40, "nchw"),
]


def _inputs(k, stride, groups, cin, cout, layout, dtype, gen):
    n, h = 2, 7
    if layout == "slice":
        x = _cl(torch.randn(n, cin + 16, h, h, generator=gen))[:, 8:8 + cin]
    else:
        x = torch.randn(n, cin, h, h, generator=gen)
        x = _cl(x) if layout == "cl" else x
    x = x.to(dtype)
    w = (torch.randn(cout, cin // groups, k, k, generator=gen) * 0.3).to(dtype)
    if layout != "nchw":
        w = _cl(w)
    return x, w


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}s{c[1]}g{c[2]}c{c[3]}-{c[5]}")
def test_vector_loads_change_no_bits(case, dtype):
    k, stride, groups, cin, cout, layout = case
    gen = torch.Generator().manual_seed(cin * 7 + cout + k)
    x, w = _inputs(k, stride, groups, cin, cout, layout, dtype, gen)
    pad = k // 2
    n = x.shape[0]
    pre = (torch.randn(cin, generator=gen), torch.rand(cin, generator=gen) + 0.5, torch.randn(cin, generator=gen))
    gate = torch.rand(n, cin, generator=gen)
    bn = (torch.randn(cout, generator=gen), torch.rand(cout, generator=gen) + 0.5, torch.rand(cout, generator=gen),
          torch.randn(cout, generator=gen), 1e-5)
    ho = (x.shape[2] + 2 * pad - k) // stride + 1

    def fwd():
        res = torch.randn(n, cout, ho, ho, generator=torch.Generator().manual_seed(1)).to(dtype)
        res = _cl(res) if layout != "nchw" else res
        return conv.conv2d_fwd(x, w, stride, pad, groups, pre_affine=pre, pre_act=Act.RELU, gate=gate, post_bn=bn,
                               residual=res, act=Act.RELU, stats=True)[:3]

    _equal(*_both(fwd))
    y = conv.conv2d_fwd(x, w, stride, pad, groups)[0]
    dy = torch.randn(y.shape, generator=gen).to(dtype)
    dy = _cl(dy) if layout != "nchw" else dy
    like = x if layout != "slice" else _cl(torch.empty(x.shape, dtype=dtype))
    _equal(*_both(lambda: (conv.conv2d_dgrad(dy, w, x.shape, stride, pad, groups, like, add=like),)))
    _equal(*_both(lambda: (conv.conv2d_wgrad(x, dy, w.shape, stride, pad, groups, pre_affine=pre, pre_act=Act.RELU,
                                             gate=gate),)))
