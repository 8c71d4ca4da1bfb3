"""``train_aff``: the AFF trainer (single process or ``torchrun`` DDP, CPU or CUDA, AMP).

One call runs a whole scheme (see :mod:`asymfuse.cloud.train.aff_config`) and leaves in
``out_dir``: ``last.pt`` (full training state, for ``resume``), ``best.pt`` (the same at the best
val epoch), ``metrics.jsonl``, ``mixer.pt`` and ``query_net.pt`` (the finished models, sharing one
embedding-space id). Only rank 0 writes.

Reproducibility: every random choice of the data pipeline is a function of (seed, epoch, sample
index) and the sampler's permutation of (seed, epoch), so a resumed run, or one with N ranks and
the same global batch, sees the same batches as an uninterrupted single-process run.
"""

from __future__ import annotations

import json
import logging
import time
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from asymfuse.cloud.device import autocast
from asymfuse.cloud.models.checkpoint import save_query_net
from asymfuse.cloud.models.fusion import GallerySchema
from asymfuse.cloud.models.mixers.checkpoint import save_mixer
from asymfuse.cloud.models.query_net import QueryNet, default_space_id
from asymfuse.cloud.train.aff_config import RESUME_SAFE_FIELDS, SINGLE_GALLERY_SCHEMES, TrainConfig
from asymfuse.cloud.train.aff_data import AFFImageDataset, load_training_set
from asymfuse.cloud.train.aff_setup import AFFData, QueryRows, build_system, prepare_data, query_rows
from asymfuse.cloud.train.aff_validate import input_metrics, validate
from asymfuse.cloud.train.augment import AugmentConfig
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
from asymfuse.cloud.train.space import fused_space_id, single_gallery_space_id
from asymfuse.cloud.train.state import load_state, save_state
from torch.utils.data import DataLoader, Dataset, DistributedSampler

STATE_FORMAT = "asymfuse.aff_train/1"
LOG = logging.getLogger(__name__)
START_FILE = "start.pt"
"""The run's state before its first step (the closed-form start), written when there is a val split."""


@dataclass
class TrainResult:
    """A finished run: the best models (eval mode, CPU) and what happened.

    ``extra["psi_q"]``: the query-side (EMA) classifier ``(C, d)`` when the scheme has one.
    ``start``: the val metrics of the untrained (closed-form) start, ``{}`` without a val split;
    ``best_epoch`` is 0 when no trained epoch beat it.
    """

    config: TrainConfig
    out_dir: Path
    schema: GallerySchema | None
    mixer: torch.nn.Module | None
    query_net: QueryNet | None
    history: list[dict[str, Any]]
    best_epoch: int
    checkpoint: Path
    embedding_space_id: str
    runtime_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    start: dict[str, Any] = field(default_factory=dict)


class _IndexDataset(Dataset):
    """Labels and indices (the mixer stage needs no images), plus ``(C,)`` pooled trunk rows when
    given (``query_inputs = "cached"``)."""

    def __init__(self, labels: np.ndarray, *, pooled: np.ndarray | None = None) -> None:
        self.labels = labels
        self.pooled = pooled

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"label": torch.tensor(int(self.labels[i])), "index": torch.tensor(i)}
        if self.pooled is not None:
            item["pooled"] = torch.from_numpy(self.pooled[i])
        return item

    def set_epoch(self, epoch: int) -> None:
        pass


def train_aff(config: TrainConfig, *, out_dir: str | Path, resume: bool = False,
              stop_after_epochs: int | None = None) -> TrainResult:
    """Train one AFF scheme; see the module docstring for what lands in ``out_dir``.

    Args:
        config: the run.
        out_dir: run folder (created).
        resume: continue from ``out_dir/last.pt`` (same config, except runtime-only fields).
        stop_after_epochs: stop after this many epochs *of this call* as if interrupted (tests,
            time-boxed jobs); ``last.pt`` allows a later ``resume``.

    Raises:
        ConfigError: bad config for this data/world size, resume with a different config.
        CorruptDataError: NaN in stored features, unreadable images or checkpoints.
    """
    env = dist_env_from_environ()
    device = rank_device(config.device, env)
    with process_group(env, device):
        return _Run(config, Path(out_dir), env, device).run(resume=resume, stop_after_epochs=stop_after_epochs)


class _Run(EpochRun):
    state_format = STATE_FORMAT
    resume_safe_fields = RESUME_SAFE_FIELDS

    # ----------------------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg, env = self.cfg, self.env
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.plan_batches(len(load_training_set(cfg.data_source, cfg.data_root)))  # checks before the slow part
        self.data: AFFData = prepare_data(cfg, is_main=env.is_main, barrier=lambda: barrier(env))
        # Seeded after the data: building an extractor (a cache miss) draws from the global RNG, and
        # training (stochastic depth, dropout) must not depend on whether the features were cached.
        torch.manual_seed(cfg.seed)
        self.system = build_system(cfg, self.data, device=self.device)
        s = self.system
        self.rows: QueryRows | None = None
        if cfg.query_inputs == "cached" and s.query_net is not None:  # head-only training on the start rows
            self.rows = query_rows(cfg, self.data, query_net=s.query_net, device=self.device)
            self.plan_batches(len(self.rows.labels))
        mult = cfg.mixer_lr_mult
        trunk = None if s.query_net is None else s.query_net.trunk  # listed first: its own lr multiplier
        groups = param_groups([(m, k) for m, k in ((s.mixer, mult), (s.head_mix, mult),
                                                    (trunk, cfg.query_trunk_lr_mult), (s.query_net, 1.0),
                                                    (s.head_q, 1.0)) if m is not None], weight_decay=cfg.weight_decay)
        optimizer = create_optimizer(groups, kind=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum)
        self.stages = s.stages()
        phases = [e * self.steps_per_epoch for _, e in self.stages]
        self.init_optimisation(optimizer, phased_schedule(optimizer, kind=cfg.schedule, warmup=cfg.warmup_steps,
                                                          phase_steps=phases))
        self.bad_checks = 0
        self.start: dict[str, Any] = {}  # val metrics of the untrained start (epoch 0)

    def _loader(self, stage: str) -> tuple[DataLoader, Dataset, DistributedSampler]:
        cfg, ts = self.cfg, self.data.training_set
        if self.rows is not None:
            ds: Dataset = _IndexDataset(self.rows.labels, pooled=self.rows.pooled if stage != "mixer" else None)
        elif stage == "mixer":
            ds = _IndexDataset(np.asarray(ts.labels))
        else:
            aug = AugmentConfig(crop_scale_min=cfg.crop_scale_min, color_jitter=cfg.color_jitter)
            ds = AFFImageDataset(training_set=ts, spec=self.system.query_net.spec, augment=aug, seed=cfg.seed,
                                 preload_side=cfg.preload_side)
        loader, sampler = self.distributed_loader(ds, pin_memory=cfg.pin_memory)
        return loader, ds, sampler

    def _stage_of(self, epoch: int) -> str:
        end = 0
        for stage, n in self.stages:
            end += n
            if epoch < end:
                return stage
        return self.stages[-1][0]

    def _wrap(self, stage: str) -> torch.nn.Module:
        self.system.set_stage(stage)
        return self.ddp(self.system)

    # ------------------------------------------------------------------------------------- resume
    def _resume(self) -> None:
        payload = self.load_resume()
        self.system.set_stage(self._stage_of(max(payload["epoch"] - 1, 0)))
        self.system.load_state_dict(payload["model"])
        self.restore(payload)
        self.bad_checks = payload.get("bad_checks", 0)
        self.start = payload.get("start", {})

    def _state(self, epoch: int) -> dict[str, Any]:
        return {**self.base_state(epoch, self.system), "bad_checks": self.bad_checks, "start": self.start,
                "schema": None if self.data.table is None else self.data.table.schema.to_dict(),
                "class_names": list(self.data.training_set.class_names),
                "spec": None if self.system.query_net is None else self.system.query_net.spec.to_json(),
                "mixer_config": None if self.system.mixer is None else self.system.mixer.config()}

    # --------------------------------------------------------------------------------------- loop
    def run(self, *, resume: bool, stop_after_epochs: int | None) -> TrainResult:
        self._setup()
        if resume:
            self._resume()
        log = JsonlLog(self.out / "metrics.jsonl", enabled=self.env.is_main)
        if resume:
            log.write({"event": "resume", "epoch": self.start_epoch})
        stage, model, loader, ds, sampler = None, None, None, None, None
        done = 0
        if not resume and self.data.val is not None:  # the start is a candidate: training must beat it on val
            self._end_epoch(-1, {"epoch": 0, "stage": "start"}, log)
        for epoch in range(self.start_epoch, self.cfg.epochs):
            if self._stage_of(epoch) != stage:
                stage = self._stage_of(epoch)
                model = self._wrap(stage)
                loader, ds, sampler = self._loader(stage)
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            record = self._train_epoch(epoch, stage, model, loader, log)
            stop = self._end_epoch(epoch, record, log)
            done += 1
            if stop or (stop_after_epochs is not None and done >= stop_after_epochs):
                break
        barrier(self.env)
        return self._finish()

    def _train_epoch(self, epoch: int, stage: str, model: torch.nn.Module, loader: DataLoader,
                     log: JsonlLog) -> dict[str, Any]:
        cfg, dev, table = self.cfg, self.device, self.data.table
        self.system.train()
        self.system.set_bn_mode(cfg.bn_mode)
        losses: list[float] = []
        bar = progress_bar(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs} [{stage}]",
                           enabled=cfg.progress and self.env.is_main)
        for step, batch in enumerate(loader):
            labels = batch["label"].to(dev, non_blocking=True)
            if self.rows is not None:
                gallery = None if self.rows.gallery is None else self.rows.gallery.select(batch["index"])
            else:
                gallery = None if table is None else table.inputs(batch["index"].numpy())
            gallery = None if gallery is None else gallery.to(dev, non_blocking=True)
            images = batch.get("image", batch.get("pooled"))
            if images is not None:
                images = images.to(dev, non_blocking=True)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
            with autocast(dev, cfg.precision):
                out = model(images, gallery, labels)
            self.optimizer_step(out["loss"], self.system.parameters())
            self.system.after_step()
            loss = float(out["loss"].detach())
            losses.append(loss)
            lr = self.optimizer.param_groups[0]["lr"]
            bar.update(1, loss=loss, lr=lr)
            if step % cfg.log_every == 0:
                log.write({"epoch": epoch, "step": epoch * self.steps_per_epoch + step, "loss": loss,
                           "loss_mix": float(out["loss_mix"]), "loss_q": float(out["loss_q"]), "lr": lr})
        bar.close()
        mean = mean_across_ranks(float(np.mean(losses)) if losses else float("nan"), self.env, dev)
        return {"epoch": epoch + 1, "stage": stage, "loss": mean, "step_losses": losses,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _end_epoch(self, epoch: int, record: dict[str, Any], log: JsonlLog) -> bool:
        """Validate, track the best, write the checkpoints; ``epoch = -1`` checks the untrained start
        (kept as :attr:`start`, epoch 0, not in the history). Returns whether early stopping ends the run."""
        cfg = self.cfg
        last = epoch + 1 == cfg.epochs
        metrics: dict[str, Any] = {}
        if self.data.val is not None and ((epoch + 1) % cfg.val_every == 0 or last) and self.env.is_main:
            metrics = validate(self.system, self.data.val, device=self.device)
            if epoch < 0 and self.system.mixer is not None:  # the inputs alone, next to the fused start
                metrics.update(input_metrics(self.data.val, metric=cfg.select_metric))
        metrics = broadcast_object(metrics, self.env)
        record.update(metrics)
        if epoch < 0:
            self.start = record
            if self.env.is_main:  # the start's weights, for "start" vs "after training" reports
                save_state(self.out / START_FILE, self._state(0))
        else:
            self.history.append(record)
        key = f"val_{'asym' if self.system.query_net is not None else 'sym'}_{cfg.select_metric}"
        score = metrics.get(key)
        improved = self.improved(score, has_val=self.data.val is not None, min_delta=cfg.select_min_delta)
        if score is not None:
            self.bad_checks = 0 if improved else self.bad_checks + 1
        if improved:
            self.best = {"epoch": epoch + 1, "score": float(score) if score is not None else -1.0, "metric": key}
        self.save_epoch(lambda: self._state(epoch + 1), improved=improved, record=record, log=log)
        return bool(cfg.patience and self.bad_checks >= cfg.patience)

    # ------------------------------------------------------------------------------------- finish
    def _finish(self) -> TrainResult:
        self._check_fused_vs_inputs()
        best_path = self.load_best(self.system)
        s = self.system
        s.eval()
        s.to("cpu")
        schema = None if self.data.table is None else self.data.table.schema
        space = self._space_id(schema)
        if s.query_net is not None:
            s.query_net.spec = s.query_net.spec.with_embedding_space(space)
        if self.env.is_main:
            if s.mixer is not None:
                save_mixer(s.mixer, self.out / "mixer.pt", embedding_space_id=space,
                           query_model_spec=None if s.query_net is None else s.query_net.spec,
                           extra={"best_epoch": self.best["epoch"]})
            if s.query_net is not None:
                save_query_net(s.query_net, self.out / "query_net.pt",
                               extra={"scheme": self.cfg.scheme, "best_epoch": self.best["epoch"]})
        return TrainResult(config=self.cfg, out_dir=self.out, schema=schema, mixer=s.mixer, query_net=s.query_net,
                           history=self.history, best_epoch=int(self.best["epoch"]), checkpoint=best_path,
                           embedding_space_id=space, runtime_s=time.perf_counter() - self.t0, start=self.start,
                           extra={"psi_q": None if s.ema is None else s.ema.weight.detach().clone()})

    def _check_fused_vs_inputs(self) -> None:
        """Warn when the kept epoch's fused val space scores below its best single input."""
        metric = self.cfg.select_metric
        inputs = {k[len("val_input_"):-len(metric) - 1]: v for k, v in self.start.items() if k.startswith("val_input_")}
        epoch = int(self.best["epoch"])
        kept = self.start if epoch == 0 else next((h for h in self.history if h.get("epoch") == epoch), {})
        fused = kept.get(f"val_sym_{metric}")
        if not inputs or fused is None or not self.env.is_main:
            return
        best = max(inputs, key=lambda k: inputs[k])
        LOG.info("val %s: fused %.2f (epoch %d); inputs alone: %s", metric, fused, epoch,
                 ", ".join(f"{k} {v:.2f}" for k, v in inputs.items()))
        if fused < inputs[best]:
            LOG.warning("the fused val space (%s %.2f, epoch %d) is below its best input %s (%.2f): lower the lr, "
                        "keep mixer_start=pca with more start_views, weigh the inputs (fusion_weights, "
                        "fusion_weighting=margin) or drop the weak input", metric, fused, epoch, best, inputs[best])

    def _space_id(self, schema: GallerySchema | None) -> str:
        s = self.system
        if s.mixer is not None:
            return fused_space_id(schema, s.mixer, s.mixer.config())
        if self.cfg.scheme in SINGLE_GALLERY_SCHEMES:
            return single_gallery_space_id(schema)
        return default_space_id(s.query_net)


def start_models(result: TrainResult) -> tuple[torch.nn.Module | None, QueryNet | None]:
    """Copies of the run's mixer and query net with the weights of its untrained start
    (``start.pt``), on the CPU in eval mode; ``(None, None)`` when the run wrote no start.

    Raises:
        CorruptDataError: ``start.pt`` is unreadable.
    """
    path = result.out_dir / START_FILE
    if not path.is_file():
        return None, None
    state = load_state(path, fmt=STATE_FORMAT)["model"]
    out = []
    for prefix, module in (("mixer.", result.mixer), ("query_net.", result.query_net)):
        if module is None:
            out.append(None)
            continue
        copy = deepcopy(module)
        copy.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        out.append(copy.eval())
    return out[0], out[1]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
