"""``train_ames``: the AMES trainer (single process or ``torchrun`` DDP, CPU or CUDA, AMP).

One call runs a whole configuration (see :mod:`asymfuse.cloud.train.ames_config`) and leaves in
``out_dir``: ``last.pt`` (full training state, for ``resume``), ``best.pt`` (the same at the best
val epoch), ``metrics.jsonl`` and ``ames.pt`` (the best model with the lambda/gamma of its val grid
search, loadable by :func:`asymfuse.cloud.ames.checkpoint.load_ames`). Only rank 0 writes. With
``start="match"`` and a val split, the untrained start is validated first (history entry
``epoch 0``) and stays the best model unless an epoch beats it on val.

The loss of a batch is :func:`asymfuse.cloud.train.ames_loss.ames_loss`.

Reproducibility: the pairs of an epoch are a function of (seed, epoch, anchor), the lengths of a
step of (seed, epoch, step) (:mod:`asymfuse.cloud.train.ames_pairs`), and the sampler's permutation of
(seed, epoch), so a resumed run, or one with N ranks and the same global batch, sees the same
batches as an uninterrupted single-process run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from asymfuse.cloud.ames.checkpoint import DEFAULT_GAMMA, DEFAULT_LAM, load_ames, save_ames
from asymfuse.cloud.ames.model import AMES, create_ames
from asymfuse.cloud.device import autocast
from asymfuse.cloud.train.ames_config import RESUME_SAFE_FIELDS, AMESTrainConfig
from asymfuse.cloud.train.ames_loss import ames_loss, make_batch
from asymfuse.cloud.train.ames_pairs import AMESData, BatchLengths, PairDataset, prepare_ames_data
from asymfuse.cloud.distributed import (
    barrier,
    broadcast_object,
    dist_env_from_environ,
    mean_across_ranks,
    process_group,
    rank_device,
)
from asymfuse.cloud.train.epoch_run import EpochRun
from asymfuse.cloud.train.progress import JsonlLog, progress_bar
from asymfuse.cloud.train.schedule import create_optimizer, param_groups, phased_schedule
from asymfuse.edge.errors import ConfigError
from torch.utils.data import DataLoader, DistributedSampler

STATE_FORMAT = "asymfuse.ames_train/1"
CALIBRATION_PAIRS = 512  # training pairs that Platt-scale the matching start (start="match")


@dataclass
class AMESTrainResult:
    """A finished run: the best model (eval mode, CPU), its ensemble weights, and the history."""

    config: AMESTrainConfig
    out_dir: Path
    model: AMES
    history: list[dict[str, Any]]
    best_epoch: int
    checkpoint: Path
    lam: float
    gamma: float
    runtime_s: float
    val: dict[str, Any] = field(default_factory=dict)


def train_ames(config: AMESTrainConfig, *, out_dir: str | Path, resume: bool = False,
               stop_after_epochs: int | None = None) -> AMESTrainResult:
    """Train one AMES model; see the module docstring for what lands in ``out_dir``.

    Args:
        config: the run.
        out_dir: run folder (created).
        resume: continue from ``out_dir/last.pt`` (same config, except runtime-only fields).
        stop_after_epochs: stop after this many epochs *of this call* as if interrupted.

    Raises:
        ConfigError: bad config for this data/world size, resume with a different config, a
            teacher that is binary, missing, or does not fit the local feature / model dim.
        UnknownNameError: a feature that is neither cached nor a registered extractor.
        CorruptDataError: NaN in stored features, unreadable checkpoints.
    """
    env = dist_env_from_environ()
    device = rank_device(config.device, env)
    with process_group(env, device):
        return _Run(config, Path(out_dir), env, device).run(resume=resume, stop_after_epochs=stop_after_epochs)


def build_model(cfg: AMESTrainConfig, data: AMESData) -> AMES:
    """The student before its first step (CPU): seeded init; binary ``W`` from ITQ on the training
    descriptors (the first ``max(lq, lx)`` slots of each image); with ``start="match"`` then the
    matching start (:func:`asymfuse.cloud.ames.match_init.init_match_prior`) on the same descriptors."""
    model = create_ames(local_dim=data.locals.dim, seed=cfg.seed, **cfg.model_kwargs())
    if not cfg.binary and cfg.start != "match":
        return model
    train = data.locals.valid_descriptors(length=max(cfg.lq, cfg.lx))  # gathered once for both inits
    if cfg.binary:
        from asymfuse.cloud.ames.binary import init_binary_projection

        init_binary_projection(model, train, seed=cfg.seed)
    if cfg.start == "match":
        from asymfuse.cloud.ames.match_init import init_match_prior

        init_match_prior(model, train, start=cfg.match_start(), seed=cfg.seed)
    return model


def load_teacher(cfg: AMESTrainConfig, *, local_dim: int, device: torch.device) -> AMES | None:
    """The frozen full-precision teacher (eval mode, on ``device``), or None without distillation.

    Raises:
        ConfigError: no file, a binary checkpoint, another descriptor dimension or model dim.
        CorruptDataError: an unreadable checkpoint.
    """
    if not cfg.distill:
        return None
    path = Path(cfg.distill_teacher)
    if not path.is_file():
        raise ConfigError(f"distill_teacher {str(path)!r} does not exist; train a full-precision teacher first "
                          "(`asymfuse train ames --set binary=false`) and pass its ames.pt")
    teacher, _ = load_ames(path, variant="fp", local_dim=local_dim, device=device)
    if teacher.cfg.model_dim != cfg.model_dim:
        raise ConfigError(f"the teacher's tokens are {teacher.cfg.model_dim}-d but the student's model_dim is "
                          f"{cfg.model_dim}; set model_dim={teacher.cfg.model_dim}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class _Run(EpochRun):
    state_format = STATE_FORMAT
    resume_safe_fields = RESUME_SAFE_FIELDS

    # ----------------------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg, env = self.cfg, self.env
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.data = prepare_ames_data(cfg, is_main=env.is_main, barrier=lambda: barrier(env))
        torch.manual_seed(cfg.seed)  # after the data: a cache miss (extraction) must not shift the RNG
        self.plan_batches(len(self.data.locals))
        self.teacher = load_teacher(cfg, local_dim=self.data.locals.dim, device=self.device)
        self.model = build_model(cfg, self.data).to(self.device)
        groups = param_groups([(self.model, 1.0)], weight_decay=cfg.weight_decay)
        optimizer = create_optimizer(groups, kind="adamw", lr=cfg.lr)
        self.init_optimisation(optimizer, phased_schedule(optimizer, kind=cfg.schedule, warmup=cfg.warmup_steps,
                                                          phase_steps=[cfg.epochs * self.steps_per_epoch]))
        self.lengths = BatchLengths(lq=cfg.lq, lx=cfg.lx, universal=cfg.universal, seed=cfg.seed)
        self.best = {"epoch": -1, "score": -1.0, "lam": DEFAULT_LAM, "gamma": DEFAULT_GAMMA, "val": {}}

    def _loader(self) -> tuple[DataLoader, PairDataset, DistributedSampler]:
        ds = PairDataset(self.data.sampler)
        loader, sampler = self.distributed_loader(ds)
        return loader, ds, sampler

    # ------------------------------------------------------------------------------------- resume
    def _resume(self) -> None:
        payload = self.load_resume()
        self.model.load_state_dict(payload["model"])
        self.restore(payload)

    def _state(self, epoch: int) -> dict[str, Any]:
        return {**self.base_state(epoch, self.model), "model_config": self.model.cfg.to_dict()}

    # --------------------------------------------------------------------------------------- loop
    def run(self, *, resume: bool, stop_after_epochs: int | None) -> AMESTrainResult:
        self._setup()
        if resume:
            self._resume()
        log = JsonlLog(self.out / "metrics.jsonl", enabled=self.env.is_main)
        if resume:
            log.write({"event": "resume", "epoch": self.start_epoch})
        loader, ds, sampler = self._loader()
        if not resume and self.cfg.start == "match":
            if self.cfg.match_calibrate:
                self._calibrate_start(ds, log)
            if self.data.val is not None:
                self._end_epoch(-1, {"epoch": 0, "start": True}, log)  # the start competes for the best epoch
        model = self.ddp(self.model)
        done = 0
        for epoch in range(self.start_epoch, self.cfg.epochs):
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            record = self._train_epoch(epoch, model, loader, log)
            self._end_epoch(epoch, record, log)
            done += 1
            if stop_after_epochs is not None and done >= stop_after_epochs:
                break
        barrier(self.env)
        return self._finish(log)

    def _calibrate_start(self, ds: Any, log: JsonlLog) -> None:
        """Platt-scale the matching start's classifier on up to ``CALIBRATION_PAIRS`` training pairs of
        epoch 0 (the same pairs on every rank, so DDP replicas stay equal)."""
        from asymfuse.cloud.ames.match_init import calibrate_classifier

        cfg = self.cfg
        ds.set_epoch(0)
        n = len(ds)
        idx = np.unique(np.linspace(0, n - 1, num=min(n, CALIBRATION_PAIRS)).round().astype(int))
        items = [ds[int(i)] for i in idx]
        q = np.array([int(it["query"]) for it in items])
        x = np.array([int(it["partner"]) for it in items])
        y = np.array([float(it["target"]) for it in items])
        if not 0 < y.sum() < len(y):
            log.write({"event": "calibrate", "skipped": "one class only in the sampled pairs"})
            return
        self.model.eval()
        logits = []
        with torch.no_grad():
            for s in range(0, len(idx), cfg.batch_size):
                sl = slice(s, s + cfg.batch_size)
                batch = make_batch(self.data.locals, q[sl], x[sl], y[sl], lengths=(cfg.lq, cfg.lx), device=self.device)
                with autocast(self.device, cfg.precision):
                    out = self.model(batch.q_desc, batch.q_pad, batch.x_desc, batch.x_pad)
                logits.append(out.float().cpu())
        a, b = calibrate_classifier(self.model, torch.cat(logits), y)
        log.write({"event": "calibrate", "pairs": int(len(idx)), "scale": a, "offset": b})

    def _train_epoch(self, epoch: int, model: torch.nn.Module, loader: DataLoader, log: JsonlLog) -> dict[str, Any]:
        cfg, dev = self.cfg, self.device
        self.model.train()
        teacher_lengths = (cfg.teacher_lq, cfg.teacher_lx) if self.teacher is not None else None
        parts: dict[str, list[float]] = {"loss": [], "bce": [], "distill": []}
        step_lengths: list[list[int]] = []
        bar = progress_bar(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           enabled=cfg.progress and self.env.is_main)
        for step, item in enumerate(loader):
            lengths = self.lengths.at(epoch=epoch, step=step)
            batch = make_batch(self.data.locals, item["query"].numpy(), item["partner"].numpy(),
                               item["target"].numpy(), lengths=lengths, teacher_lengths=teacher_lengths, device=dev)
            with autocast(dev, cfg.precision):
                out = ames_loss(model, batch, teacher=self.teacher, beta=cfg.beta)
            self.optimizer_step(out["loss"], self.model.parameters())
            for key in parts:
                parts[key].append(float(out[key].detach()))
            step_lengths.append(list(lengths))
            lr = self.optimizer.param_groups[0]["lr"]
            bar.update(1, loss=parts["loss"][-1], lr=lr)
            if step % cfg.log_every == 0:
                log.write({"epoch": epoch, "step": epoch * self.steps_per_epoch + step, "loss": parts["loss"][-1],
                           "loss_bce": parts["bce"][-1], "loss_distill": parts["distill"][-1], "lq": lengths[0],
                           "lx": lengths[1], "lr": lr})
        bar.close()
        means = {k: mean_across_ranks(float(np.mean(v)) if v else float("nan"), self.env, dev)
                 for k, v in parts.items()}
        return {"epoch": epoch + 1, "loss": means["loss"], "loss_bce": means["bce"], "loss_distill": means["distill"],
                "step_losses": parts["loss"], "step_lengths": step_lengths, "lr": self.optimizer.param_groups[0]["lr"]}

    def _end_epoch(self, epoch: int, record: dict[str, Any], log: JsonlLog) -> None:
        """Validate after ``epoch`` (0-based; -1 = the untrained start) and save; track the best."""
        cfg = self.cfg
        result: dict[str, Any] = {}
        if self.data.val is not None and self._val_due(epoch) and self.env.is_main:
            result = validate(self.model, self.data, cfg, device=self.device)
        result = broadcast_object(result, self.env)
        record.update(result.get("metrics", {}))
        self.history.append(record)
        score = result.get("score")
        improved = self.improved(score, has_val=self.data.val is not None) and self._significant(result, record)
        if improved:
            self.best = {"epoch": epoch + 1, "score": -1.0 if score is None else float(score),
                         "metric": f"val_ames_{cfg.select_metric}", "lam": result.get("lam", DEFAULT_LAM),
                         "gamma": result.get("gamma", DEFAULT_GAMMA), "val": result.get("metrics", {}),
                         "query_aps": result.get("query_aps")}
        self.save_epoch(lambda: self._state(epoch + 1), improved=improved, record=record, log=log,
                        skip=("step_losses", "step_lengths"))

    def _val_due(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based; -1 = the untrained start) ends with a val check."""
        return epoch < 0 or (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs

    def _significant(self, result: dict[str, Any], record: dict[str, Any]) -> bool:
        """Whether a val check that scores above the best one beats it beyond the val split's noise
        (``select_alpha``; see :mod:`asymfuse.cloud.eval.significance`). The first check always
        counts; so does every one when the gate is off or per-query APs are missing. Logs the test
        in ``record``: ``val_gain`` +- ``val_gain_stderr`` points over ``val_gain_vs_epoch``, its
        ``val_gain_z`` (None when the stderr is 0), the bar ``val_gain_z_min`` and the verdict
        ``val_gain_significant``."""
        cfg, best = self.cfg, self.best
        if cfg.select_alpha == 0 or best["epoch"] < 0 or result.get("query_aps") is None \
                or best.get("query_aps") is None:
            return True
        from asymfuse.cloud.eval.significance import bonferroni_z, paired_gain

        z_min = bonferroni_z(cfg.select_alpha, sum(1 for e in range(cfg.epochs) if self._val_due(e)))
        gain = paired_gain(np.asarray(result["query_aps"]), np.asarray(best["query_aps"]))
        significant = gain.beats(z_min)
        record.update(val_gain=gain.mean, val_gain_stderr=gain.stderr, val_gain_vs_epoch=int(best["epoch"]),
                      val_gain_z=gain.z if np.isfinite(gain.z) else None, val_gain_z_min=z_min,
                      val_gain_significant=significant)
        return significant

    # ------------------------------------------------------------------------------------- finish
    def _finish(self, log: JsonlLog) -> AMESTrainResult:
        cfg, best = self.cfg, self.best
        self.load_best(self.model)
        model = self.model.to("cpu").eval()
        path = self.out / "ames.pt"
        if self.env.is_main:
            extra = {"best_epoch": int(best["epoch"]), "lq": cfg.lq, "lx": cfg.lx, "universal": list(cfg.universal),
                     "distill_teacher": cfg.distill_teacher or None, "teacher_lq": cfg.teacher_lq,
                     "teacher_lx": cfg.teacher_lx, "global_feature": cfg.global_store or cfg.global_feature,
                     "val_metrics": dict(best["val"]), "train_config": cfg.to_dict()}
            save_ames(model, path, lam=best["lam"], gamma=best["gamma"], local_feature=cfg.local_feature, extra=extra)
            log.write({"event": "ensemble", "best_epoch": best["epoch"], "lam": best["lam"], "gamma": best["gamma"]})
        return AMESTrainResult(config=cfg, out_dir=self.out, model=model, history=self.history,
                               best_epoch=int(best["epoch"]), checkpoint=path, lam=float(best["lam"]),
                               gamma=float(best["gamma"]), runtime_s=time.perf_counter() - self.t0,
                               val=dict(best["val"]))


def validate(model: AMES, data: AMESData, cfg: AMESTrainConfig, *, device: torch.device) -> dict[str, Any]:
    """Re-rank the val split's global top-``top_m`` with ``model`` and grid-search lambda/gamma.

    Queries use their first ``lq`` descriptors, gallery images their first ``lx`` (also for a
    universal run). ``model``'s train/eval mode is restored afterwards.

    Returns:
        ``{"score": val ``select_metric`` after re-ranking at the best (lam, gamma), "lam", "gamma",
        "metrics": {"val_global_mAP_*", "val_ames_mAP_*", "val_lam", "val_gamma"}}``.

    Raises:
        ConfigError: ``data`` has no val split.
    """
    from asymfuse.cloud.ames.ensemble import rerank_rows, reranked_ranks
    from asymfuse.cloud.ames.evaluate import evaluate_ames, select_ensemble
    from asymfuse.cloud.eval.evaluate import per_query_ap
    from asymfuse.cloud.ames.options import RerankOptions
    from asymfuse.cloud.ames.scorer import AMESScorer
    from asymfuse.cloud.ames.sources import ArrayLocals

    val = data.val
    if val is None:
        raise ConfigError("validation needs a val split; set val (a benchmark split) or val_root")
    was_training = model.training
    model.eval()
    try:
        res = evaluate_ames(dataset=val.dataset, xq=val.global_q, xb=val.global_x,
                            query_locals=ArrayLocals(val.query_locals.descriptors, val.query_locals.pad),
                            gallery=ArrayLocals(val.gallery_locals.descriptors, val.gallery_locals.pad),
                            scorer=AMESScorer(model, device=device),
                            options=RerankOptions(top_m=cfg.top_m, lam=DEFAULT_LAM, gamma=DEFAULT_GAMMA, lq=cfg.lq,
                                                  lx=cfg.lx))
        lam, gamma, grid = select_ensemble(dataset=val.dataset, global_scores=res.global_scores, topm=res.topm,
                                           logits=res.logits, full_ranks=res.ranks, metric=cfg.select_metric)
    finally:
        model.train(was_training)
    chosen = next(g for g in grid if g["lam"] == lam and g["gamma"] == gamma)
    head = rerank_rows(res.topm, res.global_scores, res.logits, lam=lam, gamma=gamma)
    aps = per_query_ap(reranked_ranks(head, res.ranks), val.dataset, metric=cfg.select_metric)
    metrics = {f"val_global_{k}": float(v) for k, v in res.global_metrics.items() if k.startswith("mAP")}
    metrics.update({f"val_ames_{k}": float(v) for k, v in chosen.items() if k.startswith("mAP")})
    metrics.update(val_lam=float(lam), val_gamma=float(gamma))
    return {"score": metrics[f"val_ames_{cfg.select_metric}"], "lam": float(lam), "gamma": float(gamma),
            "metrics": metrics, "query_aps": None if aps is None else [float(a) for a in aps]}
