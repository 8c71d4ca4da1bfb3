"""The AMES trainer end to end on the small benchmark with synthetic label-correlated stores.

Tiny models (1 layer, 16-d tokens, <= 12 descriptors) keep every run well under a second per epoch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from asymfuse.cloud.ames.checkpoint import load_ames, save_ames
from asymfuse.cloud.ames.model import create_ames
from asymfuse.cloud.train.aff_trainer import read_metrics
from asymfuse.cloud.train.ames_config import AMESTrainConfig
from asymfuse.cloud.train.ames_pairs import PairDataset, prepare_ames_data
from asymfuse.cloud.train.ames_loss import ames_loss, make_batch, shared_token_mse
from asymfuse.cloud.train.ames_trainer import build_model, load_teacher, train_ames
from asymfuse.edge.errors import ConfigError
from torch.utils.data import DistributedSampler

from tests.cloud.conftest import LD, L


def _cfg(setup, **kw) -> AMESTrainConfig:
    bench, feats = setup
    base = dict(data_root=str(bench.root), features_dir=str(feats), local_feature="syn_l", global_feature="syn_g",
                model_dim=16, heads=2, layers=1, ffn_dim=32, lq=L, lx=L, hard_negatives_k=6, epochs=2,
                batch_size=8, lr=3e-3, warmup_steps=2, top_m=10, progress=False, seed=0)
    base.update(kw)
    return AMESTrainConfig(**base)


@pytest.fixture(scope="module")
def teacher_path(ames_setup, tmp_path_factory):
    """A tiny full-precision model trained for one epoch (no validation): the distillation teacher."""
    out = tmp_path_factory.mktemp("teacher")
    return train_ames(_cfg(ames_setup, epochs=1, val=""), out_dir=out).checkpoint


def test_fp_run_lowers_the_loss_and_writes_a_strict_checkpoint(ames_setup, tmp_path):
    res = train_ames(_cfg(ames_setup, epochs=5, select_alpha=0), out_dir=tmp_path)  # the highest val score wins
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    for name in ("last.pt", "best.pt", "metrics.jsonl", "ames.pt"):
        assert (tmp_path / name).is_file(), name
    model, info = load_ames(tmp_path / "ames.pt", variant="fp", local_dim=LD)
    assert info.local_feature == "syn_l" and info.extra["best_epoch"] == res.best_epoch
    assert (info.lam, info.gamma) == (res.lam, res.gamma) and info.extra["lq"] == L
    assert "val_ames_mAP_medium" in res.history[-1] and "val_global_mAP_medium" in res.history[-1]
    assert res.val["val_ames_mAP_medium"] == max(h["val_ames_mAP_medium"] for h in res.history)
    state = torch.load(tmp_path / "ames.pt", weights_only=True)["state"]
    fresh = create_ames(local_dim=LD, model_dim=16, layers=1, ffn_dim=32)
    fresh.load_state_dict(state, strict=True)
    for k, v in res.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert any(r.get("event") == "ensemble" for r in records) and any("lq" in r for r in records)


def test_binary_run_starts_from_itq_and_loads_as_binary(ames_setup, tmp_path):
    from asymfuse.cloud.ames.binary import itq_projection

    cfg = _cfg(ames_setup, binary=True, epochs=1)
    data = prepare_ames_data(cfg, is_main=True, barrier=lambda: None)
    model = build_model(cfg, data)
    want = itq_projection(data.locals.valid_descriptors(length=L), bits=16, seed=0)
    np.testing.assert_allclose(model.remap_local[0].W.detach().numpy(), want, rtol=0, atol=1e-6)
    res = train_ames(cfg, out_dir=tmp_path)
    assert np.isfinite(res.history[0]["loss"])
    loaded, info = load_ames(tmp_path / "ames.pt", variant="binary")
    assert loaded.cfg.binary and info.config.model_dim == 16
    with pytest.raises(ConfigError, match="binary AMES checkpoint but a fp one"):
        load_ames(tmp_path / "ames.pt", variant="fp")


def test_match_start_is_validated_first_and_competes_for_best(ames_setup, tmp_path):
    """``start="match"``: the untrained model is written by the matching start (not the seeded init),
    validated as epoch 0 before any step, and ``best`` is chosen over the start and every epoch."""
    from asymfuse.cloud.ames.match_init import init_match_prior

    cfg = _cfg(ames_setup, start="match", layers=3, epochs=2, select_alpha=0)
    data = prepare_ames_data(cfg, is_main=True, barrier=lambda: None)
    model = build_model(cfg, data)
    want = create_ames(local_dim=LD, seed=0, **cfg.model_kwargs())
    init_match_prior(want, data.locals.valid_descriptors(length=L), start=cfg.match_start(), seed=0)
    for k, v in want.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    res = train_ames(cfg, out_dir=tmp_path)
    assert [h["epoch"] for h in res.history] == [0, 1, 2] and res.history[0]["start"] is True
    assert "loss" not in res.history[0] and "val_ames_mAP_medium" in res.history[0]
    assert res.val["val_ames_mAP_medium"] == max(h["val_ames_mAP_medium"] for h in res.history)
    assert res.best_epoch == max(res.history, key=lambda h: h["val_ames_mAP_medium"])["epoch"]
    with pytest.raises(ConfigError, match="3 blocks"):
        build_model(_cfg(ames_setup, start="match", layers=2), data)
    with pytest.raises(ConfigError, match="start"):
        _cfg(ames_setup, start="oracle")


def test_significance_gate_decides_each_replacement_of_the_best(ames_setup, tmp_path):
    """Default ``select_alpha``: a val check replaces the best (the matching start first) only when
    its paired per-query gain clears the Bonferroni bar; replaying the logged tests gives the chosen
    epoch, and a bar no gain can clear keeps the start."""
    from asymfuse.cloud.eval.significance import bonferroni_z

    res = train_ames(_cfg(ames_setup, start="match", layers=3, epochs=3), out_dir=tmp_path / "gate")
    incumbent, score = 0, res.history[0]["val_ames_mAP_medium"]
    for h in res.history[1:]:
        if h["val_ames_mAP_medium"] <= score:
            assert "val_gain_z" not in h  # only a higher score is tested
            continue
        assert h["val_gain_vs_epoch"] == incumbent and h["val_gain_z_min"] == pytest.approx(bonferroni_z(0.05, 3))
        assert h["val_gain"] == pytest.approx(h["val_ames_mAP_medium"] - score, abs=1e-6)
        replaces = h["val_gain_z"] is None or h["val_gain_z"] > h["val_gain_z_min"]
        assert h["val_gain_significant"] is replaces  # the logged verdict matches the replay
        if replaces:
            incumbent, score = h["epoch"], h["val_ames_mAP_medium"]
    assert res.best_epoch == incumbent and any("val_gain_z" in h for h in res.history)  # some check was tested
    strict = train_ames(_cfg(ames_setup, start="match", layers=3, epochs=3, select_alpha=1e-12),
                        out_dir=tmp_path / "strict")  # bar z > 7
    assert strict.best_epoch == 0 or all(h.get("val_gain_z", 0) is None for h in strict.history)
    with pytest.raises(ConfigError, match="select_alpha"):
        _cfg(ames_setup, select_alpha=1.0)


def test_resume_continues_exactly(ames_setup, tmp_path):
    cfg = _cfg(ames_setup, epochs=2, universal=[3, 12])
    full = train_ames(cfg, out_dir=tmp_path / "full")
    train_ames(cfg, out_dir=tmp_path / "part", stop_after_epochs=1)
    resumed = train_ames(cfg, out_dir=tmp_path / "part", resume=True)
    assert len(resumed.history) == len(full.history) == 2
    for a, b in zip(full.history, resumed.history):
        np.testing.assert_allclose(a["step_losses"], b["step_losses"], rtol=0, atol=1e-6)
        assert a["step_lengths"] == b["step_lengths"]
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=1e-6)
    assert (resumed.lam, resumed.gamma, resumed.best_epoch) == (full.lam, full.gamma, full.best_epoch)


def test_resume_with_another_config_or_without_a_state_is_refused(ames_setup, tmp_path):
    train_ames(_cfg(ames_setup, val=""), out_dir=tmp_path, stop_after_epochs=1)
    with pytest.raises(ConfigError, match="lr: checkpoint=0.003 now=0.002"):
        train_ames(_cfg(ames_setup, val="", lr=2e-3), out_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match="without --resume"):
        train_ames(_cfg(ames_setup), out_dir=tmp_path / "empty", resume=True)


def test_universal_lengths_vary_across_batches_within_range(ames_setup, tmp_path):
    res = train_ames(_cfg(ames_setup, epochs=2, universal=[2, 11], val=""), out_dir=tmp_path)
    lengths = [tuple(x) for h in res.history for x in h["step_lengths"]]
    flat = np.array(lengths).ravel()
    assert flat.min() >= 2 and flat.max() <= 10 and len(set(lengths)) > 3
    assert res.best_epoch == 2 and (res.lam, res.gamma) == (0.5, 1.0)  # no val: last epoch, default ensemble
    _, info = load_ames(tmp_path / "ames.pt")
    assert info.extra["universal"] == [2, 11]


def _first_batch(cfg: AMESTrainConfig, data):
    sampler = DistributedSampler(PairDataset(data.sampler), num_replicas=1, rank=0, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    sampler.set_epoch(0)
    queries = np.array(list(sampler)[:cfg.batch_size])
    partners, targets = data.sampler.pairs(queries, epoch=0)
    return queries, partners, targets


def test_distillation_adds_beta_times_the_token_mse(ames_setup, teacher_path, tmp_path):
    cfg = _cfg(ames_setup, binary=True, epochs=1, lq=4, lx=3, distill_teacher=str(teacher_path), teacher_lq=L,
               teacher_lx=L, beta=10.0, val="")
    res = train_ames(cfg, out_dir=tmp_path)
    assert res.history[0]["loss_distill"] > 0
    data = prepare_ames_data(cfg, is_main=True, barrier=lambda: None)
    model = build_model(cfg, data).train()
    teacher = load_teacher(cfg, local_dim=LD, device=torch.device("cpu"))
    q, p, t = _first_batch(cfg, data)
    batch = make_batch(data.locals, q, p, t, lengths=(4, 3), teacher_lengths=(L, L))
    with torch.no_grad():
        out = ames_loss(model, batch, teacher=teacher, beta=10.0)
        logits, s_tok = model(batch.q_desc, batch.q_pad, batch.x_desc, batch.x_pad, return_tokens=True)
        _, t_tok = teacher(*batch.teacher, return_tokens=True)
    # direct computation: matching token + first 4 query + first 3 gallery tokens, valid slots only
    per_pair = []
    for b in range(len(q)):
        pos_s = [0] + [1 + i for i in range(4) if not batch.q_pad[b, i]] + [5 + i for i in range(3)
                                                                           if not batch.x_pad[b, i]]
        pos_t = [0] + [1 + i for i in range(4) if not batch.q_pad[b, i]] + [1 + L + i for i in range(3)
                                                                           if not batch.x_pad[b, i]]
        diff = s_tok[b, pos_s].numpy().astype(np.float64) - t_tok[b, pos_t].numpy().astype(np.float64)
        per_pair.append((diff ** 2).mean())
    mse = float(np.mean(per_pair))
    bce = float(F.binary_cross_entropy_with_logits(logits, batch.target))
    assert float(out["distill"]) == pytest.approx(mse, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(bce + 10.0 * mse, rel=1e-5)
    assert res.history[0]["step_losses"][0] == pytest.approx(bce + 10.0 * mse, rel=1e-5)
    assert mse > 0 and 10.0 * mse > 0.01 * bce  # the term is not negligible


def test_shared_token_mse_is_zero_for_identical_tokens_and_ignores_padding():
    tok = torch.randn(2, 1 + 3 + 2, 4)
    q_pad = torch.tensor([[False, False, True], [False, True, True]])
    x_pad = torch.tensor([[False, True], [False, False]])
    assert float(shared_token_mse(tok, tok, q_pad=q_pad, x_pad=x_pad, teacher_lq=3)) == 0.0
    noisy = tok.clone()
    noisy[0, 3] += 100.0  # a padding slot of the query side of pair 0
    noisy[1, 5] += 100.0  # ... and a valid gallery slot of pair 1
    got = float(shared_token_mse(tok, noisy, q_pad=q_pad, x_pad=x_pad, teacher_lq=3))
    assert got == pytest.approx(0.5 * (100.0 ** 2 * 4 / 4) / 4, rel=1e-6)  # pair 1: 4 valid positions


def test_bad_teachers_are_refused(ames_setup, teacher_path, tmp_path):
    binary = create_ames(local_dim=LD, binary=True, model_dim=16, layers=1, ffn_dim=32)
    save_ames(binary, tmp_path / "bin.pt")
    with pytest.raises(ConfigError, match="binary AMES checkpoint but a fp one is needed"):
        train_ames(_cfg(ames_setup, binary=True, distill_teacher=str(tmp_path / "bin.pt"), val=""),
                   out_dir=tmp_path / "a")
    wrong_dim = create_ames(local_dim=LD + 8, model_dim=16, layers=1, ffn_dim=32)
    save_ames(wrong_dim, tmp_path / "dim.pt")
    with pytest.raises(ConfigError, match=f"expects {LD + 8}-d local descriptors but the features are {LD}-d"):
        train_ames(_cfg(ames_setup, distill_teacher=str(tmp_path / "dim.pt"), val=""), out_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="model_dim is 32"):
        train_ames(_cfg(ames_setup, model_dim=32, distill_teacher=str(teacher_path), val=""), out_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="does not exist"):
        train_ames(_cfg(ames_setup, distill_teacher=str(tmp_path / "nope.pt"), val=""), out_dir=tmp_path / "d")


def test_batch_larger_than_training_set_and_bf16_autocast(ames_setup, tmp_path, monkeypatch):
    from asymfuse.cloud.ames.model import AMES

    with pytest.raises(ConfigError, match="lower batch_size"):
        train_ames(_cfg(ames_setup, batch_size=4096), out_dir=tmp_path / "big")
    seen: list[bool] = []
    original = AMES.forward

    def spy(self, *args, **kwargs):
        if self.training:  # the trainer's forward passes (validation runs without autocast)
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AMES, "forward", spy)
    res = train_ames(_cfg(ames_setup, epochs=1, precision="bf16", val=""), out_dir=tmp_path / "bf16")
    assert np.isfinite(res.history[0]["loss"]) and res.history[0]["loss"] > 0
    assert seen and all(seen), "the bf16 switch did not reach the forward pass"
    seen.clear()
    train_ames(_cfg(ames_setup, epochs=1, val=""), out_dir=tmp_path / "fp32")
    assert seen and not any(seen), "fp32 training ran under bf16 autocast"


def test_cli_trains_and_reports(ames_setup, tmp_path, capsys):
    from asymfuse.cloud.cli.main import main

    cfg = _cfg(ames_setup, epochs=1)
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.to_dict().items() if k != "epochs") + "\n")
    assert main(["train", "ames", "--config", str(path), "--set", "epochs=1", "--set", "binary=true",
                 "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ames binary best_epoch=1" in out and "val_ames_mAP_medium" in out
    assert load_ames(tmp_path / "run" / "ames.pt", variant="binary")[1].extra["best_epoch"] == 1
    assert main(["train", "ames", "--set", "epoch=3", "--out", str(tmp_path / "x")]) == 2
    assert "unknown AMES training config keys ['epoch']" in capsys.readouterr().err


DDP_WORKER = """
import json, os, sys
import torch
from asymfuse.cloud.train.ames_config import config_from_dict
from asymfuse.cloud.train.ames_trainer import train_ames
cfg = config_from_dict(json.loads(open(sys.argv[1]).read()))
res = train_ames(cfg, out_dir=sys.argv[2])
torch.save({"model": res.model.state_dict(), "history": res.history, "lam": res.lam, "gamma": res.gamma},
           os.path.join(sys.argv[2], "final-" + os.environ["RANK"] + ".pt"))
"""


def test_ddp_two_gloo_processes_match_one_process(ames_setup, tmp_path, torchrun):
    """2 ranks x batch 4 == 1 rank x batch 8: same pairs per step, averaged gradients (binary +
    universal, so ITQ, the length draws and the pair draws all have to agree).

    Tolerance 1e-5 (float32 reduction order differs between the all-reduce and one batch), except
    for the attention key biases (see below).
    """
    cfg = _cfg(ames_setup, epochs=2, batch_size=8, binary=True, universal=[3, 12])
    single = train_ames(cfg, out_dir=tmp_path / "one")
    r0, r1 = torchrun(DDP_WORKER, cfg.to_dict())
    d = cfg.model_dim
    for k, v in single.model.state_dict().items():
        got = r0["model"][k]
        if k.endswith("in_proj_bias"):
            # the key bias shifts every score of a softmax row equally: its gradient is 0 up to float
            # noise, which AdamW normalises into lr-sized steps; only bound it by lr * steps.
            assert float((got[d:2 * d] - v[d:2 * d]).abs().max()) <= cfg.lr * 2 * 5
            got, v = torch.cat([got[:d], got[2 * d:]]), torch.cat([v[:d], v[2 * d:]])
        torch.testing.assert_close(got, v, rtol=0, atol=1e-5, msg=f"{k} rank0 vs 1 proc")
        torch.testing.assert_close(r1["model"][k], r0["model"][k], rtol=0, atol=0, msg=f"{k} rank1 vs rank0")
    assert [h["loss"] for h in r0["history"]] == pytest.approx([h["loss"] for h in single.history], abs=1e-5)
    assert [h["step_lengths"] for h in r0["history"]] == [h["step_lengths"] for h in single.history]
    assert (r0["lam"], r0["gamma"]) == (r1["lam"], r1["gamma"])
    assert (tmp_path / "two" / "ames.pt").is_file() and (tmp_path / "two" / "best.pt").is_file()


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_uninterrupted_result(ames_setup, tmp_path):
    """A real crash: `asymfuse train ames` is SIGKILLed in its second epoch, then resumed with
    --resume; the model, the best epoch and its λ/γ end equal to an uninterrupted run."""
    import signal
    import subprocess
    import sys

    from tests.cloud.train.conftest import kill_in_epoch

    # batch 1 and a few thousand steps per epoch leave a wide window to land the kill mid-epoch
    cfg = _cfg(ames_setup, epochs=3, batch_size=1, log_every=1, universal=[3, 12])
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "asymfuse.cloud.cli.main", "train", "ames", "--config", str(tmp_path / "cfg.json"),
           "--out", str(run)]
    proc = kill_in_epoch(cmd, run, epoch=1)  # mid-epoch 2: last.pt holds epoch 1 only
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-training: {proc.stderr.read()[-2000:]}"
    killed_at = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert killed_at < 3 and not (run / "ames.pt").exists()
    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    full = subprocess.run([*cmd[:-1], str(tmp_path / "full")], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    resumed, expected = (torch.load(p / "last.pt", weights_only=True) for p in (run, tmp_path / "full"))
    assert resumed["epoch"] == expected["epoch"] == 3
    assert expected["model"] and resumed["model"].keys() == expected["model"].keys()
    for k, v in expected["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    got, want = (torch.load(p / "ames.pt", weights_only=True) for p in (run, tmp_path / "full"))
    for k, v in want["state"].items():
        torch.testing.assert_close(got["state"][k], v, rtol=0, atol=1e-6, msg=lambda m, k=k: f"ames.pt {k}: {m}")
    summary = [next(x for x in r.stdout.splitlines() if x.startswith("ames ")).split(" runtime=")[0]
               for r in (res, full)]
    assert summary[0] == summary[1], summary  # best epoch, λ, γ and the val mAP
