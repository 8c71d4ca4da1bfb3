"""The AFF trainer end to end on a small real benchmark with synthetic (label-correlated) stores.

Real images feed the query nets; the frozen gallery features are synthetic stores written into the
feature cache (the "existing store wins" rule), so the tests need no gallery-model extraction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.cloud.train.aff_data import load_training_set
from asymfuse.cloud.train.aff_setup import load_val_dataset
from asymfuse.cloud.train.aff_trainer import read_metrics, train_aff
from asymfuse.cloud.train.feature_cache import training_ids
from asymfuse.edge.errors import ConfigError

GD, LD, L = 24, 8, 6


def _instance(item_id: str) -> int:
    return int(item_id.split("_")[0][4:]) if item_id.startswith("inst") else 10_000 + hash(item_id) % 1000


def _global(ids, *, seed):
    """Instance prototype + noise: a gallery feature that carries the label."""
    rows = []
    for i in ids:
        proto = np.random.default_rng([seed, _instance(i)]).standard_normal(GD)
        noise = np.random.default_rng([seed + 1, abs(hash(i)) % 2**31]).standard_normal(GD)
        rows.append(proto + 0.8 * noise)
    x = np.asarray(rows, dtype=np.float32)
    return GlobalFeatures(x / np.linalg.norm(x, axis=1, keepdims=True))


def _local(ids, *, seed):
    n = len(ids)
    rng = np.random.default_rng(seed)
    d = np.zeros((n, L, LD), np.float32)
    mask = np.ones((n, L), bool)
    for r, i in enumerate(ids):
        k = 2 + r % (L - 1)
        proto = np.random.default_rng([seed, _instance(i)]).standard_normal(LD)
        d[r, :k] = proto + rng.standard_normal((k, LD))
        d[r, :k] /= np.linalg.norm(d[r, :k], axis=1, keepdims=True)
        mask[r, :k] = False
    w = (~mask).astype(np.float32)
    return LocalFeatures(descriptors=d, weights=w, mask=mask, xy=np.zeros((n, L, 2), np.float32),
                         scale=np.ones((n, L), np.float32))


def _write(root, ids, kind, seed):
    feats = _global(ids, seed=seed) if kind == "global" else _local(ids, seed=seed)
    create_store_from_arrays(root, ids=list(ids), features=feats,
                             meta={"extractor_name": root.parts[-3], "extractor_id": f"synthetic-{root.parts[-3]}"})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bench):
    base = tmp_path_factory.mktemp("aff")
    feats = base / "features"
    cfg = TrainConfig(data_root=str(bench.root), features_dir=str(feats))
    ts = load_training_set("benchmark", bench.root)
    val = load_val_dataset(cfg)
    for name, kind, seed in (("syn_g", "global", 1), ("syn_l", "local", 2)):
        _write(feats / name / "train" / "gallery", training_ids(ts), kind, seed)
        _write(feats / name / "val" / "gallery", val.gallery_ids, kind, seed)
        _write(feats / name / "val" / "queries", val.query_ids, kind, seed)
    return bench, feats


def _cfg(setup, **kw) -> TrainConfig:
    bench, feats = setup
    base = dict(scheme="joint", data_root=str(bench.root), features_dir=str(feats), gallery_features=("syn_g", "syn_l"),
                local_tokens=L, embed_dim=16, mixer_layers=1, mixer_heads=2, query_arch="mobilenet_v2",
                query_pretrained=False, input_size=64, epochs=2, batch_size=8, lr=0.01, progress=False,
                bn_mode="frozen", seed=0, classifier_epochs=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(("start", "opt"), [("random", {"lr": 0.1}), ("pca", {"optimizer": "adamw", "lr": 1e-3})])
def test_mixer_only_trains_and_writes_artifacts(setup, tmp_path, start, opt):
    res = train_aff(_cfg(setup, scheme="mixer_only", epochs=4, mixer_start=start, **opt), out_dir=tmp_path)
    losses = [h["loss"] for h in res.history]
    if start == "random":
        assert losses[-1] < losses[0]
    else:  # the anchored start with imprinted centres already separates the classes (random start: ~14)
        assert np.isfinite(losses).all() and max(losses) < 1.0, losses
    assert set(res.start) >= {"val_sym_mAP_medium"} and res.start["epoch"] == 0  # the start was validated
    for name in ("last.pt", "best.pt", "mixer.pt", "metrics.jsonl"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "query_net.pt").exists()
    assert "val_sym_mAP_medium" in res.history[-1]
    assert res.query_net is None and res.mixer is not None
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert any("val_sym_mAP_medium" in r for r in records)


def test_joint_run_shares_one_space_id_and_another_mixer_differs(setup, tmp_path):
    from asymfuse.cloud.models.checkpoint import load_query_net
    from asymfuse.cloud.models.mixers.checkpoint import load_mixer

    res = train_aff(_cfg(setup, epochs=1), out_dir=tmp_path / "a")
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "config", "spec", "mixer_config"} <= set(state)
    assert "ema.weight" in state["model"]
    _, info = load_mixer(tmp_path / "a" / "mixer.pt")
    net, _ = load_query_net(tmp_path / "a" / "query_net.pt")
    assert info.embedding_space_id == net.spec.embedding_space_id == res.embedding_space_id
    assert info.query_model_spec.embedding_space_id == res.embedding_space_id
    other = train_aff(_cfg(setup, epochs=1, seed=1), out_dir=tmp_path / "b")
    assert other.embedding_space_id != res.embedding_space_id


def test_resume_continues_exactly(setup, tmp_path):
    cfg = _cfg(setup, epochs=3)
    full = train_aff(cfg, out_dir=tmp_path / "full")
    train_aff(cfg, out_dir=tmp_path / "part", stop_after_epochs=1)
    resumed = train_aff(cfg, out_dir=tmp_path / "part", resume=True)
    assert len(resumed.history) == len(full.history) == 3
    for a, b in zip(full.history, resumed.history):
        np.testing.assert_allclose(a["step_losses"], b["step_losses"], rtol=0, atol=1e-6)
    sa, sb = full.query_net.state_dict(), resumed.query_net.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)


def test_resume_with_another_config_is_refused(setup, tmp_path):
    train_aff(_cfg(setup, epochs=2), out_dir=tmp_path, stop_after_epochs=1)
    with pytest.raises(ConfigError, match="lr: checkpoint=0.01 now=0.02"):
        train_aff(_cfg(setup, epochs=2, lr=0.02), out_dir=tmp_path, resume=True)


def test_resume_without_checkpoint_names_the_fix(setup, tmp_path):
    with pytest.raises(ConfigError, match="without --resume"):
        train_aff(_cfg(setup), out_dir=tmp_path, resume=True)


@pytest.mark.parametrize("scheme", ["two_stage", "bct", "reg", "lce", "csd", "symmetric"])
def test_every_scheme_runs(setup, tmp_path, scheme):
    kw = {"gallery_features": ("syn_g",)} if scheme in ("bct", "reg", "lce", "csd") else {}
    cfg = _cfg(setup, scheme=scheme, epochs=2, stage1_epochs=1, csd_k=4, **kw)
    res = train_aff(cfg, out_dir=tmp_path)
    assert res.query_net is not None
    assert np.isfinite(res.history[-1]["loss"])
    assert "val_asym_mAP_medium" in res.history[-1]
    if scheme in ("bct", "reg", "lce", "csd"):
        assert res.query_net.embed_dim == GD
    if scheme == "two_stage":
        assert [h["stage"] for h in res.history] == ["mixer", "query"]


def test_ema_classifier_follows_the_formula_after_one_step(setup):
    from asymfuse.cloud.train.aff_setup import build_system, prepare_data

    cfg = _cfg(setup, alpha=0.99)
    data = prepare_data(cfg, is_main=True, barrier=lambda: None)
    system = build_system(cfg, data, device=torch.device("cpu"))
    system.set_stage("joint")
    opt = torch.optim.SGD([p for p in system.parameters() if p.requires_grad], lr=0.5)
    w_q0 = system.ema.weight.clone()
    idx = np.arange(8)
    images = torch.randn(8, 3, 64, 64)
    labels = torch.as_tensor(data.training_set.labels[idx])
    out = system(images, data.table.inputs(idx), labels)
    opt.zero_grad()
    out["loss"].backward()
    assert system.ema.weight.grad is None
    opt.step()
    w_mix1 = system.head_mix.weight.detach().clone()
    assert not torch.equal(w_mix1, w_q0)
    system.after_step()
    torch.testing.assert_close(system.ema.weight, 0.99 * w_q0 + 0.01 * w_mix1, rtol=0, atol=0)


def test_nproc_larger_than_samples_is_refused(setup, tmp_path):
    from asymfuse.cloud.train.aff_trainer import _Run
    from asymfuse.cloud.distributed import DistEnv

    cfg = _cfg(setup, batch_size=10_000)
    run = _Run(cfg, tmp_path, DistEnv(rank=0, world_size=10_000), torch.device("cpu"))
    with pytest.raises(ConfigError, match="nproc_per_node"):
        run._setup()


def test_batch_larger_than_training_set_is_refused(setup, tmp_path):
    with pytest.raises(ConfigError, match="lower batch_size"):
        train_aff(_cfg(setup, batch_size=4096), out_dir=tmp_path)


DDP_WORKER = """
import json, os, sys
import torch
from asymfuse.cloud.train.aff_config import config_from_dict
from asymfuse.cloud.train.aff_trainer import train_aff
cfg = config_from_dict(json.loads(open(sys.argv[1]).read()))
res = train_aff(cfg, out_dir=sys.argv[2])
torch.save({"q": res.query_net.state_dict(), "m": res.mixer.state_dict(), "history": res.history,
            "psi_q": res.extra["psi_q"]},
           os.path.join(sys.argv[2], "final-" + os.environ["RANK"] + ".pt"))
"""


def test_ddp_two_gloo_processes_match_one_process(setup, tmp_path, torchrun):
    """2 ranks x batch 4 == 1 rank x batch 8: same samples per step, averaged gradients.

    Tolerance 1e-5 (float32 reduction order differs between the all-reduce and one batch).
    BatchNorm is frozen (bn_mode=frozen): per-rank batch statistics would differ by design.
    """
    cfg = _cfg(setup, epochs=2, batch_size=8, val_every=2)
    single = train_aff(cfg, out_dir=tmp_path / "one")
    r0, r1 = torchrun(DDP_WORKER, cfg.to_dict())
    for part, ref in (("q", single.query_net.state_dict()), ("m", single.mixer.state_dict())):
        for k, v in ref.items():
            torch.testing.assert_close(r0[part][k], v, rtol=0, atol=1e-5, msg=f"{part}.{k} rank0 vs 1 proc")
            torch.testing.assert_close(r1[part][k], r0[part][k], rtol=0, atol=0, msg=f"{part}.{k} rank1 vs rank0")
    # the EMA classifier is identical on both ranks and equals the single-process one
    torch.testing.assert_close(r1["psi_q"], r0["psi_q"], rtol=0, atol=0)
    torch.testing.assert_close(r0["psi_q"], single.extra["psi_q"], rtol=0, atol=1e-5)
    assert [h["loss"] for h in r0["history"]] == pytest.approx([h["loss"] for h in single.history], abs=1e-5)
    assert (tmp_path / "two" / "mixer.pt").is_file()


def test_bf16_autocast_channels_last_and_loader_workers(setup, tmp_path, monkeypatch):
    """The GPU-oriented switches run on CPU: bf16 autocast, channels_last, 1 DataLoader worker; the
    forward pass really runs under bf16 autocast (and an fp32 run does not)."""
    from asymfuse.cloud.train.aff_model import AFFSystem

    seen: list[tuple[bool, torch.dtype, bool]] = []
    original = AFFSystem.forward

    def spy(self, images, gallery, labels):
        out = original(self, images, gallery, labels)
        q = self.query_net.whiten(torch.zeros(1, self.query_net.whiten.in_features))
        seen.append((torch.is_autocast_enabled("cpu"), q.dtype,
                     images.is_contiguous(memory_format=torch.channels_last)))
        return out

    monkeypatch.setattr(AFFSystem, "forward", spy)
    cfg = _cfg(setup, epochs=1, precision="bf16", channels_last=True, workers=1, pin_memory=True)
    res = train_aff(cfg, out_dir=tmp_path / "bf16")
    assert np.isfinite(res.history[0]["loss"]) and res.history[0]["loss"] > 0
    assert res.query_net.spec.embedding_space_id == res.embedding_space_id
    assert seen and all(s == (True, torch.bfloat16, True) for s in seen), seen
    seen.clear()
    train_aff(_cfg(setup, epochs=1), out_dir=tmp_path / "fp32")
    assert seen and all(s[:2] == (False, torch.float32) for s in seen), seen


def test_class_with_one_image_is_refused_before_training(tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    for cls, n in (("a", 3), ("b", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(root / cls / f"{i}.jpg")
    cfg = TrainConfig(scheme="symmetric", data_source="folder", data_root=str(root), query_arch="mobilenet_v2",
                      query_pretrained=False, input_size=32, embed_dim=8, mixer_heads=1, batch_size=2, epochs=1,
                      progress=False)
    with pytest.raises(ConfigError, match="'b'"):
        train_aff(cfg, out_dir=tmp_path / "run")
    Image.new("RGB", (32, 32), (0, 90, 0)).save(root / "b" / "1.jpg")  # now every class has 2+ images
    res = train_aff(cfg, out_dir=tmp_path / "run")  # image-folder source, no val split: last epoch is best
    assert res.best_epoch == 1 and (tmp_path / "run" / "query_net.pt").is_file()


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_uninterrupted_result(setup, tmp_path):
    """A real crash: `asymfuse train aff` is SIGKILLed in its second epoch, then resumed with
    --resume; the query net, the mixer and the momentum classifier end equal to an uninterrupted run."""
    import json
    import signal
    import subprocess
    import sys

    from tests.cloud.train.conftest import kill_in_epoch

    cfg = _cfg(setup, epochs=3, batch_size=2, log_every=1)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "asymfuse.cloud.cli.main", "train", "aff", "--config", str(tmp_path / "cfg.json"),
           "--out", str(run)]
    proc = kill_in_epoch(cmd, run, epoch=1)  # mid-epoch 2: last.pt holds epoch 1 only
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-training: {proc.stderr.read()[-2000:]}"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] < 3
    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # the reference run is a fresh process too, so both see the same thread counts and no state left
    # behind by earlier tests in this process
    full = subprocess.run([*cmd[:-1], str(tmp_path / "full")], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    resumed = torch.load(run / "last.pt", weights_only=True)
    assert resumed["epoch"] == 3
    expected = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    for prefix in ("query_net.", "mixer.", "ema.weight", "head_mix.weight"):
        keys = [k for k in expected if k.startswith(prefix)]
        assert keys, prefix
        for k in keys:
            torch.testing.assert_close(resumed["model"][k], expected[k], rtol=0, atol=1e-6,
                                       msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("trunk_mult", [0.0, 1.0])
def test_a_zero_trunk_lr_mult_freezes_the_trunk_and_its_bn_statistics(setup, tmp_path, trunk_mult):
    """query_trunk_lr_mult=0 trains GeM p and the whitening head only: every trunk weight and BN running
    statistic ends at the start (even with bn_mode=train); with 1.0 the same run moves them."""
    train_aff(_cfg(setup, epochs=1, bn_mode="train", query_trunk_lr_mult=trunk_mult), out_dir=tmp_path)
    start, last = (torch.load(tmp_path / f, weights_only=True)["model"] for f in ("start.pt", "last.pt"))
    trunk = [k for k in start if k.startswith("query_net.trunk.")]
    assert any("running_mean" in k for k in trunk) and any(k.endswith("weight") for k in trunk)
    moved = [k for k in trunk if not torch.equal(start[k], last[k])]
    if trunk_mult == 0:
        assert not moved, moved[:5]
    else:
        assert any("running_mean" in k for k in moved) and any(k.endswith("weight") for k in moved), moved[:5]
    for key in ("query_net.whiten.weight", "head_mix.weight"):  # the head and the mixer side still train
        assert not torch.equal(start[key], last[key]), key


def test_cached_head_training_runs_on_the_start_rows_and_resumes_exactly(setup, tmp_path):
    """query_inputs=cached: every step reads pooled trunk rows of the training images and their crop
    views (3x the rows with 2 views), only the whitening head and the mixer side move, and an interrupted
    run resumes to the uninterrupted one."""
    import shutil

    from asymfuse.cloud.train.start_views import crop_views, views_part

    bench, feats = setup
    mine = tmp_path / "features"
    shutil.copytree(feats, mine)
    ts = load_training_set("benchmark", bench.root)
    views = crop_views(ts, features_dir=mine, views=2, seed=0, crop_scale_min=0.35)
    for name, kind, seed in (("syn_g", "global", 1), ("syn_l", "local", 2)):
        _write(mine / name / views_part(views=2, seed=0, crop_scale_min=0.35) / "gallery", training_ids(views),
               kind, seed)
    cfg = _cfg((bench, mine), epochs=2, start_views=2, query_trunk_lr_mult=0.0, query_inputs="cached",
               log_every=1)
    full = train_aff(cfg, out_dir=tmp_path / "full")
    steps = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "step" in r and r["epoch"] == 0]
    assert len(steps) == (3 * len(ts)) // cfg.batch_size  # images + 2 crop views each
    assert any((mine / "_pooled").glob("*.npy"))
    start, last = (torch.load(tmp_path / "full" / f, weights_only=True)["model"] for f in ("start.pt", "last.pt"))
    frozen = [k for k in start if k.startswith(("query_net.trunk.", "query_net.pool."))]
    assert frozen and all(torch.equal(start[k], last[k]) for k in frozen)
    assert not torch.equal(start["query_net.whiten.weight"], last["query_net.whiten.weight"])
    train_aff(cfg, out_dir=tmp_path / "part", stop_after_epochs=1)
    resumed = train_aff(cfg, out_dir=tmp_path / "part", resume=True)
    for a, b in zip(full.history, resumed.history):
        np.testing.assert_allclose(a["step_losses"], b["step_losses"], rtol=0, atol=1e-6)
    for a, b in ((full.query_net, resumed.query_net), (full.mixer, resumed.mixer)):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="query_trunk_lr_mult=0"):
        cfg.replace(query_trunk_lr_mult=0.1)


def test_margin_weighting_weighs_a_noise_input_down_in_the_saved_start(setup, tmp_path):
    from asymfuse.cloud.models.mixers.checkpoint import load_mixer

    bench, feats = setup
    cfg = _cfg(setup, scheme="mixer_only", epochs=1, gallery_features=("syn_g", "syn_noise", "syn_l"),
               fusion_weighting="margin", fusion_weights=(("syn_l", 0.5),))
    val = load_val_dataset(cfg)
    ids = {("train", "gallery"): training_ids(load_training_set("benchmark", bench.root)),
           ("val", "gallery"): val.gallery_ids, ("val", "queries"): val.query_ids}
    for (part, side), item_ids in ids.items():  # no class signal at all
        x = np.random.default_rng(len(item_ids)).standard_normal((len(item_ids), 32)).astype(np.float32)
        create_store_from_arrays(feats / "syn_noise" / part / side, ids=list(item_ids),
                                 features=GlobalFeatures(x / np.linalg.norm(x, axis=1, keepdims=True)),
                                 meta={"extractor_name": "syn_noise", "extractor_id": "synthetic-noise"})
    res = train_aff(cfg, out_dir=tmp_path)
    weights = res.mixer.anchor.input_weights  # schema order: the globals, then the local set
    g, noise, loc = weights
    assert max(g, loc / 0.5) == pytest.approx(1.0) and noise < 0.2 * min(g, loc), weights
    saved, _ = load_mixer(tmp_path / "mixer.pt")  # the weights travel with the checkpoint
    assert saved.anchor.input_weights == pytest.approx(weights)
    fixed = train_aff(cfg.replace(fusion_weighting="fixed"), out_dir=tmp_path / "fixed")
    assert fixed.mixer.anchor.input_weights == (1.0, 1.0, 0.5)


def test_the_start_reports_each_input_alone_and_a_fused_space_below_them_is_warned(setup, tmp_path, caplog):
    import logging

    from asymfuse.cloud.eval.evaluate import evaluate_aff
    from asymfuse.cloud.features.store import FeatureStore

    bench, feats = setup
    cfg = _cfg(setup, scheme="mixer_only", epochs=1, mixer_start="random", lr=1e-6)
    val = load_val_dataset(cfg)
    with caplog.at_level(logging.INFO, logger="asymfuse.cloud.train.aff_trainer"):
        res = train_aff(cfg, out_dir=tmp_path)
    with FeatureStore.open(feats / "syn_g" / "val" / "gallery") as g, \
            FeatureStore.open(feats / "syn_g" / "val" / "queries") as q:  # the global input, as stored
        direct = evaluate_aff(dataset=val, query_vectors=np.asarray(q.global_features()),
                              gallery_vectors=np.asarray(g.global_features()))["mAP_medium"]
    assert res.start["val_input_syn_g_mAP_medium"] == pytest.approx(direct)
    assert 0.0 <= res.start["val_input_syn_l_mAP_medium"] <= 100.0
    assert "val_input_syn_g_mAP_medium" not in res.history[-1]  # measured once, at the start
    best_input = max(v for k, v in res.start.items() if k.startswith("val_input_"))

    def kept_fused(run):  # the fused val score of the epoch the run kept
        kept = run.start if run.best_epoch == 0 else next(h for h in run.history if h["epoch"] == run.best_epoch)
        return kept["val_sym_mAP_medium"]

    def warned():
        return any(r.levelname == "WARNING" and "below its best input" in r.getMessage() for r in caplog.records)

    # an untrained random mixer (measured 82-85 against its inputs' 91-97 on val): below, so the run says so
    best_name = max((k for k in res.start if k.startswith("val_input_")), key=lambda k: res.start[k])
    assert kept_fused(res) < best_input and warned(), caplog.text
    assert f"below its best input {best_name.removeprefix('val_input_').removesuffix('_mAP_medium')} " in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="asymfuse.cloud.train.aff_trainer"):
        pca = train_aff(cfg.replace(mixer_start="pca"), out_dir=tmp_path / "pca")
    assert warned() == (kept_fused(pca) < best_input), caplog.text  # a warning exactly when it is below
