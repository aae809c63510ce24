"""Precision and devices below the stages: dtype/device resolution (with the hardware check mocked both
ways), the aligner in bf16 and in linear memory, stage 1 and stage 2 forced to bf16 against fp32 on the
same weights, streamed features against in-memory ones.

Tolerances (stated once, used below): a bf16 forward on the same weights gives losses within 5%
(relative) of fp32 and class probabilities within 0.05 (absolute); bf16 matmuls keep 8 bits of mantissa,
so a few percent is what a correct bf16 path shows and a broken one (wrong dtype, lost autocast, fp32
weights read as bf16 bits) misses by far."""

import numpy as np
import pytest
import torch

from esva import precision
from esva.config import AlignConfig, ContrastConfig, MsfeConfig, TrainConfig
from esva.models.align import Aligner, _shifted, shift_scores
from esva.precision import PrecisionError, resolve_device, resolve_dtype, weights_dtype

LOSS_RTOL, PROB_ATOL = 0.05, 0.05


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_hardware_check_both_ways(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native)
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("fp32", "cpu") == torch.float32 and resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert weights_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)


def test_devices_resolve_or_fail_naming_the_key():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(PrecisionError, match="train.device is 'cuda' but this machine has no CUDA device"):
            resolve_device("cuda", "train.device")
    with pytest.raises(PrecisionError, match="tune.device must be cpu, cuda, cuda:N or auto, got 'tpu'"):
        resolve_device("tpu", "tune.device")
    with pytest.raises(PrecisionError, match="dtype must be auto, bf16 or fp32"):
        resolve_dtype("fp8", "cpu")


def _naive_scores(a, v, ma, mv, k, window, local="distance"):
    """eq. 4-5 the slow way: the full L x L product matrix, then its diagonals; each window's local distance from
    its own pairs (non-overlapping windows: hop = window): the mean ||a - v||, or one minus the correlation
    centred on the window's means."""
    b, t, _ = a.shape
    d_loc, c_glob = torch.zeros(b, 2 * k + 1), torch.zeros(b, 2 * k + 1)
    for i in range(b):
        g = a[i] @ v[i].T
        for j, tau in enumerate(range(-k, k + 1)):
            pairs = [(s, s + tau) for s in range(t) if 0 <= s + tau < v.shape[1] and ma[i, s] and mv[i, s + tau]]
            if not pairs:
                continue
            cos = torch.stack([g[s, u] / (a[i, s].norm() * v[i, u].norm()).clamp_min(1e-6) for s, u in pairs])
            c_glob[i, j] = cos.mean()
            wins = {}
            for s, u in pairs:
                wins.setdefault(s // window, []).append((s, u))
            ds = []
            for w in wins.values():
                xa = torch.stack([a[i, s] for s, _ in w])
                xv = torch.stack([v[i, u] for _, u in w])
                if local == "distance":
                    ds.append((xa - xv).norm(dim=-1).mean())
                    continue
                if len(w) < 2:
                    continue
                xa, xv = xa - xa.mean(0), xv - xv.mean(0)
                ds.append(1 - (xa * xv).sum() / torch.sqrt((xa * xa).sum() * (xv * xv).sum() + 1e-8))
            d_loc[i, j] = torch.stack(ds).mean()
    return d_loc, c_glob


def test_banded_scores_equal_the_full_matrix():
    torch.manual_seed(0)
    a = torch.randn(2, 23, 6)  # unnormalised: both local forms and the normalised global term
    v = torch.randn(2, 19, 6)
    ma = torch.ones(2, 23, dtype=torch.bool)
    mv = torch.ones(2, 19, dtype=torch.bool)
    ma[1, 20:], mv[0, 15:] = False, False
    a, v = a * ma[..., None], v * mv[..., None]
    for local in ("distance", "correlation"):
        d, c, _ = shift_scores(a, v, ma, mv, 4, 5, local=local)
        d0, c0 = _naive_scores(a, v, ma, mv, 4, 5, local)
        torch.testing.assert_close(d, d0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, c0, atol=1e-5, rtol=1e-5)


def test_shifted_views_share_storage_so_memory_is_linear_in_length():
    v = torch.randn(2, 1000, 4)
    vs, _ = _shifted(v, torch.ones(2, 1000, dtype=torch.bool), 8, 1000)
    assert vs.shape == (2, 17, 1000, 4)
    assert vs.untyped_storage().nbytes() <= 2 * (1000 + 16) * 4 * 4  # one padded copy, not 17 (nor L x L)


def test_time_varying_shift_takes_bf16_features_with_fp32_weights():
    """The shift fusion and stage 2 use (per-frame p): bf16 features never meet fp32 weights in one op."""
    v = torch.randn(2, 30, 5)
    p = torch.softmax(torch.randn(2, 7, 30), 1)
    m = torch.ones(2, 30, dtype=torch.bool)
    out32, _ = Aligner.shift_video_tv(v, m, p, 3, 30)
    out16, valid = Aligner.shift_video_tv(v.bfloat16(), m, p, 3, 30)
    assert out16.dtype == torch.float32 and valid.all()
    torch.testing.assert_close(out16, out32, atol=0.05, rtol=0.02)


def test_shift_video_takes_bf16_features_with_fp32_weights():
    """The crash of `make demo` on bf16 machines: index_add_ of a bf16 source into an fp32 matrix."""
    v = torch.randn(2, 30, 5)
    p = torch.softmax(torch.randn(2, 7), -1)
    m = torch.ones(2, 30, dtype=torch.bool)
    out32, _ = Aligner.shift_video(v, m, p, 3, 30)
    out16, valid = Aligner.shift_video(v.bfloat16(), m, p, 3, 30)
    assert out16.dtype == torch.float32 and valid.all()
    torch.testing.assert_close(out16, out32, atol=0.05, rtol=0.02)


def _stage1_data():
    from tests.models.test_stage1 import _data

    return _data()


def test_stage1_forward_in_bf16_matches_fp32_on_the_same_weights():
    from esva.models.fusion import FusionClassifier
    from esva.train.stage1 import collate, compute_losses

    data = _stage1_data()
    use = ("hubert", "mae", "text")
    cfgs = (MsfeConfig(hidden=8), ContrastConfig(), AlignConfig(dim=8, max_shift=4, window=4), TrainConfig(hidden=16))
    torch.manual_seed(0)
    model = FusionClassifier(data.dims, data.rates, use, 6, cfgs[0], cfgs[2], cfgs[3]).eval()
    batch = collate(data.clips[:12], use)
    with torch.no_grad():
        out32 = model(batch)
        l32 = compute_losses(model, out32, batch, cfgs)
        with precision.autocast("cpu", torch.bfloat16):
            out16 = model(batch)
            l16 = compute_losses(model, out16, batch, cfgs)
    for k in ("loss", "emo", "align"):
        assert abs(float(l16[k]) - float(l32[k])) <= LOSS_RTOL * abs(float(l32[k])), (k, float(l16[k]), float(l32[k]))
    diff = (out16["logits"].float().softmax(-1) - out32["logits"].softmax(-1)).abs().max()
    assert float(diff) <= PROB_ATOL


def test_stage1_trains_in_bf16_and_records_it():
    from esva.train.stage1 import predict, train

    data = _stage1_data()
    use = ("hubert", "mae", "text")
    kw = dict(msfe_cfg=MsfeConfig(hidden=8), contrast_cfg=ContrastConfig(),
              align_cfg=AlignConfig(dim=8, max_shift=4, window=4, warmup_epochs=1))
    r32 = train(data, use, train_cfg=TrainConfig(epochs=2, batch_size=8, hidden=16), **kw)
    r16 = train(data, use, train_cfg=TrainConfig(epochs=2, batch_size=8, hidden=16, dtype="bf16"), **kw)
    assert r16.dtype == torch.bfloat16 and r32.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in r16.model.parameters())  # master weights stay fp32
    first32, first16 = r32.history[0]["train_loss"], r16.history[0]["train_loss"]
    assert abs(first16 - first32) <= LOSS_RTOL * abs(first32), (first16, first32)
    pred = predict(r16.model, data.clips, use, 8, dtype=r16.dtype)
    assert np.isfinite(pred["probs"]).all() and np.allclose(pred["probs"].sum(-1), 1, atol=1e-3)


def test_streamed_features_equal_in_memory_ones_and_the_cache_is_bounded(tmp_path):
    from esva.encoders.engine import feature_fields
    from esva.data.manifest import to_frame
    from esva.store import RaggedWriter
    from esva.train.stage1 import load_features

    rng = np.random.default_rng(0)
    rows, arrays = [], {}
    for n in ("hubert", "mae", "eva"):
        fields = feature_fields(["last"], 8)
        attrs = {"stage": f"extract_{n}", "dim": 8, "frame_rate": 50.0 if n == "hubert" else 25.0, "layers": ["last"]}
        with RaggedWriter(tmp_path / f"{n}.zarr", fields, attrs, "fp") as w:
            for i in range(20):
                x = rng.normal(0, 1, (40 + i, 8)).astype(np.float16)
                arrays[(n, f"c{i}")] = x
                w.add(f"c{i}", {"last": x, "last_utt": x.astype(np.float32).mean(0, keepdims=True)})
    for i in range(20):
        rows.append({"clip_id": f"c{i}", "video_path": "v.mp4", "root": "r", "split": "train", "label": "happy",
                     "dataset": "synthetic"})
    df = to_frame(rows)
    use = ("hubert", "mae", "eva")
    small = load_features(df, {n: tmp_path / f"{n}.zarr" for n in use}, use, cache_mb=0)
    big = load_features(df, {n: tmp_path / f"{n}.zarr" for n in use}, use, cache_mb=64)
    for data in (small, big):
        for c in data.clips:
            np.testing.assert_array_equal(c.feats["hubert"], arrays[("hubert", c.clip_id)])
            np.testing.assert_array_equal(c.feats["mae"], arrays[("mae", c.clip_id)])
            assert c.feats["eva"].shape == (8,)
            assert c.feats.length("hubert") == len(arrays[("hubert", c.clip_id)])
    assert small.cache.used == 0 and len(small.cache) == 0  # a zero budget holds nothing, reads every time
    assert len(big.cache) == 20 and big.cache.used == sum(a.nbytes for (n, _), a in arrays.items() if n != "eva")
