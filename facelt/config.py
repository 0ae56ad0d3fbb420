"""Typed run configuration: dataclasses filled from YAML, then from ``--set key=value`` overrides.

A YAML file under ``configs/`` sets the defaults of a recipe and flags override them (as timm's
train.py does), but every key is checked against the dataclasses below: an unknown key, a wrong type or
a value outside its choices is a :class:`~facelt.errors.ConfigError` that names the file and the
dotted key.  There are no string imports: component names (``model.backbone``, ``stageN.head``,
``stageN.loss``, ``stageN.aux_loss``) stay plain strings here and are looked up in explicit tables
(``facelt.models.backbone_table.BACKBONES``, ``facelt.models.head_table.HEADS``,
``facelt.losses.classification.LOSSES``, ``facelt.losses.feature.AUX_LOSSES``), which check a name
when they build (:func:`check_name`); ``facelt.models.components.check_component_names`` checks
every name of a config at once, before any long work.  So this module imports no table (and no
torch): ``facelt config`` and the CLI's start stay light.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union, get_args, get_origin

import yaml

from facelt.errors import ConfigError
from facelt.utils.safe_yaml import MAX_YAML_BYTES, load_yaml_text


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut short (``reprlib``'s limits, then ``limit`` characters): error
    messages show a value, not all of it."""
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 60


@dataclass
class DataConfig:
    """Where the images are and how they look."""

    format: Literal["list", "rec"] = "list"
    """``list``: OLTR list files (``path label`` lines) over an image root; ``rec``: MXNet RecordIO
    prefixes in the insightface layout (``PREFIX.rec``/``PREFIX.idx``)."""
    root: str = ""
    """Image root the list paths are relative to (``format: list``)."""
    open_root: str = ""
    """Image root for the open-set list (default: ``root``)."""
    splits_dir: str = ""
    """Folder the four list files are relative to (default: current directory)."""
    train: str = ""
    val: str = ""
    test: str = ""
    open: str = ""
    """The four splits: list files (``format: list``) or rec prefixes (``format: rec``). ``val`` and
    ``open`` may be empty."""
    num_classes: int = field(default=0, metadata={"ge": 0})
    """Number of known classes; 0 = infer from the training split."""
    class_names: str = ""
    """Optional text file with one class name per line, in label order."""
    image_size: int = field(default=224, metadata={"ge": 1})
    channels: Literal[1, 3] = 3
    mean: list[float] = field(default_factory=list)
    """Per-channel normalisation mean (default: ImageNet for RGB, 0.5 for grey)."""
    std: list[float] = field(default_factory=list)
    num_workers: int = field(default=2, metadata={"ge": 0})
    """Loader worker processes (0: load in the main process); at most the machine's cores are
    started (``facelt.data.build.fitted_workers``: min(num_workers, cores))."""
    augment: bool = True
    """Random training augmentation (crop/flip/colour for lists, flip for faces); false: the test
    transform is used for training too (deterministic runs)."""


@dataclass
class ModelConfig:
    """The network: backbone -> (modulated attention) -> neck -> head."""

    backbone: str = "resnet10"
    """A name of the backbone table, ``facelt.models.backbone_table.BACKBONES`` (an unknown name
    is refused with the list of known ones)."""
    face_stem: bool = False
    """insightface-style stem (3x3 stride-1 conv, no max-pool): 112x112 faces give a 7x7 map."""
    neck: Literal["pool", "face"] = "pool"
    """``pool``: global average pool; ``face``: BN-dropout-FC-BN to ``embedding_dim`` (insightface)."""
    embedding_dim: int = field(default=512, metadata={"ge": 1})
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    pretrained: str = ""
    """Local file with pretrained backbone weights (nothing is downloaded): ImageNet weights, or
    an arcface_torch ``backbone.pth`` with ``pretrained_format: insightface``."""
    pretrained_format: Literal["auto", "torchvision", "caffe", "insightface"] = "auto"
    """``insightface``: an arcface_torch IResNet ``backbone.pth`` (trunk + its bn2/fc/features
    embedding layer, which loads into the ``face`` neck); needs an ``iresnet*`` backbone."""
    neck_bn_eps: Optional[float] = field(default=None, metadata={"gt": 0})
    """BatchNorm eps of the ``face`` neck. ``null``: the convention of the weights it starts
    from: 1e-5 with ``pretrained_format: insightface`` (arcface_torch's ``bn2`` / ``features``,
    as in its whole IResNet), otherwise 2e-5 (insightface's MXNet-trained models)."""


@dataclass
class CosineConfig:
    """The cosine classifier (``cosine`` head, and the classifier of the ``meta`` head)."""

    scale: float = field(default=16.0, metadata={"gt": 0})
    """Logit scale of ``squash(x) . w_k / ||w_k||``."""


@dataclass
class MetaConfig:
    """The OLTR meta-embedding head (``head: meta``)."""

    reach_scale: float = field(default=10.0, metadata={"gt": 0})
    """``s`` of ``v_meta = (s / gamma) (v + e * memory)``."""
    hallucinator_init: Literal["stage1", "random"] = "stage1"
    """``stage1``: the hallucinator ``T_hal`` starts as the stage-1 linear classifier (weight and
    bias; the reference's ``stage1_weights: True``), so the memory feature starts from stage 1's
    class posterior; needs ``init_from: stage1`` and a stage-1 classifier of the same shape.
    ``random``: a fresh Linear (the memory starts as a near-uniform centroid average)."""


@dataclass
class MarginConfig:
    """ArcFace / CosFace heads (``head: arcface | cosface``)."""

    s: float = field(default=64.0, metadata={"gt": 0})
    """Logit scale."""
    m: Optional[float] = field(default=None, metadata={"ge": 0})
    """Margin (angular for ArcFace, cosine for CosFace); empty (null): the head's own default,
    0.5 for ArcFace (Deng et al. 2019) and 0.35 for CosFace (Wang et al. 2018; arcface_torch's
    face recipes use 0.4)."""


@dataclass
class FSLwFConfig:
    """The few-shot weight generator head (``head: fslwf``)."""

    novel_max_count: int = field(default=20, metadata={"ge": 0})
    """Classes with fewer training images are novel; their weights are generated."""
    fake_novel_prob: float = field(default=0.5, metadata={"ge": 0, "le": 1})
    """Probability that a class of a training batch is treated as fake novel."""


@dataclass
class FocalConfig:
    """``loss: focal``."""

    gamma: float = field(default=2.0, metadata={"ge": 0})


@dataclass
class LogitAdjustedConfig:
    """``loss: logit_adjusted``: logits + tau * log prior."""

    tau: float = 1.0


@dataclass
class NormedLinearConfig:
    """The normalised linear classifier (``head: normed_linear``; each expert of ``head: ride``)."""

    scale: float = field(default=1.0, metadata={"gt": 0})
    """``logits = scale * cos(v, w_k)``: 1 as LDAM-DRW's ``NormedLinear`` (its loss multiplies by
    ``ldam.s``), 30 as RIDE's experts (then ``ldam.scale_logits: false``)."""


@dataclass
class LDAMConfig:
    """``loss: ldam`` (and the LDAM-DRW part of ``loss: ride``): per-class margins
    ``max_m * (n_min / n_k)^(1/4)``, scale ``s``, deferred re-weighting (facelt/losses/ldam.py)."""

    max_m: float = field(default=0.5, metadata={"gt": 0})
    s: float = field(default=30.0, metadata={"gt": 0})
    scale_logits: bool = True
    """Multiply the head's logits by ``s`` (cosine logits in); false when the head already did
    (``normed_linear.scale`` = ``s``)."""
    drw_epoch: int = field(default=-1, metadata={"ge": -1})
    """First epoch (0-based) with the effective-number class weights (DRW); -1: never."""
    beta: float = field(default=0.9999, metadata={"ge": 0, "lt": 1})
    """Effective-number beta of the DRW weights."""


@dataclass
class RIDEConfig:
    """``loss: ride``: LDAM-DRW per expert (the ``ldam`` section) + the distribution-aware
    diversity term (facelt/losses/ride.py)."""

    base_loss_factor: float = 1.0
    diversity_factor: float = -0.2
    diversity_temperature: float = field(default=1.0, metadata={"gt": 0})
    reweight_factor: float = field(default=0.05, metadata={"ge": 0, "le": 1})


@dataclass
class LabelAwareSmoothingConfig:
    """``loss: label_aware_smoothing`` (MiSLAS): per-class smoothing from ``smooth_head`` (largest
    class) to ``smooth_tail`` (smallest) along ``shape``."""

    smooth_head: float = field(default=0.3, metadata={"ge": 0, "lt": 1})
    smooth_tail: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    shape: Literal["concave", "linear", "convex", "exp"] = "concave"
    power: Optional[float] = field(default=None, metadata={"gt": 0})
    """``shape: exp`` only."""


@dataclass
class ClassBalancedConfig:
    """``loss: class_balanced`` (weight balancing's stage 2: the reference's softmax ``CB_loss``)."""

    beta: float = field(default=0.9999, metadata={"ge": 0, "lt": 1})


@dataclass
class PaCoConfig:
    """``head: paco`` / ``loss: paco`` (GPaCo): classifier centres inside a supervised contrastive
    loss over two views of each image and a queue of past keys (facelt/losses/paco.py)."""

    alpha: float = field(default=0.05, metadata={"ge": 0})
    """Weight of the sample-sample positives."""
    beta: float = field(default=1.0, metadata={"ge": 0})
    """Weight of the sample-centre positive."""
    gamma: float = field(default=1.0, metadata={"ge": 0})
    """Weight of the samples in the denominator."""
    temperature: float = field(default=0.2, metadata={"gt": 0})
    """The reference's ``moco-t``."""
    queue_size: int = field(default=8192, metadata={"ge": 1})
    projection_dim: int = field(default=128, metadata={"ge": 1})
    mlp: bool = True
    """MoCo v2's 3-layer MLP projection (else one Linear)."""
    log_prior: bool = True
    """Add ``log pi_c`` to the centre logits (the reference's long-tailed form)."""


@dataclass
class LWSConfig:
    """``head: lws``."""

    train_classifier: bool = False
    """False: stage 1's classifier stays frozen and only the scales learn (Kang et al.); true: it
    trains too, at ``classifier_lr * classifier_lr_factor`` (MiSLAS's stage 2: factor 0.05)."""
    classifier_lr_factor: float = field(default=1.0, metadata={"ge": 0})


@dataclass
class MixupConfig:
    """mixup of each training batch (MiSLAS's stage 1): one ``lam ~ Beta(alpha, alpha)`` per
    batch; ``alpha: 0`` (the default) is off."""

    alpha: float = field(default=0.0, metadata={"ge": 0})


@dataclass
class MaxNormConfig:
    """MaxNorm on the classifier's per-class weight norms (weight balancing's stage 2): radius
    ``min + thresh * (max - min)`` of the norms the stage starts from; ``thresh: null`` is off."""

    thresh: Optional[float] = field(default=None, metadata={"ge": 0, "le": 1})
    every: Literal["epoch", "step"] = "epoch"
    """Project after each epoch's steps (the reference) or after every optimizer step."""


@dataclass
class TwoViewConfig:
    """Two views of each training image in one batch (``loss: paco``): each view a random crop
    (``pad`` pixels of zero padding) and horizontal flip of the loaded image, drawn per image."""

    enabled: bool = False
    pad: int = field(default=4, metadata={"ge": 0})
    flip: bool = True


@dataclass
class CentroidLossConfig:
    """The discriminative-centroid loss, added for heads that keep centroids (``meta``)."""

    weight: float = field(default=0.01, metadata={"ge": 0})
    """Its weight (reference config 0.01; the paper's lambda 0.1); 0 freezes the centroids."""
    update: Literal["autograd", "reference"] = "reference"
    """How the attract term moves the centroids: the OLTR reference's center-loss-style update
    ``sum (c - v) / (1 + n_k) / B`` that ignores the loss weights (``reference``, the paper's
    recipe), or the loss's true gradient (``autograd``: ~0.09x as fast at weight 0.01)."""
    margin: float = field(default=10.0, metadata={"ge": 0})
    """Repel margin on the mean squared distance to the other classes' centroids."""
    repel_weight: float = field(default=0.01, metadata={"ge": 0})


@dataclass
class StageConfig:
    """One training stage of the two-stage OLTR recipe."""

    epochs: int = field(default=30, metadata={"ge": 1})
    batch_size: int = field(default=128, metadata={"ge": 1})
    sampler: Literal["instance", "class_aware"] = "instance"
    samples_per_class: int = field(default=4, metadata={"ge": 1})
    """Class-aware sampler: consecutive samples drawn from one class."""
    head: str = "linear"
    """A name of the head table, ``facelt.models.head_table.HEADS``. ``meta``: OLTR's
    meta-embedding head; ``lws``: stage 1's linear classifier frozen, one learnable scale per class
    (Kang et al. 2020); ``fslwf``: cosine classifier + attention-based few-shot weight generator
    (Gidaris & Komodakis 2018, see facelt/models/fslwf.py)."""
    cosine: CosineConfig = field(default_factory=CosineConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    margin: MarginConfig = field(default_factory=MarginConfig)
    fslwf: FSLwFConfig = field(default_factory=FSLwFConfig)
    normed_linear: NormedLinearConfig = field(default_factory=NormedLinearConfig)
    lws: LWSConfig = field(default_factory=LWSConfig)
    experts: int = field(default=1, metadata={"ge": 1})
    """Multi-expert body (RIDE): the backbone's later stages (ResNet ``layer3``-``layer4``, the
    small CNN's last block) ``experts`` times, each with fresh weights, after one shared early
    part; ``v`` is the experts' pooled features side by side (``experts * C``). Needs
    ``neck: pool`` and no attention; ``head: ride`` gives each expert its classifier."""
    loss: str = "ce"
    """Classification loss on the logits: a name of ``facelt.losses.classification.LOSSES``."""
    focal: FocalConfig = field(default_factory=FocalConfig)
    logit_adjusted: LogitAdjustedConfig = field(default_factory=LogitAdjustedConfig)
    ldam: LDAMConfig = field(default_factory=LDAMConfig)
    ride: RIDEConfig = field(default_factory=RIDEConfig)
    label_aware_smoothing: LabelAwareSmoothingConfig = field(
        default_factory=LabelAwareSmoothingConfig)
    class_balanced: ClassBalancedConfig = field(default_factory=ClassBalancedConfig)
    paco: PaCoConfig = field(default_factory=PaCoConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    maxnorm: MaxNormConfig = field(default_factory=MaxNormConfig)
    two_views: TwoViewConfig = field(default_factory=TwoViewConfig)
    aux_loss: str = "none"
    """Feature loss added to the classification loss (the paper's Table 3 baselines): a name of
    ``facelt.losses.feature.AUX_LOSSES``."""
    aux_loss_weight: float = field(default=0.01, metadata={"ge": 0})
    reinit_classifier: bool = True
    """With ``init_from: stage1``: start the classifier afresh (cRT, OLTR). False keeps stage 1's
    linear classifier (LWS needs it)."""
    attention: bool = False
    """Modulated attention after the backbone's last stage."""
    spatial_attention: Literal["reference", "conv"] = "reference"
    """Spatial attention of the modulated attention: ``reference``: a Linear over the flattened
    ``h*w*C`` map to ``h*w`` scores (position-specific, as the reference's ``fc_spatial`` over 7x7;
    the map size is fixed by the backbone and ``data.image_size``); ``conv``: a 1x1 convolution
    shared across positions (any map size)."""
    attention_init: Literal["reference", "identity"] = "reference"
    """Initialisation of the modulated attention's non-local block: ``reference`` (the OLTR
    code's: its ResNet init loop redraws all four attention convs from ``normal(0, sqrt(2 / n))``,
    ``n = k_h * k_w * out_channels``, so the attention is not the identity at start and stage 2's
    centroids are computed through it) or ``identity`` (the output conv at zero: ``f_att = f`` at
    start, facelt's former variant)."""
    fc_add: int = field(default=0, metadata={"ge": -1})
    """Width of ``ReLU(Linear)`` after the neck (the reference's ``use_fc: True``: 512); 0: none;
    -1 (stage 2): the same as ``stage1.fc_add`` (cRT / LWS on stage 1's features).
    It is part of the feature model: it trains at ``backbone_lr`` and ``freeze_backbone`` leaves
    it trainable (as the reference's ``fix`` does); stage 2 loads it from stage 1 when both have it."""
    init_from: Literal["none", "stage1"] = "none"
    """``stage1``: start from the stage-1 checkpoint's backbone (and neck)."""
    freeze_backbone: bool = False
    """Freeze backbone and neck weights; attention, fc_add, classifier and centroids train."""
    frozen_bn: Literal["train", "eval"] = "train"
    """BatchNorm of a frozen backbone: ``train`` (the reference, OLTR and classifier-balancing:
    the model stays in ``train()``, batches use their own statistics and the running statistics are
    re-estimated under the stage's sampler); ``eval``: running statistics frozen too."""
    init_weights: Literal["best", "last"] = "best"
    """With ``init_from: stage1``: start from stage 1's ``best.pt`` (best val top-1, as the reference's
    ``state_dict_best``) or its last epoch (``checkpoint.pt``). ``--init`` overrides both."""
    backbone_lr: float = field(default=0.1, metadata={"ge": 0})
    attention_lr: float = field(default=0.1, metadata={"ge": 0})
    classifier_lr: float = field(default=0.1, metadata={"ge": 0})
    centroids_lr: float = field(default=0.01, metadata={"ge": 0})
    momentum: float = field(default=0.9, metadata={"ge": 0, "le": 1})
    weight_decay: float = field(default=5e-4, metadata={"ge": 0})
    lr_schedule: Literal["step", "cosine", "poly", "cosine_annealing", "multistep"] = "step"
    """``step``: multiply by ``lr_gamma`` every ``lr_step`` epochs (OLTR); ``cosine``: cosine
    annealing to 0 over the stage's epochs, stepped at each epoch's start as classifier-balancing's
    cRT / LWS (10 epochs from 0.2: 0.195, 0.181, ..., 0.0049, 0); ``poly``: linear
    warmup over ``warmup_epochs``, then ``(1 - t)^poly_power`` decay to 0 (arcface_torch). The
    LR is set once per epoch. ``cosine_annealing``: ``(1 + cos(pi (epoch - w) / (epochs - w))) / 2``
    after ``w = warmup_epochs`` epochs of linear warmup ``(epoch + 1) / w`` (PyTorch's
    CosineAnnealingLR stepped after each epoch, so epoch 1 trains at the full LR: MiSLAS, weight
    balancing); ``multistep``: ``lr_gamma ** (milestones <= epoch)`` after the same warmup
    (LDAM-DRW, RIDE)."""
    lr_milestones: list[int] = field(default_factory=list, metadata={"ge": 1})
    """``multistep``: the 0-based epochs from which the LR is multiplied by ``lr_gamma`` once more."""
    nesterov: bool = False
    """Nesterov momentum (RIDE)."""
    lr_step: int = field(default=10, metadata={"ge": 1})
    """Step LR: multiply by ``lr_gamma`` every ``lr_step`` epochs."""
    lr_gamma: float = field(default=0.1, metadata={"gt": 0})
    warmup_epochs: int = field(default=0, metadata={"ge": 0})
    """Epochs of linear warmup: ``poly``: from ``1 / (warmup_epochs + 1)`` of the LR;
    ``cosine_annealing`` / ``multistep``: ``(epoch + 1) / warmup_epochs`` (LDAM-DRW, RIDE, GPaCo)."""
    poly_power: float = field(default=2.0, metadata={"gt": 0})
    centroid_loss: CentroidLossConfig = field(default_factory=CentroidLossConfig)
    checkpoint_every: int = field(default=0, metadata={"ge": 0})
    """Also write ``checkpoint.pt`` every N steps inside an epoch (0: at epoch ends only); a
    resumed run continues from that step (exactly, on the CPU with ``data.num_workers: 0``)."""
    max_steps_per_epoch: int = field(default=0, metadata={"ge": 0})
    """Cap on iterations per epoch (0: a full pass); for smoke runs."""
    grad_clip: float = field(default=0.0, metadata={"ge": 0})
    recalibrate_bn_batches: int = field(default=0, metadata={"ge": 0})
    """Stage 2 with centroids: re-estimate the BatchNorm running statistics of the body from this
    many training batches (weights fixed; facelt/train/precise_bn.py) before the centroids are
    computed in eval mode. 0: use stage 1's running statistics (the OLTR reference). After a
    short stage 1 they lag the weights and the eval-mode centroids explode."""
    divergence_factor: float = field(default=1e4, metadata={"ge": 0})
    """Divergence guard: stop with a TrainingError (no checkpoint written for it) when a step's
    loss exceeds this many times the median of the stage's first 5 steps (floored at 0.01);
    0 turns it off. A non-finite loss or embedding always stops the run."""
    shard_head: bool = False
    """Class-sharded head under torchrun (Partial-FC style, heads ``meta``, ``arcface``,
    ``cosface``, ``linear``): each process owns a contiguous slice of the classes and their
    classifier / centroid / hallucinator rows; checkpoints stay unsharded (facelt/parallel/strategy.py)."""
    sample_rate: float = field(default=1.0, metadata={"gt": 0, "le": 1})
    """With ``shard_head`` and a ``linear`` / ``arcface`` / ``cosface`` head: each step trains the
    classes of the batch and a random ``sample_rate`` share of the others (Partial FC)."""


@dataclass
class FaceEvalConfig:
    """Face identification inputs of ``facelt compare``'s face table (paths; empty: not used).

    With ``probes`` (and ``probe_list``, ``distractors``) each method is judged the MegaFace way:
    rank-1 per pseudo-shot bucket of the probe (training images with cosine > 0.7: many > 5, few
    2..5, one 1, zero 0), in full and per value of every extra column of ``probe_list``, at each
    of ``gallery_sizes``; ``eval.verification`` sets give verification accuracies; ``ijb_root``
    gives IJB TAR@FAR (1:1)."""

    probes: str = ""
    """Probe images: a rec prefix (``PREFIX.rec`` / ``PREFIX.idx``), rows in ``probe_list``'s order."""
    probe_list: str = ""
    """Probe CSV (``path,identity[,attribute columns]``), one row per probe image."""
    distractors: str = ""
    """Distractor images: a rec prefix."""
    gallery_sizes: list[int] = field(default_factory=lambda: [10, 100, 1000], metadata={"ge": 1})
    """Distractors in the gallery, one evaluation each (the first is the table's)."""
    ijb_root: str = ""
    """An IJB folder in insightface's layout (``meta/``, ``loose_crop/``): TAR@FAR of the 1:1
    protocol."""
    ijb_target: Literal["IJBB", "IJBC"] = "IJBC"


@dataclass
class EvalConfig:
    threshold: float = field(default=0.1, metadata={"ge": 0, "le": 1})
    """Open-set rejection: predict ``unknown`` when max softmax < threshold."""
    many: int = field(default=100, metadata={"ge": 0})
    """Classes with more than ``many`` training images are *many-shot*."""
    few: int = field(default=20, metadata={"ge": 0})
    """Classes with fewer than ``few`` training images are *few-shot*."""
    shot_rule: Literal["paper", "oltr_code"] = "paper"
    """Which side of the lines a class at exactly ``many`` / ``few`` images falls on:
    ``paper``: many > ``many``, few < ``few`` (the paper, classifier-balancing, later work);
    ``oltr_code``: many >= ``many``, few <= ``few`` (the OLTR reference code's shot_acc).
    Every report names the rule (facelt/data/shots.py)."""
    batch_size: int = field(default=256, metadata={"ge": 1})
    sweep: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(21)],
                               metadata={"ge": 0, "le": 1})
    verification: list[str] = field(default_factory=list)
    """Face verification sets (insightface ``.bin``) evaluated during training, at each epoch end
    and every ``verify_every`` steps, on rank 0: a bare name (``lfw``, ``cfp_fp``, ``agedb_30``)
    is ``<name>.bin`` beside the training rec / list (as in ``faces_emore/``); anything with a
    ``/`` or ending in ``.bin`` is a path. Empty: none."""
    verify_every: int = field(default=0, metadata={"ge": 0})
    """Also evaluate ``verification`` every N optimizer steps of the stage (0: epoch ends only)."""
    faces: FaceEvalConfig = field(default_factory=FaceEvalConfig)
    """Face identification inputs of ``facelt compare``'s face table."""


@dataclass
class LogConfig:
    tensorboard: bool = False
    """Write TensorBoard scalars (loss, learning rates, accuracies, verification) to
    ``OUT/stageN/tensorboard/`` beside metrics.jsonl (needs ``pip install 'facelt[tensorboard]'``)."""


@dataclass
class Config:
    name: str = "run"
    seed: int = field(default=0, metadata={"ge": 0})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    """The autocast dtype under ``amp``: ``float16`` with a gradient scaler (any CUDA GPU), or
    ``bfloat16`` without one (Ampere and later; float32's range, so no loss scaling)."""
    out: str = ""
    """Default output folder (``--out`` overrides); empty: ``runs/<name>``."""
    log_every: int = field(default=50, metadata={"ge": 1})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(
        epochs=60, lr_step=20, sampler="class_aware", head="meta", attention=True,
        init_from="stage1", backbone_lr=0.01, attention_lr=0.01))
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def stage(self, n: int) -> StageConfig:
        if n not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {n}")
        return self.stage1 if n == 1 else self.stage2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Conversion from plain data with key-named errors
# ----------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, typing.List):
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, where: str, default: Any = None) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping of {tp.__name__} keys, "
                              f"got {type(value).__name__}")
        return _build(tp, value, key, where, default)
    if origin is Literal:
        choices = get_args(tp)
        # the choice itself, of its type: 3.0 is not the literal 3 (a float channel count breaks
        # the tensor shapes later), True is not 1
        if not any(type(c) is type(value) and c == value for c in choices):
            raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {brief(value)}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {brief(value)}")
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {brief(value)}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {brief(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {brief(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = parse_float(value, key, where)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {brief(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: '{key}' must be a finite number, got {brief(value)}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be a string, got {brief(value)}")
        return str(value)
    raise ConfigError(f"{where}: '{key}' has unsupported type {tp!r}")  # pragma: no cover


def check_name(name: str, table: Mapping[str, Any], key: str, kind: str, where: str = "") -> str:
    """``name`` when it is an entry of the component ``table`` (backbones, heads, losses: each
    table is the one list of its names); otherwise a :class:`ConfigError` naming the key, the name
    and the known names: ``stage2.head: unknown head 'foo' (known: linear, cosine, ...)``.
    ``where`` (a file, an overlay) goes first when given."""
    if isinstance(name, str) and name in table:
        return name
    at = f"{where}: " if where else ""
    raise ConfigError(f"{at}{key}: unknown {kind} {name!r} (known: {', '.join(table)})")


_FLOAT_RE = re.compile(r"[+-]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?\Z")


def parse_float(text: str, key: str, where: str) -> float:
    """A number as a person writes it (``5e-4``, ``5E-2``, ``.5``, ``1_000.0``): YAML 1.1 reads
    ``5e-4`` (no dot) as a string, so strings are parsed here; anything else is a ConfigError."""
    t = text.strip()
    if not _FLOAT_RE.match(t):
        raise ConfigError(f"{where}: '{key}' must be a number, got {text!r}")
    return float(t.replace("_", ""))


_RULES = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
          "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def check_field_rules(value: Any, metadata: Any, key: str, where: str) -> None:
    """Check ``value`` (or each item of a list) against a field's range rules
    (``metadata={"ge": 1}``, ``gt``, ``le``, ``lt``); a ConfigError names the key, value and rule."""
    rules = [(name, metadata[name]) for name in _RULES if name in metadata]
    if not rules or value is None:
        return
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        for name, bound in rules:
            sign, ok = _RULES[name]
            if not ok(v, bound):
                whole = " and ".join(f"{_RULES[n][0]} {b}" for n, b in rules)
                at = f"{key}[{i}]" if isinstance(value, list) else key
                raise ConfigError(f"{where}: '{at}' must be {whole}, got {brief(v)}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls, data: dict, prefix: str, where: str, default: Any = None):
    """Build ``cls`` from ``data`` on top of ``default`` (an instance holding this field's defaults:
    ``stage2`` has other defaults than ``stage1``)."""
    hints = _hints(cls)
    base = default if default is not None else cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs = {}
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"{where}: unknown key '{dotted}'{renamed_key_hint(dotted)} (known "
                              f"keys of {prefix or 'the top level'}: {', '.join(sorted(names))})")
        kwargs[k] = _convert(v, hints[k], dotted, where, getattr(base, k))
        check_field_rules(kwargs[k], fields[k].metadata, dotted, where)
    return dataclasses.replace(base, **kwargs)


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(tree: dict, dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    node = tree
    cls = Config
    for i, part in enumerate(parts):
        hints = _hints(cls) if cls is not None else {}
        if part not in hints:
            known = ", ".join(sorted(hints))
            dotted_here = '.'.join(parts[:i + 1])
            raise ConfigError(f"{where}: unknown key '{dotted_here}'{renamed_key_hint(dotted)} "
                              f"(known: {known})")
        tp = hints[part]
        if i == len(parts) - 1:
            node[part] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{where}: '{'.'.join(parts[:i + 1])}' is not a section")
        node = node.setdefault(part, {})
        cls = tp


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (key, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set: expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    value = load_yaml_text(raw, f"--set {key}") if raw.strip() != "" else ""
    return key, value


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{p}: {size:,} bytes; a recipe has at most {MAX_YAML_BYTES:,}")
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    data = load_yaml_text(raw, str(p)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


#: flat stage keys of checkpoints written before the head / loss settings had their own sections
LEGACY_STAGE_KEYS = {
    "fslwf_novel_max_count": ("fslwf", "novel_max_count"),
    "fslwf_fake_novel_prob": ("fslwf", "fake_novel_prob"),
    "focal_gamma": ("focal", "gamma"), "la_tau": ("logit_adjusted", "tau"),
    "centroid_loss_weight": ("centroid_loss", "weight"),
    "centroid_update": ("centroid_loss", "update"),
    "centroid_margin": ("centroid_loss", "margin"),
    "centroid_repel_weight": ("centroid_loss", "repel_weight"),
    "reach_scale": ("meta", "reach_scale"), "cos_scale": ("cosine", "scale"),
    "margin_scale": ("margin", "s"),
}


def renamed_key_hint(dotted: str) -> str:
    """``"; it was renamed: use stage2.centroid_loss.weight"`` for a key of an older version
    (:data:`LEGACY_STAGE_KEYS`), else ``""``."""
    parts = dotted.split(".")
    if len(parts) >= 2 and parts[0] in ("stage1", "stage2") and parts[1] in LEGACY_STAGE_KEYS:
        section, key = LEGACY_STAGE_KEYS[parts[1]]
        return f" (renamed: it is now {parts[0]}.{section}.{key})"
    return ""


#: stage keys whose default changed to the reference recipe (issue 13), with the value a saved
#: config that lacks them was trained with
FORMER_STAGE_DEFAULTS = {
    ("spatial_attention",): "conv", ("frozen_bn",): "eval", ("init_weights",): "last",
    ("meta", "hallucinator_init"): "random", ("centroid_loss", "update"): "autograd",
    ("attention_init",): "identity",  # issue 19
}


#: model keys added later, with the value a saved config that lacks them was trained with
FORMER_MODEL_DEFAULTS = {"neck_bn_eps": 2e-5}  # issue 19: the face neck's eps was always 2e-5


def upgrade_saved_config(tree: dict) -> dict:
    """A config saved in a checkpoint, with the flat stage keys of older versions moved into
    their sections (``stage1.cos_scale`` -> ``stage1.cosine.scale``, a float ``stage1.margin`` ->
    ``stage1.margin.m`` ...), and the keys whose default became the reference recipe's filled in
    with the value the checkpoint was trained with (:data:`FORMER_STAGE_DEFAULTS`: e.g. a stage
    saved without ``spatial_attention`` had the 1x1-conv attention). A current config comes back
    unchanged."""
    out = dict(tree)
    if isinstance(out.get("model"), dict):
        out["model"] = {**FORMER_MODEL_DEFAULTS, **out["model"]}
    for stage in ("stage1", "stage2"):
        st = out.get(stage)
        if not isinstance(st, dict):
            continue
        st = dict(st)
        if isinstance(st.get("margin"), (int, float)) and not isinstance(st.get("margin"), bool):
            st["margin"] = {"m": st["margin"]}
        for old, (section, key) in LEGACY_STAGE_KEYS.items():
            if old in st:
                st[section] = dict(st.get(section) or {}, **{key: st.pop(old)})
        for path, former in FORMER_STAGE_DEFAULTS.items():
            node = st
            for part in path[:-1]:
                node[part] = dict(node.get(part) or {})
                node = node[part]
            node.setdefault(path[-1], former)
        out[stage] = st
    return out


def config_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML: every key, defaults filled in, in declaration order
    (``load_config`` of this text gives ``cfg`` back)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_dict(data: dict, where: str = "config") -> Config:
    return _build(Config, data, "", where)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: Optional[dict] = None) -> Config:
    """Load a YAML recipe (if any), apply ``key=value`` overrides, and check every key and type."""
    tree: dict = dict(base or {})
    where = str(path) if path else "config"
    if path is not None:
        tree = deep_merge(tree, load_yaml(path))
    # validate the file alone first so errors name the file
    config_from_dict(tree, where)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, f"--set {key}")
        config_from_dict(tree, f"--set {key}")
    return config_from_dict(tree, where)


def resolve_config_path(dataset: str | None, config: str | None, configs_dir: Path) -> Path:
    """``--config PATH`` or ``--dataset NAME`` (= ``configs/NAME.yaml``)."""
    if config:
        return Path(config)
    if dataset:
        p = configs_dir / f"{dataset}.yaml"
        if not p.is_file():
            avail = sorted(q.stem for q in configs_dir.glob("*.yaml"))
            raise ConfigError(f"no recipe for dataset '{dataset}': {p} does not exist "
                              f"(available: {', '.join(avail)})")
        return p
    raise ConfigError("give --config PATH or --dataset NAME")
