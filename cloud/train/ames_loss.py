"""The AMES training loss and the batches it reads.

Loss of a batch of ``B`` pairs: ``BCE(logits, targets)`` (mean over pairs), plus with a teacher
``beta * MSE``. The MSE compares the student's and the teacher's *output* tokens (after the last
decoder block) at the positions both sequences share: the matching token, the first
``min(L_q, teacher_lq)`` query tokens and the first ``min(L_x, teacher_lx)`` gallery tokens
(the same descriptors on both sides: stores keep them in detector-score order), skipping padding
slots. Per pair it is the mean over those positions and the ``model_dim`` channels; the batch
value is the mean over pairs (so it splits exactly across DDP ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from asymfuse.cloud.ames.model import AMES
from asymfuse.cloud.train.ames_pairs import TrainingLocals
from asymfuse.edge.errors import ConfigError


@dataclass(frozen=True)
class PairBatch:
    """One batch of pairs on a device: student inputs, targets ``(B,)`` float32 (1 = match), and
    the teacher's inputs (more descriptors of the same images) or None."""

    q_desc: torch.Tensor
    q_pad: torch.Tensor
    x_desc: torch.Tensor
    x_pad: torch.Tensor
    target: torch.Tensor
    teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def make_batch(local: TrainingLocals, queries: np.ndarray, partners: np.ndarray, targets: np.ndarray, *,
               lengths: tuple[int, int], teacher_lengths: tuple[int, int] | None = None,
               device: torch.device | str = "cpu") -> PairBatch:
    """The :class:`PairBatch` of anchors ``queries`` against ``partners`` with ``(L_q, L_x)`` slots."""
    dev = torch.device(device)

    def side(idx: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, p = local.batch(idx, length=length)
        return d.to(dev), p.to(dev)

    teacher = None
    if teacher_lengths is not None:
        teacher = (*side(queries, teacher_lengths[0]), *side(partners, teacher_lengths[1]))
    return PairBatch(*side(queries, lengths[0]), *side(partners, lengths[1]),
                     target=torch.as_tensor(targets, dtype=torch.float32).to(dev), teacher=teacher)


def ames_loss(model: torch.nn.Module, batch: PairBatch, *, teacher: AMES | None = None,
              beta: float = 10.0) -> dict[str, torch.Tensor]:
    """``{"loss", "bce", "distill", "logits"}`` of ``batch`` (see the module docstring).

    ``model`` may be DDP-wrapped; ``teacher`` (frozen, eval) needs ``batch.teacher``.

    Raises:
        ConfigError: a teacher without teacher inputs in the batch.
    """
    b = batch
    if teacher is None:
        logits = model(b.q_desc, b.q_pad, b.x_desc, b.x_pad)
        bce = F.binary_cross_entropy_with_logits(logits.float(), b.target)
        return {"loss": bce, "bce": bce.detach(), "distill": torch.zeros((), device=bce.device), "logits": logits}
    if b.teacher is None:
        raise ConfigError("distillation needs teacher inputs: build the batch with teacher_lengths")
    logits, tokens = model(b.q_desc, b.q_pad, b.x_desc, b.x_pad, return_tokens=True)
    with torch.no_grad():
        _, t_tokens = teacher(*b.teacher, return_tokens=True)
    bce = F.binary_cross_entropy_with_logits(logits.float(), b.target)
    mse = shared_token_mse(tokens.float(), t_tokens.float(), q_pad=b.q_pad, x_pad=b.x_pad,
                           teacher_lq=b.teacher[0].shape[1])
    return {"loss": bce + beta * mse, "bce": bce.detach(), "distill": mse.detach(), "logits": logits}


def shared_token_mse(student: torch.Tensor, teacher: torch.Tensor, *, q_pad: torch.Tensor, x_pad: torch.Tensor,
                     teacher_lq: int) -> torch.Tensor:
    """Mean over pairs of the per-pair MSE at shared, valid positions (module docstring).

    Args:
        student: ``(B, 1 + Lq + Lx, d)`` output tokens; q_pad ``(B, Lq)``, x_pad ``(B, Lx)`` its masks.
        teacher: ``(B, 1 + teacher_lq + teacher_lx, d)`` output tokens.
    """
    lq, lx = q_pad.shape[1], x_pad.shape[1]
    t_lx = teacher.shape[1] - 1 - teacher_lq
    cq, cx = min(lq, teacher_lq), min(lx, t_lx)
    s = torch.cat([student[:, :1 + cq], student[:, 1 + lq:1 + lq + cx]], dim=1)
    t = torch.cat([teacher[:, :1 + cq], teacher[:, 1 + teacher_lq:1 + teacher_lq + cx]], dim=1)
    valid = torch.cat([torch.ones_like(q_pad[:, :1]), ~q_pad[:, :cq], ~x_pad[:, :cx]], dim=1).to(s.dtype)
    per_pos = (s - t).pow(2).mean(dim=2)  # (B, P)
    return ((per_pos * valid).sum(dim=1) / valid.sum(dim=1)).mean()
