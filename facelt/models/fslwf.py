"""Few-shot learning without forgetting (FSLwF) as a stage-2 head for long-tailed recognition.

Gidaris & Komodakis, "Dynamic Few-Shot Visual Learning without Forgetting", CVPR 2018.  The paper
trains (1) a recogniser with a cosine-similarity classifier with a learnable scale over the base
classes, then (2) a *weight generator* that writes the classifier weight of a new class from a few
of its examples, trained on "fake novel" classes drawn from the base classes.  Adapted here to a
long-tailed training set (all classes are seen in training, some with very few images):

* The representation is the plain model's stage 1, frozen (like cRT); this head trains the cosine
  classifier ``logits = s * cos(v, w_k)`` (base weights ``W``, ``K x d``, learnable scale ``s``
  starting at 10) jointly with the generator, with class-aware sampling.
* Generator (the paper's attention-based one): for a support of class ``k`` with L2-normalised
  mean feature ``z_k``::

      w'_k = phi_avg * z_k + phi_att * sum_b Att(phi_q z_k, k_b) * W_b / ||W_b||
      Att  = softmax over the allowed classes b of gamma * cos(phi_q z_k, k_b)

  ``phi_avg``, ``phi_att`` are ``d``-vectors (element-wise, initialised to 1), ``phi_q`` a ``d x d``
  linear map (initialised to the identity), ``k_b`` one learnable key per class and ``gamma`` a
  learnable temperature (initialised to 10).  The support mean is the mean of the *raw* features,
  normalised (the paper averages normalised features): so the per-class mean features the
  trainer computes for the ``centroids`` buffer are the support statistic at evaluation.
* Training, per batch (the class-aware sampler gives ``samples_per_class`` consecutive images of
  a class): each class present with at least two images becomes "fake novel" with probability
  ``fake_novel_prob``; the other classes are this batch's base classes and the attention reads
  only their weights (as the paper's episodes do; so each fake novel class is always excluded
  from its own attention).  A fake novel class's weight is generated twice: for the images of
  *other* classes from all its batch images (its column of the logits is replaced, so a generated
  weight that fires on everything is penalised), and for each of its *own* images ``i`` from the
  other images of the class (leave-one-out mean), its own-class logit becoming
  ``s * cos(v_i, w'_i)``.  Cost: the ``B x K`` logits, a ``B x K`` attention and one ``K x d``
  weight copy (``O(B x K + K x d)`` memory), never ``B x K x d``.
* Evaluation: classes with fewer than ``novel_max_count`` training images are *novel*: their
  weight is generated from their class-mean feature (all their training images) with attention
  over the base classes only (the paper's memory of base weights); base classes keep their
  learned ``W``.  The effective ``K x d`` weight matrix is generated in chunks of novel classes
  (``chunk x K`` attention) and cached until a parameter or buffer changes.

Protocol with the trainer: ``init_centroids(means)`` fills the ``centroids`` buffer and
``init_class_counts(counts)`` the ``class_counts`` buffer (both saved in the checkpoint).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facelt.errors import ConfigError
from facelt.models.heads import Head, copy_class_means

Aux = dict[str, torch.Tensor]

INIT_SCALE = 10.0
"""Initial classifier scale ``s`` and attention temperature ``gamma`` (the paper's value)."""
ATTENTION_CHUNK_ELEMENTS = 1 << 24
"""Evaluation-time generation: novel classes per chunk = this / K (64 MB of float32 attention)."""


def batch_class_sums(v: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classes present in the batch and their feature sums: ``(classes (U,), inverse (B,),
    counts (U,), sums (U, d))`` with ``classes[inverse] == labels``."""
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(classes), v.shape[1], dtype=v.dtype, device=v.device)
    return classes, inverse, counts, sums.index_add(0, inverse, v)


def _leave_one_out(v: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor,
                   sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    support = counts[inverse] - 1
    means = (sums[inverse] - v) / support.clamp_min(1).unsqueeze(1).to(v.dtype)
    return means, support


def leave_one_out_means(v: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``i``: the mean of the *other* rows with ``labels[i]``, and how many there are.

    Returns ``(means (B, d), support (B,))``; rows whose class has no other row get a zero mean and
    support 0.  Sums are taken over the classes present in the batch (``U x d``, ``U <= B``).
    """
    _, inverse, counts, sums = batch_class_sums(v, labels)
    return _leave_one_out(v, inverse, counts, sums)


class FSLwFHead(Head):
    """Cosine classifier with learnable scale + attention-based few-shot weight generator."""

    #: the generator's parameters get no gradient in a batch that draws no fake-novel class
    #: (DDP must then look for unused parameters)
    may_skip_parameters = True
    needs_centroids = True
    needs_class_counts = True

    def __init__(self, in_dim: int, num_classes: int, novel_max_count: int = 20,
                 fake_novel_prob: float = 0.5) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"stage2.head fslwf needs at least 2 classes, got {num_classes}")
        if not 0.0 <= fake_novel_prob <= 1.0:
            raise ConfigError(f"stage2.fslwf.fake_novel_prob must be in [0, 1], "
                              f"got {fake_novel_prob}")
        if novel_max_count < 0:
            raise ConfigError(f"stage2.fslwf.novel_max_count must be >= 0, got {novel_max_count}")
        self.novel_max_count = int(novel_max_count)
        self.fake_novel_prob = float(fake_novel_prob)
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim).uniform_(-bound, bound))
        self.scale = nn.Parameter(torch.tensor(INIT_SCALE))
        self.keys = nn.Parameter(torch.randn(num_classes, in_dim) * math.sqrt(2.0 / in_dim))
        self.query = nn.Linear(in_dim, in_dim)
        with torch.no_grad():
            self.query.weight.copy_(torch.eye(in_dim))
            self.query.bias.zero_()
        self.att_temperature = nn.Parameter(torch.tensor(INIT_SCALE))
        self.phi_avg = nn.Parameter(torch.ones(in_dim))
        self.phi_att = nn.Parameter(torch.ones(in_dim))
        self.register_buffer("centroids", torch.zeros(num_classes, in_dim))
        self.register_buffer("class_counts", torch.full((num_classes,), -1, dtype=torch.long))
        self._cache: tuple[tuple, torch.Tensor] | None = None

    # ------------------------------------------------------------------ statistics from the trainer
    def init_centroids(self, centroids: torch.Tensor) -> None:
        """Copy the per-class mean features ``(K, d)`` (the supports of novel classes)."""
        copy_class_means(self.centroids, centroids)
        self._cache = None

    @torch.no_grad()
    def init_class_counts(self, counts: torch.Tensor) -> None:
        """Training images per class ``(K,)``: classes under ``novel_max_count`` are novel."""
        counts = torch.as_tensor(counts, dtype=torch.long)
        if tuple(counts.shape) != tuple(self.class_counts.shape):
            raise ValueError(f"class counts have shape {tuple(counts.shape)}, "
                             f"expected {tuple(self.class_counts.shape)}")
        if bool((counts < self.novel_max_count).all()):
            raise ConfigError(f"stage2.fslwf.novel_max_count = {self.novel_max_count} makes every "
                              f"class novel (largest class: {int(counts.max())} images): no base "
                              f"class is left to generate novel weights from")
        self.class_counts.copy_(counts.to(self.class_counts.device))

    def novel_mask(self) -> torch.Tensor:
        """``(K,)`` bool: classes whose weight is generated at evaluation."""
        if bool((self.class_counts < 0).any()):
            raise ConfigError("fslwf head: class counts were never set (init_class_counts); "
                              "the checkpoint was not trained by the stage-2 trainer")
        return self.class_counts < self.novel_max_count

    # ------------------------------------------------------------------ the generator
    def attention(self, z: torch.Tensor, own: torch.Tensor,
                  allowed: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, K)`` attention of normalised support means ``z`` over the class keys: softmax of
        ``gamma * cos(phi_q z, k_b)``, with each row's ``own`` class and (when given) every class
        where ``allowed`` is False excluded."""
        q = F.normalize(self.query(z), dim=1)
        sim = self.att_temperature * (q @ F.normalize(self.keys, dim=1).t())
        mask = torch.zeros_like(sim, dtype=torch.bool)
        mask[torch.arange(len(own), device=own.device), own] = True
        if allowed is not None:
            mask |= ~allowed.unsqueeze(0)
        return torch.softmax(sim.masked_fill(mask, float("-inf")), dim=1)

    def generate(self, support_mean: torch.Tensor, own: torch.Tensor,
                 allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Generated weights ``(n, d)`` from support means ``(n, d)`` of classes ``own``."""
        z = F.normalize(support_mean, dim=1)
        att = self.attention(z, own, allowed)
        recalled = att @ F.normalize(self.weight, dim=1)
        return self.phi_avg * z + self.phi_att * recalled

    # ------------------------------------------------------------------ weights and logits
    def _state_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))

    def effective_weight(self) -> torch.Tensor:
        """``(K, d)`` normalised evaluation weights: generated for novel classes, ``W`` for base."""
        cacheable = not torch.is_grad_enabled()
        key = self._state_key()
        if cacheable and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        novel = self.novel_mask()
        weight = F.normalize(self.weight, dim=1)
        idx = torch.nonzero(novel, as_tuple=True)[0]
        if len(idx):
            step = max(1, ATTENTION_CHUNK_ELEMENTS // weight.shape[0])
            rows = [self.generate(self.centroids[idx[s:s + step]], idx[s:s + step], ~novel)
                    for s in range(0, len(idx), step)]
            weight = weight.index_copy(0, idx, F.normalize(torch.cat(rows), dim=1))
        if cacheable:
            self._cache = (key, weight)
        return weight

    def _draw_fake_novel(self, counts: torch.Tensor) -> torch.Tensor:
        """``(U,)`` bool over the batch's classes: fake novel this batch.  Only classes with at
        least two images can be drawn (each image needs a support); one class of the model is
        always left base so the attention has a memory to read."""
        drawn = (torch.rand(len(counts), device=counts.device) < self.fake_novel_prob) & (counts > 1)
        if len(counts) == self.weight.shape[0] and bool(drawn.all()):
            drawn[torch.randint(len(counts), (1,)).item()] = False
        return drawn

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Aux]:
        vn = F.normalize(v, dim=1)
        if not self.training or labels is None:
            return self.scale * vn @ self.effective_weight().t(), {}
        classes, inverse, counts, sums = batch_class_sums(v, labels)
        drawn = self._draw_fake_novel(counts)
        novel = classes[drawn]
        base = torch.ones(self.weight.shape[0], dtype=torch.bool, device=v.device)
        base[novel] = False
        # every other image of the batch sees a fake novel class through the weight generated from
        # all of its batch images; generation runs even when none is drawn, so every generator
        # parameter joins the graph (DDP)
        full = self.generate(sums[drawn] / counts[drawn].unsqueeze(1).to(v.dtype), novel, base)
        weight = F.normalize(self.weight, dim=1).index_copy(0, novel, F.normalize(full, dim=1))
        logits = self.scale * vn @ weight.t()
        # its own images see the weight generated from the others (leave-one-out support)
        rows = torch.nonzero(drawn[inverse], as_tuple=True)[0]
        loo, _ = _leave_one_out(v[rows], inverse[rows], counts, sums)
        own = labels[rows]
        generated = F.normalize(self.generate(loo, own, base), dim=1)
        values = self.scale * (vn[rows] * generated).sum(1)
        logits = logits.index_put((rows, own), values.to(logits.dtype))
        return logits, {"fake_novel_rows": rows}
