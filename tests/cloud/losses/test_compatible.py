"""BCT / REG / LCE / CSD against NumPy references, and the gallery classifier fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from asymfuse.cloud.losses import arcface_loss, bct_loss, csd_loss, fit_gallery_classifier, lce_loss, reg_loss
from asymfuse.cloud.losses import compatible
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _t(a):
    return torch.tensor(a, dtype=torch.float32)


def _ref_arcface_ce(x, w, y, *, scale, margin):
    x, w = _unit(x), _unit(w)
    cos = np.clip(x @ w.T, -1 + 1e-7, 1 - 1e-7)
    logits = cos.copy()
    for i, c in enumerate(y):
        th = math.acos(cos[i, c])
        logits[i, c] = math.cos(th + margin) if th + margin < math.pi else cos[i, c] - math.sin(margin) * margin
    logits *= scale
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _ref_csd(q, g, bank, *, k, tt, ts):
    q, g = _unit(q), _unit(g)
    total = 0.0
    for qi, gi in zip(q, g):
        st = bank @ gi
        nn_idx = np.argsort(-st, kind="stable")[:k]
        a = st[nn_idx] / tt
        pt = np.exp(a - a.max())
        pt /= pt.sum()
        b = (bank[nn_idx] @ qi) / ts
        logps = b - b.max() - np.log(np.exp(b - b.max()).sum())
        total += float(np.sum(pt * (np.log(pt) - logps)))
    return total / len(q)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    B, d, C = 12, 8, 5
    return {"q": _unit(rng.normal(size=(B, d))), "g": _unit(rng.normal(size=(B, d))),
            "w": rng.normal(size=(C, d)), "y": rng.integers(0, C, size=B), "bank": _unit(rng.normal(size=(40, d)))}


def test_reg_matches_numpy(data):
    q, g = data["q"], data["g"]
    ref = float(np.mean(np.sum((q - g) ** 2, axis=1)))
    assert float(reg_loss(_t(q), _t(g))) == pytest.approx(ref, rel=1e-5)
    assert float(reg_loss(_t(q), _t(q))) == 0.0


def test_bct_matches_numpy_and_does_not_train_the_gallery(data):
    w = torch.nn.Parameter(_t(data["w"]))
    q = _t(data["q"]).requires_grad_(True)
    loss = bct_loss(q, torch.tensor(data["y"]), gallery_weight=w, scale=32.0, margin=0.3)
    ref = _ref_arcface_ce(data["q"], data["w"], data["y"], scale=32.0, margin=0.3)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert w.grad is None and q.grad is not None and torch.isfinite(q.grad).all()


def _ref_lce(q, g, w, y, *, bw):
    wn = _unit(w)[y]
    boundary = np.mean(np.maximum(np.sum(_unit(g) * wn, 1) - np.sum(_unit(q) * wn, 1), 0.0))
    return _ref_arcface_ce(q, w, y, scale=32.0, margin=0.3) + bw * boundary, boundary


@pytest.mark.parametrize("bw", [0.0, 1.0, 2.5])
def test_lce_matches_numpy(data, bw):
    ref, boundary = _ref_lce(data["q"], data["g"], data["w"], data["y"], bw=bw)
    assert boundary > 0.01  # random data: the boundary term is active, so bw matters
    got = lce_loss(_t(data["q"]), _t(data["g"]), torch.tensor(data["y"]), gallery_weight=_t(data["w"]),
                   scale=32.0, margin=0.3, boundary_weight=bw)
    assert float(got) == pytest.approx(ref, rel=1e-5)


def test_lce_boundary_is_zero_when_q_equals_g(data):
    q, w, y = _t(data["q"]), _t(data["w"]), torch.tensor(data["y"])
    both = lce_loss(q, q.clone(), y, gallery_weight=w, scale=32.0, margin=0.3, boundary_weight=5.0)
    assert float(both) == pytest.approx(float(bct_loss(q, y, gallery_weight=w, scale=32.0, margin=0.3)), abs=1e-6)


def test_lce_gradient_into_q_only(data):
    q, g = _t(data["q"]).requires_grad_(True), _t(data["g"]).requires_grad_(True)
    w = torch.nn.Parameter(_t(data["w"]))
    lce_loss(q, g, torch.tensor(data["y"]), gallery_weight=w, scale=32.0, margin=0.3).backward()
    assert q.grad is not None and g.grad is None and w.grad is None


@pytest.mark.parametrize("k,tt,ts", [(1, 0.01, 1.0), (5, 0.01, 1.0), (16, 0.1, 0.5), (40, 0.05, 0.05)])
def test_csd_matches_numpy(data, k, tt, ts):
    got = csd_loss(_t(data["q"]), _t(data["g"]), bank=_t(data["bank"]), k=k, t_teacher=tt, t_student=ts)
    ref = _ref_csd(data["q"], data["g"], data["bank"], k=k, tt=tt, ts=ts)
    assert float(got) == pytest.approx(ref, rel=1e-4, abs=1e-6)
    if k > 1:
        assert ref > 1e-3


def test_csd_chunked_neighbour_search_matches_single_block(data, monkeypatch):
    args = (_t(data["q"]), _t(data["g"]))
    whole = csd_loss(*args, bank=_t(data["bank"]), k=7)
    monkeypatch.setattr(compatible, "CSD_CHUNK", 6)  # 40 rows -> 7 chunks, the last one short
    chunked = csd_loss(*args, bank=_t(data["bank"]), k=7)
    assert float(chunked) == pytest.approx(float(whole), rel=1e-6)


def test_csd_zero_when_q_equals_g_and_equal_temperatures(data):
    q = _t(data["q"])
    loss = csd_loss(q, q.clone(), bank=_t(data["bank"]), k=16, t_teacher=0.5, t_student=0.5)
    assert abs(float(loss)) < 1e-6


def test_csd_gradient_into_q_only(data):
    q, g = _t(data["q"]).requires_grad_(True), _t(data["g"]).requires_grad_(True)
    bank = _t(data["bank"]).requires_grad_(True)
    csd_loss(q, g, bank=bank, k=4).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and g.grad is None and bank.grad is None


def _clusters(seed, *, C=6, D=16, n=25, noise=0.2):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(C, D)))
    y = np.repeat(np.arange(C), n)
    x = _unit(centres[y] + noise * rng.normal(size=(C * n, D))).astype(np.float32)
    return x, y


def test_fit_gallery_classifier_separates_clusters_and_is_deterministic():
    x, y = _clusters(0)
    W = fit_gallery_classifier(x, y, num_classes=6, epochs=20, seed=3)
    assert W.dtype == torch.float32 and W.shape == (6, 16) and W.device.type == "cpu" and not W.requires_grad
    torch.testing.assert_close(W.norm(dim=1), torch.ones(6))
    acc = float(((torch.from_numpy(x) @ W.t()).argmax(1) == torch.from_numpy(y)).float().mean())
    assert acc >= 0.95
    assert torch.equal(W, fit_gallery_classifier(torch.from_numpy(x), torch.from_numpy(y), num_classes=6,
                                                 epochs=20, seed=3))
    # training moves beyond the class-mean start: the ArcFace loss on the training set drops
    means = torch.from_numpy(_unit(np.stack([x[y == c].mean(0) for c in range(6)])).astype(np.float32))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert float(arcface_loss(xt, W, yt)) < 0.5 * float(arcface_loss(xt, means, yt))


def test_fit_gallery_classifier_handles_classes_without_samples():
    x, y = _clusters(1, C=3)
    W = fit_gallery_classifier(x, y, num_classes=5, epochs=3)
    assert W.shape == (5, 16) and torch.isfinite(W).all()


def test_bad_inputs(data):
    q, g, y, w = _t(data["q"]), _t(data["g"]), torch.tensor(data["y"]), _t(data["w"])
    with pytest.raises(ShapeError, match="same shape"):
        reg_loss(q, g[:5])
    with pytest.raises(ShapeError, match="same shape"):
        lce_loss(q, g[:, :4], y, gallery_weight=w)
    with pytest.raises(ShapeError, match="dimension"):
        bct_loss(q, y, gallery_weight=w[:, :3])
    with pytest.raises(ConfigError, match="boundary_weight"):
        lce_loss(q, g, y, gallery_weight=w, boundary_weight=-1.0)
    with pytest.raises(ConfigError, match="k must be"):
        csd_loss(q, g, bank=_t(data["bank"]), k=41)
    with pytest.raises(ConfigError, match="t_teacher"):
        csd_loss(q, g, bank=_t(data["bank"]), t_teacher=0.0)
    with pytest.raises(ShapeError, match="dimension"):
        csd_loss(q, g, bank=_t(data["bank"])[:, :3])
    x, labels = _clusters(2, C=3)
    with pytest.raises(ConfigError, match="labels must lie"):
        fit_gallery_classifier(x, labels, num_classes=2)
    with pytest.raises(ShapeError, match="labels"):
        fit_gallery_classifier(x, labels[:-1], num_classes=3)
    with pytest.raises(ShapeError, match=r"\(N, D\)"):
        fit_gallery_classifier(x[0], labels, num_classes=3)
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(CorruptDataError, match="row 4"):
        fit_gallery_classifier(bad, labels, num_classes=3)
    with pytest.raises(ConfigError, match="epochs"):
        fit_gallery_classifier(x, labels, num_classes=3, epochs=0)
