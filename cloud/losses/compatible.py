"""Compatible-training baselines: train a query net ``q`` against ONE frozen gallery model ``g``.

- **BCT**: ArcFace of ``q`` against the gallery model's frozen classifier.
- **REG**: squared L2 regression of ``q`` onto ``g`` of the same image.
- **LCE**: the BCT term plus a boundary term (see :func:`lce_loss`).
- **CSD**: KL divergence between the gallery model's top-k neighbour distribution and the query's.

The gallery model has no classifier of its own in asymfuse (its features come from frozen
extractors), so :func:`fit_gallery_classifier` trains one: an ArcFace head on the frozen gallery
features of the training classes. Nothing here back-propagates into ``g``, the gallery classifier
or the neighbour bank: they are detached.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from asymfuse.cloud.device import resolve_device
from asymfuse.cloud.losses.arcface import (
    ArcFaceHead,
    _check_labels,
    _check_matrix,
    _check_scale_margin,
    _fp32,
    arcface_loss,
)
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

CSD_CHUNK = 65536  # bank rows scored per matmul when mining neighbours (bounds memory)


def _check_pair(q: torch.Tensor, g: torch.Tensor) -> None:
    """Raises: ShapeError: ``q`` and ``g`` are not 2-D tensors of one shape."""
    _check_matrix("q", q)
    _check_matrix("g", g)
    if q.shape != g.shape:
        raise ShapeError(f"q has shape {tuple(q.shape)} but g has {tuple(g.shape)}; the query and gallery "
                         "embeddings of the same images must have the same shape (set embed_dim to the "
                         "gallery feature's dimension)")


def _as_features(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(N, D)`` float32 CPU tensor from NumPy or torch, checked for shape and finiteness.

    Raises:
        ShapeError: not 2-D or empty.
        CorruptDataError: NaN or inf values.
    """
    t = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.array(features))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ShapeError(f"features must be a non-empty (N, D) array, got shape {tuple(t.shape)}; "
                         "pass the global gallery features, one row per training image")
    t = t.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=1).nonzero()[0, 0])
        raise CorruptDataError(f"features contain NaN/inf (first bad row {bad}); re-extract the gallery "
                               "features of the training set")
    return t


def _validate_fit_args(*, num_classes: int, epochs: int, lr: float, batch_size: int) -> None:
    """Raises: ConfigError: a non-positive count or learning rate."""
    for name, value in (("num_classes", num_classes), ("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"fit_gallery_classifier {name} must be a positive int, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"fit_gallery_classifier lr must be a positive number, got {lr!r}")


def _class_means(x: torch.Tensor, labels: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """``(C, D)`` unit-norm class means of ``x``; classes without samples keep their ``init`` row."""
    sums = torch.zeros_like(init).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=init.shape[0])
    means = F.normalize(sums, dim=1)
    return torch.where((counts > 0).unsqueeze(1), means, init)


def fit_gallery_classifier(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                           num_classes: int, epochs: int = 30, lr: float = 0.1, scale: float = 32.0,
                           margin: float = 0.3, batch_size: int = 128, seed: int = 0,
                           device: str | torch.device = "cpu") -> torch.Tensor:
    """Train the gallery classifier used by BCT/LCE: an ArcFace head on FROZEN gallery features.

    The head starts at the L2-normalised class means of ``features`` (classes without samples keep
    the seeded Gaussian init of :class:`ArcFaceHead`), then runs ``epochs`` passes of SGD
    (momentum 0.9, no weight decay) over mini-batches shuffled by a private generator seeded with
    ``seed``. Starting at the class means makes convergence reliable for any number of classes;
    the ArcFace fine-tuning then pushes the class weights apart by the margin. The result depends
    only on the arguments (given the device's arithmetic).

    Args:
        features: ``(N, D)`` float gallery features (unit-norm rows expected), NumPy or torch.
        labels: ``(N,)`` integer class indices in ``[0, num_classes)``.
        num_classes: ``C``.
        epochs, lr, batch_size: SGD schedule (constant ``lr``).
        scale, margin: ArcFace ``s`` and ``m``.
        seed: seeds the head's init and the shuffling.
        device: where to train.

    Returns:
        ``(C, D)`` float32 CPU tensor with unit-norm rows, detached.

    Raises:
        ShapeError: ``features`` not ``(N, D)`` or ``labels`` not ``(N,)`` integers.
        CorruptDataError: ``features`` contain NaN/inf.
        ConfigError: a label outside ``[0, num_classes)``, or a bad count/``lr``/``scale``/``margin``.
    """
    _validate_fit_args(num_classes=num_classes, epochs=epochs, lr=lr, batch_size=batch_size)
    _check_scale_margin(scale, margin)
    x = _as_features(features)
    y = torch.as_tensor(np.array(labels) if not isinstance(labels, torch.Tensor) else labels).cpu()
    y = _check_labels(y, batch=x.shape[0], num_classes=num_classes)
    dev = resolve_device(device)
    head = ArcFaceHead(embed_dim=x.shape[1], num_classes=num_classes, scale=scale, margin=margin, seed=seed)
    with torch.no_grad():
        head.weight.copy_(_class_means(F.normalize(x, dim=1), y, head.weight))
    head.to(dev).train()
    x, y = x.to(dev), y.to(dev)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen).to(dev)
            for start in range(0, x.shape[0], batch_size):
                idx = order[start:start + batch_size]
                opt.zero_grad(set_to_none=True)
                head(x[idx], y[idx]).backward()
                opt.step()
    return F.normalize(head.weight.detach().float(), dim=1).cpu()


def bct_loss(q: torch.Tensor, labels: torch.Tensor, *, gallery_weight: torch.Tensor,
             scale: float = 32.0, margin: float = 0.3) -> torch.Tensor:
    """BCT: ArcFace of the query embedding against the frozen gallery classifier.

    Args:
        q: ``(B, d)`` query embeddings (normalised inside).
        labels: ``(B,)`` integer classes.
        gallery_weight: ``(C, d)`` gallery classifier (e.g. from :func:`fit_gallery_classifier`);
            detached, never trained.

    Returns:
        Scalar float32 loss; gradient flows into ``q`` only.

    Raises:
        ShapeError, ConfigError: as :func:`~asymfuse.cloud.losses.arcface.arcface_logits`.
    """
    if not isinstance(gallery_weight, torch.Tensor):
        raise ShapeError("gallery_weight must be a (C, d) torch.Tensor; build it with fit_gallery_classifier")
    return arcface_loss(q, gallery_weight.detach(), labels, scale=scale, margin=margin)


def reg_loss(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """REG: batch mean of ``||q_i - g_i||^2``.

    Args:
        q: ``(B, d)`` query embeddings (used as given, unit-norm expected).
        g: ``(B, d)`` gallery embeddings of the same images (detached).

    Returns:
        Scalar float32 loss.

    Raises:
        ShapeError: ``q`` and ``g`` differ in shape or are not 2-D.
    """
    _check_pair(q, g)
    with _fp32(q.device):
        diff = q.float() - g.detach().float()
        return (diff * diff).sum(dim=1).mean()


def lce_loss(q: torch.Tensor, g: torch.Tensor, labels: torch.Tensor, *, gallery_weight: torch.Tensor,
             scale: float = 32.0, margin: float = 0.3, boundary_weight: float = 1.0) -> torch.Tensor:
    """LCE: the aligned-classifier term plus ``boundary_weight`` times a boundary term.

    Our reading of "align the classifiers and add a boundary term":

    - *aligned classifier*: the query net is classified by the gallery's frozen classifier
      (ArcFace of ``q`` against ``gallery_weight``, as in :func:`bct_loss`), so both models share
      one set of class centres ``w_c``;
    - *boundary*: each query embedding must lie at least as close (cosine) to its class centre
      ``w_y`` as the gallery embedding of the same image does:
      ``mean_i relu(cos(g_i, w_{y_i}) - cos(q_i, w_{y_i}))``. It is zero once the query is inside
      the gallery's class boundary.

    Args:
        q: ``(B, d)`` query embeddings; g: ``(B, d)`` gallery embeddings (detached);
        labels: ``(B,)`` integer classes; gallery_weight: ``(C, d)`` (detached).
        boundary_weight: ``>= 0``.

    Returns:
        Scalar float32 loss.

    Raises:
        ShapeError: mismatched shapes. ConfigError: labels out of range, bad
        ``scale``/``margin``/``boundary_weight``.
    """
    if not (isinstance(boundary_weight, (int, float)) and math.isfinite(boundary_weight) and boundary_weight >= 0):
        raise ConfigError(f"lce boundary_weight must be a finite number >= 0, got {boundary_weight!r}")
    _check_pair(q, g)
    aligned = bct_loss(q, labels, gallery_weight=gallery_weight, scale=scale, margin=margin)
    with _fp32(q.device):
        centres = F.normalize(gallery_weight.detach().float(), dim=1)[labels.long().to(q.device)]
        cos_q = (F.normalize(q.float(), dim=1) * centres).sum(dim=1)
        cos_g = (F.normalize(g.detach().float(), dim=1) * centres).sum(dim=1)
        boundary = F.relu(cos_g - cos_q).mean()
        return aligned + boundary_weight * boundary


def _topk_neighbours(g: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k)`` int64 indices of the ``k`` bank rows with the largest ``g . bank_j`` (``k <= N``)."""
    best_s, best_i = (g @ bank[:CSD_CHUNK].float().t()).topk(min(k, CSD_CHUNK), dim=1)
    for start in range(CSD_CHUNK, bank.shape[0], CSD_CHUNK):
        block = bank[start:start + CSD_CHUNK].float()
        s, i = (g @ block.t()).topk(min(k, block.shape[0]), dim=1)
        best_s, pos = torch.cat([best_s, s], dim=1).topk(k, dim=1)
        best_i = torch.cat([best_i, i + start], dim=1).gather(1, pos)
    return best_i


def csd_loss(q: torch.Tensor, g: torch.Tensor, *, bank: torch.Tensor, k: int = 16,
             t_teacher: float = 0.01, t_student: float = 1.0) -> torch.Tensor:
    """CSD: keep the gallery model's nearest-neighbour structure in the query space.

    Teacher: ``s_t = g . bank^T``; the top-``k`` bank rows per image and
    ``p_t = softmax(s_t[topk] / t_teacher)``. Student: ``s_s = q . bank[topk]^T`` over the SAME
    neighbours, ``log p_s = log_softmax(s_s / t_student)``. Loss: ``KL(p_t || p_s)`` summed over the
    ``k`` neighbours and averaged over the batch. ``q`` and ``g`` are L2-normalised here; the bank is
    used as given. The bank is scored in chunks of ``CSD_CHUNK`` rows to bound memory.

    Args:
        q: ``(B, d)`` query embeddings; g: ``(B, d)`` gallery embeddings of the same images.
        bank: ``(N, d)`` unit-norm frozen gallery features of the training set.
        k: neighbours per image, ``1 <= k <= N``.
        t_teacher, t_student: temperatures ``> 0`` (paper: 0.01 and 1).

    Returns:
        Scalar float32 loss; gradient flows into ``q`` only (``g`` and ``bank`` are detached).

    Raises:
        ShapeError: mismatched shapes. ConfigError: ``k`` outside ``[1, N]`` or a temperature ``<= 0``.
    """
    _check_pair(q, g)
    _check_matrix("bank", bank, dim=q.shape[1])
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= bank.shape[0]:
        raise ConfigError(f"csd k must be an int in [1, {bank.shape[0]}] (the bank size), got {k!r}; "
                          "lower csd_k or use a larger training set")
    for name, t in (("t_teacher", t_teacher), ("t_student", t_student)):
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ConfigError(f"csd {name} must be a positive number, got {t!r}; the paper uses 0.01 / 1")
    with _fp32(q.device):
        bank = bank.detach().to(q.device)
        gn = F.normalize(g.detach().float(), dim=1)
        qn = F.normalize(q.float(), dim=1)
        with torch.no_grad():
            neighbours = bank[_topk_neighbours(gn, bank, k)].float()  # (B, k, d)
            log_p_t = F.log_softmax(torch.einsum("bd,bkd->bk", gn, neighbours) / t_teacher, dim=1)
        log_p_s = F.log_softmax(torch.einsum("bd,bkd->bk", qn, neighbours) / t_student, dim=1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
