"""Eq. 1-9 on hand-made tensors."""

import pytest
import torch

from esva.config import AlignConfig, MsfeConfig
from esva.losses import alignment_objective, supervised_contrastive, total_loss
from esva.models.align import Aligner, centre_normalise, lengths_to_mask, shift_scores, subframe_argmin, to_rate
from esva.models.msfe import MSFE, kernel_sizes, receptive_field


def test_msfe_disabled_is_an_exact_identity():
    m = MSFE(16, MsfeConfig(enabled=False))
    x = torch.randn(2, 30, 16)
    assert torch.equal(m(x, torch.ones(2, 30, dtype=torch.bool)), x)


def test_msfe_kernels_weights_and_residual():
    assert kernel_sizes(3, None) == (3, 7, 15) and kernel_sizes(1, (5, 9)) == (5, 9)
    with pytest.raises(ValueError, match="odd"):
        kernel_sizes(2, (4,))
    assert receptive_field(MsfeConfig(scales=2, dilation=2)) == 13
    torch.manual_seed(0)
    m = MSFE(16, MsfeConfig(scales=4, dropout=0.0)).eval()
    assert torch.allclose(m.scale_weights.sum(), torch.tensor(1.0)) and len(m.scale_weights) == 4
    x = torch.randn(2, 30, 16)
    mask = torch.ones(2, 30, dtype=torch.bool)
    assert torch.allclose(m(x, mask), x)  # zero-initialised output layer: starts as the residual identity
    torch.nn.init.normal_(m.out.weight)
    y = m(x, mask)
    # eq. 1 by hand: x + W_out(gelu(sum_i w_i conv_i(W_in x)))
    h = m.inp(x).transpose(1, 2)
    mixed = sum(w * c(h) for w, c in zip(m.scale_weights, m.branches))
    torch.testing.assert_close(y, x + m.out(torch.nn.functional.gelu(mixed.transpose(1, 2))))


def test_msfe_padding_does_not_leak():
    torch.manual_seed(1)
    m = MSFE(8, MsfeConfig(scales=3, dropout=0.0)).eval()
    torch.nn.init.normal_(m.out.weight)
    a, b = torch.randn(20, 8), torch.randn(35, 8)
    batch = torch.zeros(2, 35, 8)
    batch[0, :20], batch[1] = a, b
    batch[0, 20:] = 99.0  # garbage in the padding
    mask = lengths_to_mask(torch.tensor([20, 35]), 35)
    out = m(batch, mask)
    alone = m(a[None], torch.ones(1, 20, dtype=torch.bool))
    torch.testing.assert_close(out[0, :20], alone[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[0, 20:], torch.zeros(15, 8))


def test_contrastive_loss_decreases_on_separable_data_and_handles_singletons():
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 3
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    x = centres[labels] + 0.3 * torch.randn(9, 8)
    proj = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(proj.parameters(), lr=0.1)
    losses = []
    for _ in range(60):
        loss = supervised_contrastive(proj(x), labels, tau=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # with 2 positives per anchor the floor is log(2) ~ 0.69 (perfect separation)
    assert losses[-1] < losses[0] - 0.2 and losses[-1] < 0.9
    single = supervised_contrastive(torch.randn(4, 4), torch.tensor([0, 0, 1, 2]), 0.1)  # classes 1, 2: one member
    assert torch.isfinite(single)
    none = supervised_contrastive(torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 2]), 0.1)
    assert float(none) == 0.0
    none.backward()  # no positive pair at all: zero with a graph


def test_contrastive_matches_a_hand_computation():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    tau = 0.5
    # anchors 0 and 1: positive sim 1, negative sim 0 -> -log(e^2 / (e^2 + e^0)); anchor 2 has no positive
    expected = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1))
    torch.testing.assert_close(supervised_contrastive(z, labels, tau), expected)


def _shifted_pair(shifts, t=60, d=8, seed=0):
    torch.manual_seed(seed)
    a = centre_normalise(torch.randn(len(shifts), t, d), torch.ones(len(shifts), t, dtype=torch.bool))
    v = torch.zeros_like(a)
    for i, s in enumerate(shifts):  # v(t + s) = a(t): the video lags by s frames
        for k in range(t):
            if 0 <= k - s < t:
                v[i, k] = a[i, k - s]
    return a, v


def test_known_shift_is_recovered_exactly():
    shifts = [3, -4, 0, 6]
    a, v = _shifted_pair(shifts)
    m = torch.ones(4, 60, dtype=torch.bool)
    d_local, c_global, count = shift_scores(a, v, m, m, k=7, window=8)
    obj = alignment_objective(d_local, c_global, 1.0, 1.0)  # eq. 8
    assert (obj.argmin(-1) - 7).tolist() == shifts  # eq. 9
    torch.testing.assert_close(subframe_argmin(obj, count > 0) - 7, torch.tensor(shifts, dtype=torch.float32), atol=0.05, rtol=0)
    # at the true offset the local distance is 0 and the correlation 1
    for i, s in enumerate(shifts):
        assert float(d_local[i, s + 7]) < 1e-3 and abs(float(c_global[i, s + 7]) - 1) < 1e-5


def test_alignment_objective_is_eq_8():
    d, c = torch.tensor([[0.5, 0.2]]), torch.tensor([[0.1, 0.9]])
    torch.testing.assert_close(alignment_objective(d, c, 2.0, 3.0), 2.0 * d - 3.0 * c)
    torch.testing.assert_close(total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0), 0.5, 0.25),
                               torch.tensor(3.0))  # eq. 7: 1 + 0.5*2 + 0.25*4


def test_padding_masks_in_alignment():
    a, v = _shifted_pair([2, 2], t=50)
    m_full = torch.ones(1, 50, dtype=torch.bool)
    alone = shift_scores(a[:1, :30], v[:1, :30], m_full[:, :30], m_full[:, :30], 5, 8)
    ap, vp = a.clone(), v.clone()
    ap[0, 30:], vp[0, 30:] = 7.0, -3.0  # garbage beyond the clip's end
    mask = lengths_to_mask(torch.tensor([30, 50]), 50)
    batch = shift_scores(ap * mask[..., None], vp * mask[..., None], mask, mask, 5, 8)
    for x, y in zip(alone, batch):
        torch.testing.assert_close(x[0], y[0], atol=1e-5, rtol=1e-5)


def test_soft_shift_moves_the_video_onto_the_audio():
    a, v = _shifted_pair([3, -2], t=40)
    p = torch.zeros(2, 11)
    p[0, 5 + 3], p[1, 5 - 2] = 1.0, 1.0
    out, valid = Aligner.shift_video(v, torch.ones(2, 40, dtype=torch.bool), p, 5, 40)
    torch.testing.assert_close(out[0, :37], a[0, :37], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, 2:], a[1, 2:], atol=1e-5, rtol=0)


def test_aligner_outputs_and_gradients():
    torch.manual_seed(0)
    al = Aligner(16, 8, AlignConfig(max_shift=4, window=4))
    a, v = torch.randn(3, 30, 16, requires_grad=True), torch.randn(3, 30, 8)
    m = torch.ones(3, 30, dtype=torch.bool)
    out = al(a, v, m, m)
    assert out["objective"].shape == (3, 9) and torch.allclose(out["p"].sum(-1), torch.ones(3))
    loss = al.expected_objective(out) + al.cross_clip_contrastive(out, m, m, 0.1)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_rate_conversion():
    x = torch.arange(12.0).view(1, 12, 1)
    y, n = to_rate(x, torch.tensor([12]), 50.0, 25.0)
    assert n.tolist() == [6] and y[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5, 8.5, 10.5]
    z, m = to_rate(x, torch.tensor([12]), 30.0, 25.0)
    assert m.tolist() == [10] and z.shape == (1, 10, 1)


@pytest.mark.parametrize("cfg", [MsfeConfig(scales=3, dropout=0.0), MsfeConfig(scales=4, dilation=2, dropout=0.0),
                                 MsfeConfig(kernels=(1, 5, 9), dropout=0.0)])
def test_msfe_fused_convolution_is_eq1_branch_by_branch(cfg):
    """forward runs one convolution with the weighted, zero-padded kernels; it equals the convolutions run
    one per scale and summed with their weights (eq. 1), outputs and gradients, in fp32 and under bf16 autocast."""
    torch.manual_seed(3)
    m = MSFE(12, cfg).eval()
    with torch.no_grad():
        m.scale_logits.normal_()  # unequal scale weights
    h = torch.randn(3, cfg.hidden, 41)
    y_fused = torch.nn.functional.conv1d(h, *m.fused_kernel(), padding=m.pad, dilation=m.dilation)
    y_branch = m.branchwise(h)
    torch.testing.assert_close(y_fused, y_branch, atol=1e-5, rtol=1e-5)
    g_fused = torch.autograd.grad(y_fused.square().sum(), [m.scale_logits, m.branches[0].weight])
    g_branch = torch.autograd.grad(m.branchwise(h).square().sum(), [m.scale_logits, m.branches[0].weight])
    for a, b in zip(g_fused, g_branch):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", torch.bfloat16):
        yb = torch.nn.functional.conv1d(h, *m.fused_kernel(), padding=m.pad, dilation=m.dilation)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y_branch, atol=0.1, rtol=0.05)
