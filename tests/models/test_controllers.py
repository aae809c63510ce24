"""Eq. 4 per window, tau*(t), and the alignment controllers on hand-made sequences."""

from __future__ import annotations

import pytest
import torch

from esva.config import AlignConfig
from esva.models.align import Aligner, centre_scale, window_scores, window_to_frames
from esva.models.controllers import (CONTROLLERS, Backstepping, Fixed, Fuzzy, Neural, fit_neural, make,
                                     oscillations, tracking_error)

K = 8
S = 2 * K + 1
TAUS = torch.arange(-K, K + 1, dtype=torch.float32)


def _piecewise(shift_of_frame, t=160, d=8, seed=0, scale=True):
    """Audio a and video v with v(s + shift(s)) = a(s): the video lags by shift(s) frames at audio frame s."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1, t, d, generator=g)
    v = torch.randn(1, t, d, generator=g) * 0.05
    for s in range(t):
        j = s + shift_of_frame(s)
        if 0 <= j < t:
            v[0, j] = a[0, s]
    m = torch.ones(1, t, dtype=torch.bool)
    return (centre_scale(a, m), centre_scale(v, m), m) if scale else (a, v, m)


def test_eq4_windows_recover_a_known_piecewise_offset():
    """Best offset per window: +3 frames for the first 80 audio frames, -2 after; the clip-level argmin sees one."""
    a, v, m = _piecewise(lambda s: 3 if s < 80 else -2)
    sc = window_scores(a, v, m, m, K, window=8, hop=4)
    best = sc["d_win"][0].masked_fill(~sc["win_valid"][0], float("inf")).argmin(0) - K  # (N,), offsets with pairs
    starts = torch.arange(best.shape[0]) * 4
    first = [int(b) for b, s0 in zip(best, starts) if s0 + 8 <= 76]
    second = [int(b) for b, s0 in zip(best, starts) if s0 >= 84 and s0 + 8 <= 150]
    assert first and second and set(first) == {3} and set(second) == {-2}
    # the whole clip's D_local has one minimum: the per-clip estimate cannot follow the change
    assert int(sc["d_local"][0].argmin()) - K in (3, -2)


def test_local_distance_on_unnormalised_vectors_is_not_a_monotone_transform_of_the_global_correlation():
    """Directions agree at +3, sizes at -2: D_local (`distance`, unnormalised) and C_global (normalised) pick
    different offsets, so alpha and beta weigh different evidence (unit vectors would tie them: D = sqrt(2 - 2 cos))."""
    t, d = 160, 8
    g = torch.Generator().manual_seed(1)
    dirs = torch.nn.functional.normalize(torch.randn(t, d, generator=g), dim=-1)
    size = torch.where(torch.rand(t, generator=g) < 0.2, torch.tensor(6.0), torch.tensor(0.3))
    a = (dirs * size[:, None])[None]
    v = torch.zeros(1, t, d)
    for s in range(t):
        if 0 <= s + 3 < t:
            v[0, s + 3] += dirs[s] * 0.3  # the direction of a(s) at s + 3, small
        if 0 <= s - 2 < t:
            v[0, s - 2] += torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0) * size[s]  # a's size at s - 2
    m = torch.ones(1, t, dtype=torch.bool)
    sc = window_scores(a, v, m, m, K, window=8, hop=4)
    assert int(sc["c_global"][0].argmax()) - K == 3
    assert int(sc["d_local"][0].argmin()) - K == -2
    un = window_scores(torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(v, dim=-1), m, m, K, 8, 4)
    assert int(un["d_local"][0].argmin()) == int(un["c_global"][0].argmax())  # unit vectors: tied


def test_local_correlation_is_not_a_monotone_transform_of_the_global_correlation():
    """A slow, large component agrees at +3 frames, fast small ones at -2: C_global (every pair of the clip,
    normalised per frame) follows the slow component, D_local (`correlation`: each window centred on its own
    means) the fast ones, so the two terms pick different offsets and alpha and beta weigh different evidence."""
    t, d = 200, 8
    g = torch.Generator().manual_seed(1)
    fast = torch.randn(t, d, generator=g) * 0.5
    level = torch.randn(t // 40 + 1, generator=g).repeat_interleave(40)[:t] * 8.0  # steps every 40 frames
    slow = torch.zeros(t, d)
    slow[:, 0] = level
    a = (fast + slow)[None]
    v = torch.randn(1, t, d, generator=g) * 0.05
    for s in range(t):
        if 0 <= s - 2 < t:
            v[0, s - 2] += fast[s]  # the fast part of a(s) at s - 2
        if 0 <= s + 3 < t:
            v[0, s + 3] += slow[s]  # the slow part at s + 3
    m = torch.ones(1, t, dtype=torch.bool)
    a, v = centre_scale(a, m), centre_scale(v, m)
    sc = window_scores(a, v, m, m, K, window=8, hop=4, local="correlation")
    assert int(sc["c_global"][0].argmax()) - K == 3
    assert int(sc["d_local"][0].argmin()) - K == -2
    # and the weights matter: alpha alone picks the fast agreement, beta alone the slow one
    obj = lambda al, be: al * sc["d_local"][0] - be * sc["c_global"][0]  # noqa: E731
    assert int(obj(1.0, 0.0).argmin()) - K == -2 and int(obj(0.0, 1.0).argmin()) - K == 3


def _sequence(truth: torch.Tensor, noise: float = 0.0, glob: float | None = None, seed: int = 0):
    """Hand-made eq. 4 curves: window i's distance is a V around truth_i (slope 0.1 per frame) plus noise;
    the clip's correlation peaks at `glob` (default: the mean offset)."""
    g = torch.Generator().manual_seed(seed)
    n = truth.shape[0]
    d = 0.1 * (TAUS[None, :] - truth[:, None]).abs() + noise * torch.rand(n, S, generator=g)
    centre = float(truth.mean()) if glob is None else glob
    c = 1.0 - 0.05 * (TAUS - centre).abs()
    return d[None], c[None], torch.ones(1, n, S, dtype=torch.bool)


def _run(name_or_ctrl, d, c, valid):
    ctrl = make(name_or_ctrl) if isinstance(name_or_ctrl, str) else name_or_ctrl
    with torch.no_grad():
        return ctrl(d, c, valid, 1.0, 1.0, 0.02)


def test_every_controller_holds_a_constant_offset_without_oscillating():
    truth = torch.full((24,), 3.0)
    d, c, valid = _sequence(truth)
    for name in CONTROLLERS:
        out = _run(name, d, c, valid)
        assert out.p.shape == (1, 24, S) and torch.allclose(out.p.sum(-1), torch.ones(1, 24))
        assert float(tracking_error(out.tau[:, 2:], truth[None, 2:])) < 0.3, name
        assert int(oscillations(out.tau, truth[None])[0]) == 0, name


def test_every_controller_follows_a_step_within_a_bounded_number_of_windows():
    truth = torch.tensor([2.0] * 12 + [-3.0] * 16)
    d, c, valid = _sequence(truth)
    for name in CONTROLLERS:
        tau = _run(name, d, c, valid).tau[0]
        assert (tau[3:12] - 2.0).abs().max() < 0.6, name  # settled before the step (a tracker starts from the clip)
        settled = [i for i in range(12, 28) if all(abs(float(tau[j]) + 3.0) < 0.6 for j in range(i, 28))]
        assert settled and settled[0] - 12 <= 6, (name, tau.tolist())
        assert int(oscillations(tau[None], truth[None])[0]) <= 1, name


def test_fuzzy_tracks_a_drift_that_the_fixed_weights_pull_towards_the_clips_mean():
    """A linear drift -5 -> +5 frames over 21 windows, with a global term as strong as the local one: fixed
    weights bias every window towards the clip's offset; the fuzzy rules drop beta where the local evidence is
    confident and disagrees, and backstepping follows the measured drift."""
    truth = torch.linspace(-5, 5, 21)
    d, c, valid = _sequence(truth, glob=0.0)
    c = 1.0 - 0.12 * (TAUS - 0.0).abs()[None]  # a strong global pull
    err = {n: float(tracking_error(_run(n, d, c, valid).tau, truth[None])) for n in ("fixed", "fuzzy", "backstepping")}
    assert err["fixed"] > 1.0
    assert err["fuzzy"] < 0.5 * err["fixed"], err
    assert err["backstepping"] < err["fixed"], err


def test_uncertain_windows_lean_on_the_global_term():
    """Flat (noisy) local curves in the middle: fuzzy raises beta and T there, so those windows go to the clip's
    offset instead of the noise's minimum."""
    truth = torch.full((20,), 2.0)
    d, c, valid = _sequence(truth, glob=2.0)
    g = torch.Generator().manual_seed(3)
    d[0, 8:12] = 0.02 * torch.rand(4, S, generator=g)  # no local evidence
    out = _run("fuzzy", d, c, valid)
    assert (out.weights["beta"][0, 8:12] > 1.5).all() and (out.weights["beta"][0, :6] < 1.1).all()
    assert (out.tau[0, 8:12] - 2.0).abs().max() < 1.0


def test_backstepping_gain_stays_in_its_stability_bounds_under_noise():
    truth = torch.zeros(40)
    d, c, valid = _sequence(truth, noise=0.8, seed=5)
    bs = Backstepping()
    out = _run(bs, d, c, valid)
    gain = out.weights["gain"]
    assert (gain >= bs.k_min - 1e-6).all() and (gain <= bs.k_max + 1e-6).all() and bs.k_max < 1
    assert out.tau.abs().max() <= K


def test_neural_starts_as_fixed_and_learns_to_track_drift():
    ctrl = Neural()
    truth = torch.linspace(-5, 5, 21)
    d, c, valid = _sequence(truth, glob=0.0)
    c = 1.0 - 0.12 * TAUS.abs()[None]
    torch.testing.assert_close(_run(ctrl, d, c, valid).tau, _run(Fixed(), d, c, valid).tau)
    batches = []
    for sl in (5.0, -4.0, 3.0, 0.0):  # drifts of both signs and a constant offset
        tr = torch.linspace(-sl, sl, 21)
        dd, cc, vv = _sequence(tr, glob=0.0)
        batches.append((dd, 1.0 - 0.12 * TAUS.abs()[None], vv, tr[None]))
    losses = fit_neural(ctrl, batches, 1.0, 1.0, 0.02, steps=120, lr=0.03)
    assert losses[-1] < 0.5 * losses[0]
    assert float(tracking_error(_run(ctrl, d, c, valid).tau, truth[None])) < \
        float(tracking_error(_run(Fixed(), d, c, valid).tau, truth[None]))


def test_time_varying_shift_moves_each_part_of_the_video_by_its_own_offset():
    a, v, m = _piecewise(lambda s: 3 if s < 80 else -2, t=160, scale=False)
    n = (160 - 8) // 4 + 1
    centres = torch.arange(n) * 4 + 3.5
    p_win = torch.zeros(1, n, S)
    for i, ctr in enumerate(centres):
        p_win[0, i, K + (3 if ctr < 80 else -2)] = 1.0
    p = window_to_frames(p_win, 160, 8, 4)
    out, valid = Aligner.shift_video_tv(v, m, p, K, 160)
    for s in list(range(5, 70)) + list(range(92, 150)):  # away from the change, where windows interpolate
        torch.testing.assert_close(out[0, s], a[0, s], atol=1e-5, rtol=0)


def test_aligner_returns_a_track_and_runs_each_controller_in_eval():
    torch.manual_seed(0)
    for name in CONTROLLERS:
        al = Aligner(16, 8, AlignConfig(max_shift=4, window=6, hop=3, controller=name)).eval()
        a, v = torch.randn(2, 40, 16), torch.randn(2, 40, 8)
        m = torch.ones(2, 40, dtype=torch.bool)
        out = al(a, v, m, m)
        n = (40 - 6 + 2) // 3 + 1
        assert out["p_win"].shape == (2, n, 9) and out["tau_track"].shape == (2, n)
        assert out["p_frames"].shape == (2, 9, 40)
        torch.testing.assert_close(out["p_frames"].sum(1), torch.ones(2, 40))
    al.train()
    assert isinstance(al(a, v, m, m)["control"], dict)  # training: the fixed controller, differentiable


def test_reliability_scores_atypical_frames_low_and_fusion_down_weights_them():
    from esva.models.fusion import Reliability, weighted_mean

    torch.manual_seed(0)
    rel = Reliability(64)
    m = torch.ones(4, 50, dtype=torch.bool)
    rel.train()
    for _ in range(40):  # running statistics of "training" frames
        rel(torch.randn(4, 50, 64) * 2.0 + 1.0, m)
    rel.eval()
    x = torch.randn(1, 50, 64) * 2.0 + 1.0
    x[0, 20:30] = 0.0  # a missing span (a black face, silence): atypical
    x[0, 35:40] = torch.randn(5, 64) * 20.0  # a burst
    r = rel(x, m[:1])
    assert r[0, :20].mean() > 0.9 and r[0, 40:].mean() > 0.9
    assert r[0, 20:30].max() < 0.2 and r[0, 35:40].max() < 0.2
    assert rel.a_mean.item() == pytest.approx(1.0, abs=0.1)  # typical frames: mean squared z near 1
    # the pooled stream ignores the garbage and is scaled by the clip's mean reliability
    clean = weighted_mean(x[:, :20], m[:1, :20], None)
    pooled = weighted_mean(x, m[:1], r)
    good = torch.cat([x[0, :20], x[0, 30:35], x[0, 40:]])
    assert torch.allclose(pooled / r.mean(), (good * r[0, torch.cat([torch.arange(20), torch.arange(30, 35),
                                                                      torch.arange(40, 50)])][:, None]).sum(0)
                          / r.sum(), atol=1e-4)
    assert (pooled - clean).abs().mean() < (weighted_mean(x, m[:1], None) - clean).abs().mean()
    # padding stays zero weight
    m2 = m[:1].clone()
    m2[0, 45:] = False
    assert (rel(x, m2)[0, 45:] == 0).all()
