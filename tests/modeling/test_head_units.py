"""Box conventions, ATSS, NMS, scoring and losses on hand-worked cases."""

import math

import pytest
import torch

from fiber_det.modeling.head import (
    BoxCoder,
    atss_assign,
    classwise_nms,
    clip_boxes,
    giou_loss,
    label_scores,
    make_anchors,
    pairwise_iou,
    token_sigmoid_focal_loss,
)
from fiber_det.modeling.head.dyhead import DyReLU, _reinterpret


def test_legacy_anchors_are_detectron_cell_anchors():
    # stride 8, size 64: centre (8-1)/2 = 3.5, half extent (64-1)/2 = 31.5 -> [-28, 35]
    a = make_anchors([(2, 3)], [8], [64], plus_one=True)[0]
    assert a[0].tolist() == [-28.0, -28.0, 35.0, 35.0]
    assert a[1].tolist() == [-20.0, -28.0, 43.0, 35.0]  # next column: +8 in x
    assert a[3].tolist() == [-28.0, -20.0, 35.0, 43.0]  # next row
    modern = make_anchors([(1, 1)], [8], [64], plus_one=False)[0]
    assert modern[0].tolist() == [-28.0, -28.0, 36.0, 36.0]  # centre 4, half 32


@pytest.mark.parametrize("plus_one", [True, False])
def test_box_coder_roundtrip(plus_one):
    coder = BoxCoder((10, 10, 5, 5), plus_one=plus_one)
    anchors = torch.tensor([[0.0, 0.0, 63.0, 63.0], [10.0, 20.0, 40.0, 90.0]])
    gt = torch.tensor([[5.0, 7.0, 50.0, 30.0], [0.0, 0.0, 100.0, 100.0]])
    assert torch.allclose(coder.decode(coder.encode(gt, anchors), anchors), gt, atol=1e-4)


def test_legacy_box_coder_values():
    coder = BoxCoder((10, 10, 5, 5), plus_one=True)
    anchor = torch.tensor([[0.0, 0.0, 63.0, 63.0]])  # 64 x 64 with +1, centre 31.5
    gt = torch.tensor([[0.0, 0.0, 127.0, 31.0]])  # 128 x 32, centre (63.5, 15.5)
    d = coder.encode(gt, anchor)[0]
    # dx = 10 * (63.5 - 31.5) / 64 = 5; dy = 10 * (15.5 - 31.5) / 64 = -2.5
    # dw = 5 * log(128 / 64); dh = 5 * log(32 / 64)
    assert d.tolist() == pytest.approx([5.0, -2.5, 5 * math.log(2), 5 * math.log(0.5)])


def test_legacy_iou_counts_the_extra_pixel():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 pixels (legacy)
    b = torch.tensor([[5.0, 0.0, 14.0, 9.0]])  # 10 x 10, overlap 5 x 10
    assert pairwise_iou(a, b, plus_one=True).item() == pytest.approx(50 / 150)
    # continuous: 9 x 9 boxes overlapping 4 x 9
    assert pairwise_iou(a, b, plus_one=False).item() == pytest.approx(36 / (81 + 81 - 36))


def test_classwise_nms_legacy_threshold_and_original_order():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 9.0, 9.0],  # 0: label 0, score .5
            [3.0, 0.0, 12.0, 9.0],  # 1: label 0, score .9; legacy IoU with 0 = 70/130 = 0.538
            [
                2.0,
                0.0,
                11.0,
                9.0,
            ],  # 2: label 0, score .8; IoU with 1 = 90/110 = 0.818 -> suppressed
            [0.0, 0.0, 9.0, 9.0],  # 3: label 1, same box as 0 but another label -> kept
        ]
    )
    scores = torch.tensor([0.5, 0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 0, 1])
    keep = classwise_nms(boxes, scores, labels, 0.6, plus_one=True)
    assert keep.tolist() == [0, 1, 3]  # 0 survives (0.538 <= 0.6); ascending index order
    keep_strict = classwise_nms(boxes, scores, labels, 0.5, plus_one=True)
    assert keep_strict.tolist() == [1, 3]


def test_clip_legacy_and_continuous():
    b = torch.tensor([[-5.0, -1.0, 120.0, 90.0]])
    assert clip_boxes(b, 80, 100, plus_one=True).tolist() == [[0.0, 0.0, 99.0, 79.0]]
    assert clip_boxes(b, 80, 100, plus_one=False).tolist() == [[0.0, 0.0, 100.0, 80.0]]


def test_label_score_is_the_mean_token_probability():
    probs = torch.tensor([[0.2, 0.4, 0.9, 0.0], [1.0, 0.0, 0.5, 0.5]])
    pmap = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    s = label_scores(probs, pmap)
    assert s.flatten().tolist() == pytest.approx([0.3, 0.9, 0.0, 0.5, 0.5, 0.0])


def test_atss_picks_closest_candidates_above_mean_plus_std():
    # one level, 4 anchors on a line; one GT around anchor 1
    anchors = [torch.tensor([[0.0, 0, 10, 10], [8, 0, 18, 10], [30, 0, 40, 10], [60, 0, 70, 10]])]
    gt = torch.tensor([[7.0, 0.0, 19.0, 10.0]])
    # topk=3 closest centres: anchors 1, 0, 2; IoUs (continuous) 10/12, 3/19, 0
    # mean + std of [0.833, 0.158, 0] = 0.330 + 0.442 = 0.772 -> only anchor 1
    matched = atss_assign(anchors, gt, topk=3, plus_one=False)
    assert matched.tolist() == [-1, 0, -1, -1]
    assert atss_assign(anchors, torch.zeros(0, 4), topk=3).tolist() == [-1, -1, -1, -1]


@pytest.mark.parametrize("cx,expected", [(10.02, 0), (10.005, -1)])
def test_atss_anchor_centre_must_be_inside_the_box(cx, expected):
    """One overlapping anchor among 9 candidates, 8 of IoU 0: the threshold mean + std is
    iou/9 + iou/3 < iou, so the anchor is positive iff its centre is > 0.01 inside the GT."""
    target = [cx - 10.0, 0.0, cx + 10.0, 20.0]
    far = [[100.0 + 30 * i, 100.0, 120.0 + 30 * i, 120.0] for i in range(8)]
    anchors = [torch.tensor([target] + far)]
    gt = torch.tensor([[10.0, 0.0, 30.0, 20.0]])
    assert atss_assign(anchors, gt, topk=9, plus_one=False)[0].item() == expected


def test_token_focal_loss_matches_the_formula_and_ignores_padding():
    logits = torch.tensor([[[2.0, -1.0, 5.0]]])
    targets = torch.tensor([[[1.0, 0.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])  # third token is padding
    p1, p2 = torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(-1.0))
    # positive: -alpha (1-p)^2 log p ; negative: -(1-alpha) p^2 log(1-p)
    expected = -0.25 * (1 - p1) ** 2 * torch.log(p1) - 0.75 * p2**2 * torch.log(1 - p2)
    got = token_sigmoid_focal_loss(logits, targets, mask, 0.25, 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_giou_loss_values():
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert giou_loss(same, same, torch.ones(1)).item() == pytest.approx(0.0, abs=1e-6)
    # disjoint unit squares 1 apart: IoU 0, enclosing 3 x 1, union 2 -> GIoU = -1/3
    a, b = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert giou_loss(a, b, torch.full((1,), 2.0)).item() == pytest.approx(2 * (1 + 1 / 3), rel=1e-5)
    # zero weights: plain sum, as the official code
    assert giou_loss(a, b, torch.zeros(1)).item() == pytest.approx(1 + 1 / 3, rel=1e-5)


def test_dyrelu_is_identity_like_at_midpoint_coefficients():
    m = DyReLU(8)
    with torch.no_grad():
        m.fc2.weight.zero_()
        m.fc2.bias.zero_()  # h_sigmoid(0) = 0.5 -> a1 = 1, a2 = 0, b = 0 -> max(x, 0)
    x = torch.randn(2, 8, 3, 3)
    assert torch.allclose(m(x), x.clamp(min=0))


def test_offset_reinterpretation_reads_flat_memory():
    t = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    r = _reinterpret(t, torch.Size([2, 2]))
    assert r.shape == (2, 3, 2, 2)
    assert r[1].flatten().tolist() == t[1].flatten()[:12].tolist()


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("band_rows", [None, 3, 1])
@pytest.mark.parametrize("size,stride", [((20, 24), 1), ((20, 24), 2), ((5, 7), 2), ((3, 3), 1)])
def test_grid_sample_deform_conv_equals_torchvision(size, stride, band_rows, recompute):
    """Values and gradients, with offsets large enough to leave the image; whole images and
    cache-blocked bands of output rows (3 rows leaves an uneven last band); columns kept by
    autograd or recomputed in the backward pass."""
    from torchvision.ops import deform_conv2d

    from fiber_det.modeling.head.deform_conv import deform_conv3x3_grid_sample

    inputs, wo = _dcn_inputs(size, stride)
    x, off, mask, weight, bias = inputs
    ref = deform_conv2d(x, off, weight, bias, stride=stride, padding=1, mask=mask)
    tile = None if band_rows is None else 8 * 9 * wo * band_rows
    got = deform_conv3x3_grid_sample(
        x, off, mask, weight, bias, stride, tile_elements=tile, recompute=recompute
    )
    assert torch.allclose(got, ref, atol=1e-4)
    grads_ref = torch.autograd.grad(ref.square().sum(), inputs)
    grads_got = torch.autograd.grad(got.square().sum(), inputs)
    for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), grads_got, grads_ref):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), name


def _dcn_inputs(size, stride, channels=8):
    g = torch.Generator().manual_seed(7)
    h, w = size
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(2, channels, h, w, generator=g, requires_grad=True)
    off = (torch.randn(2, 18, ho, wo, generator=g) * 3).requires_grad_()
    mask = torch.rand(2, 9, ho, wo, generator=g, requires_grad=True)
    weight = torch.randn(6, channels, 3, 3, generator=g, requires_grad=True)
    bias = torch.randn(6, generator=g, requires_grad=True)
    return (x, off, mask, weight, bias), wo


@pytest.mark.parametrize("band_rows", [None, 2])
@pytest.mark.parametrize("size,stride", [((20, 24), 1), ((9, 11), 2)])
def test_deform_conv_recomputed_columns_give_the_same_output_and_gradients(size, stride, band_rows):
    """The recomputing backward (DeformConv3x3Function) against autograd through the same tiles:
    identical outputs, gradients equal up to float summation order (relative 1e-6)."""
    from fiber_det.modeling.head.deform_conv import deform_conv3x3_grid_sample

    inputs, wo = _dcn_inputs(size, stride, channels=16)
    tile = None if band_rows is None else 16 * 9 * wo * band_rows
    outs, grads = [], []
    for recompute in (False, True):
        out = deform_conv3x3_grid_sample(*inputs, stride, tile_elements=tile, recompute=recompute)
        outs.append(out)
        upstream = torch.linspace(-1, 1, out.numel()).view_as(out)  # non-uniform output grads
        grads.append(torch.autograd.grad((out * upstream).sum(), inputs))
    assert torch.equal(outs[0], outs[1])
    for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), grads[1], grads[0]):
        scale = b.abs().max()
        assert (a - b).abs().max() <= 1e-6 * scale, name


def test_deform_conv_recompute_keeps_no_columns_for_backward():
    """What autograd keeps: the recomputing function saves only its inputs (no (9C, HW) column
    tensor), the plain path saves the columns of every tile."""
    from fiber_det.modeling.head.deform_conv import deform_conv3x3_grid_sample

    inputs, _ = _dcn_inputs((20, 24), 1, channels=16)
    x = inputs[0]
    columns = 16 * 9 * 20 * 24

    def saved_elements(recompute):
        total = []

        def pack(t):
            total.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            deform_conv3x3_grid_sample(*inputs, 1, recompute=recompute)
        return sum(total)

    assert saved_elements(False) >= 2 * columns
    assert saved_elements(True) < columns / 2 + x.numel()
