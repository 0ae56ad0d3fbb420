"""The training seams the long-tail methods plug into (facelt/train/batch.py, the loss's epoch,
the LR schedules), each against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facelt.config import StageConfig, config_from_dict
from facelt.errors import ConfigError


def _stage(**kw) -> StageConfig:
    return config_from_dict({"stage1": kw}).stage1


# ---------------------------------------------------------------- DRW: the loss's epoch
def test_drw_weights_switch_exactly_at_the_deferral_epoch():
    from facelt.losses.stage import build_stage_loss
    from facelt.models.normed_linear import NormedLinearHead
    st = _stage(head="normed_linear", loss="ldam", ldam={"drw_epoch": 2, "beta": 0.5})
    loss = build_stage_loss(st, NormedLinearHead(4, 2), np.array([3, 1]))
    # beta 0.5: (1 - b) / (1 - b^n) = 0.5 / 0.875 and 0.5 / 0.5, rescaled to sum to K = 2
    w0, w1 = 0.5 / 0.875, 1.0
    expected = [2 * w0 / (w0 + w1), 2 * w1 / (w0 + w1)]       # 0.727273, 1.272727
    for epoch, want in ((0, [1.0, 1.0]), (1, [1.0, 1.0]), (2, expected), (5, expected)):
        loss.set_epoch(epoch)
        assert loss.classify.class_weights.tolist() == pytest.approx(want, abs=1e-6)
    loss.set_epoch(1)                                          # and back (a resumed stage)
    assert loss.classify.class_weights.tolist() == [1.0, 1.0]


def test_training_loop_tells_the_loss_its_epoch(tmp_path):
    from facelt.train.loop import train_one_epoch
    from facelt.train.stage import build_stage
    from pipelines.demo_data import DemoSpec, make_demo_dataset
    d = tmp_path / "d"
    make_demo_dataset(d, DemoSpec(num_classes=3, open_classes=1, max_count=8, min_count=3,
                                  val_per_class=1, test_per_class=1, open_per_class=1,
                                  image_size=16))
    cfg = config_from_dict({"device": "cpu", "data": {
        "root": str(d), "splits_dir": str(d), "train": "demo_train.txt", "image_size": 16,
        "num_workers": 0, "augment": False}, "model": {"backbone": "small_cnn"},
        "stage1": {"epochs": 4, "batch_size": 8, "head": "normed_linear", "loss": "ldam",
                   "ldam": {"drw_epoch": 3}, "max_steps_per_epoch": 1}})
    parts = build_stage(cfg, 1, out=tmp_path)
    train_one_epoch(parts, 2)
    assert parts.loss.classify.epoch == 2 and parts.loss.classify.class_weights.tolist() == [1.0] * 3
    train_one_epoch(parts, 3)
    assert parts.loss.classify.epoch == 3
    assert parts.loss.classify.class_weights.sum().item() == pytest.approx(3.0)
    assert len(set(parts.loss.classify.class_weights.tolist())) > 1


# ---------------------------------------------------------------- mixup
def test_mixup_lambda_follows_beta_alpha_alpha():
    from facelt.train.batch import MixupTransform
    torch.manual_seed(0)
    t = MixupTransform(0.2)
    x, y = torch.zeros(2, 1, 1, 1), torch.tensor([0, 1])
    lams = np.array([t(x, y).mix.lam for _ in range(4000)])
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 1 / 5.6 at a = 0.2
    assert lams.mean() == pytest.approx(0.5, abs=0.02)
    assert lams.var() == pytest.approx(1 / 5.6, abs=0.01)
    assert ((lams >= 0) & (lams <= 1)).all()


def test_mixup_batch_and_loss_by_hand():
    from facelt.losses.stage import StageLoss
    from facelt.losses.classification import CrossEntropy
    from facelt.train.batch import MixupTransform
    x = torch.tensor([[[[1.0]]], [[[3.0]]]])
    y = torch.tensor([0, 1])
    torch.manual_seed(3)
    b = MixupTransform(1.0)(x, y)
    lam, idx = b.mix.lam, b.mix.index
    assert b.inputs.flatten().tolist() == pytest.approx(
        [lam * x.flatten()[i].item() + (1 - lam) * x.flatten()[idx[i]].item() for i in range(2)])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    ce = lambda row, k: -math.log(math.exp(logits[row, k].item())  # noqa: E731
                                  / logits[row].exp().sum().item())
    want = np.mean([lam * ce(i, int(y[i])) + (1 - lam) * ce(i, int(y[idx[i]])) for i in range(2)])
    loss, _ = StageLoss(CrossEntropy())({"logits": logits, "features": x.flatten(1)}, y, mix=b.mix)
    assert loss.item() == pytest.approx(want, rel=1e-6)


# ---------------------------------------------------------------- MaxNorm
def _linear_net(rows):
    from facelt.models.heads import LinearHead
    head = LinearHead(2, len(rows))
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor(rows))
    return _Holder(head)


class _Holder(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head


def test_maxnorm_clamps_per_class_norms_after_the_epoch():
    from facelt.train.batch import ClassNormConstraint
    net = _Holder(_linear_net([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]).head)   # norms 1, 2, 5
    c = ClassNormConstraint(net, thresh=0.1, every="epoch")
    assert c.radius == pytest.approx(1.0 + 0.1 * (5.0 - 1.0))               # 1.4
    with torch.no_grad():
        net.head.fc.weight.mul_(2.0)                                           # norms 2, 4, 10
    c.after_step(net)                                                          # epoch mode: no-op
    assert net.head.fc.weight.norm(dim=1).tolist() == pytest.approx([2.0, 4.0, 10.0])
    c.after_epoch(net)
    w = net.head.fc.weight
    assert w.norm(dim=1).tolist() == pytest.approx([1.4, 1.4, 1.4])
    assert w[2].tolist() == pytest.approx([1.4 * 0.6, 1.4 * 0.8])              # direction kept
    assert net.head.fc.bias.requires_grad                                       # bias untouched


def test_maxnorm_every_step_projects_after_the_optimizer_step():
    from facelt.train.batch import ClassNormConstraint
    net = _Holder(_linear_net([[1.0, 0.0], [0.0, 3.0]]).head)                  # radius 1.2
    c = ClassNormConstraint(net, thresh=0.1, every="step")
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    net.head.fc.weight.sum().neg().backward()                                  # grad -1 everywhere
    opt.step()                                                                 # rows [2,1], [1,4]
    c.after_step(net)
    assert net.head.fc.weight.norm(dim=1).tolist() == pytest.approx([1.2, 1.2])
    c.after_epoch(net)                                                         # step mode: no-op


# ---------------------------------------------------------------- two views
def test_two_views_repeat_labels_and_shift_each_image():
    from facelt.train.batch import TwoViewTransform
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3) + 1
    y = torch.tensor([4, 7])
    same = TwoViewTransform(pad=0, flip=False)(x, y)
    assert same.labels.tolist() == [4, 7, 4, 7] and torch.equal(same.inputs, torch.cat((x, x)))
    torch.manual_seed(0)
    b = TwoViewTransform(pad=1, flip=True)(x, y)
    assert b.inputs.shape == (4, 1, 3, 3) and b.labels.tolist() == [4, 7, 4, 7]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for r in range(4):
        src = padded[r % 2, 0]
        views = [src[i:i + 3, j:j + 3] for i in range(3) for j in range(3)]
        views += [v.flip(-1) for v in views]
        assert any(torch.equal(b.inputs[r, 0], v) for v in views)


def test_one_batch_transform_per_stage_and_paco_needs_two_views():
    from facelt.losses.classification import build_loss
    from facelt.train.batch import build_batch_transform
    with pytest.raises(ConfigError, match="stage1.mixup.alpha and stage1.two_views"):
        build_batch_transform(_stage(mixup={"alpha": 0.2}, two_views={"enabled": True}), 1)
    with pytest.raises(ConfigError, match="two_views.enabled"):
        build_loss(_stage(loss="paco"), [3, 2])
    with pytest.raises(ConfigError, match="stage1.ldam.drw_epcoh"):
        config_from_dict({"stage1": {"ldam": {"drw_epcoh": 3}}})


def test_paco_objective_uses_and_fills_the_head_queue():
    from facelt.losses.stage import build_stage_loss
    from facelt.models.paco import PaCoHead
    torch.manual_seed(0)
    st = _stage(head="paco", loss="paco", two_views={"enabled": True},
                paco={"queue_size": 6, "projection_dim": 4})
    head = PaCoHead(5, 3, projection_dim=4, queue_size=6)
    loss = build_stage_loss(st, head, np.array([4, 2, 1]))
    v = torch.randn(4, 5)                          # two views of a batch of 2
    y = torch.tensor([0, 2, 0, 2])
    logits, aux = head(v)
    before = head.queue.contents()
    value, _ = loss({"logits": logits, "features": v, "aux": aux}, y)
    assert torch.isfinite(value)
    # the loss saw [q; k; queue] with the queue as it was; then the second-view keys went in
    from facelt.losses.paco import PaCoLoss
    ref = PaCoLoss(3, class_counts=np.array([4, 2, 1]))(
        torch.cat((aux["projection"], before[0])), torch.cat((y, before[1])), logits)
    assert value.item() == pytest.approx(ref.item(), rel=1e-6)
    assert int(head.queue.ptr) == 2
    assert torch.allclose(head.queue.features[:2], aux["projection"][2:].detach())
    assert head.queue.labels[:2].tolist() == [0, 2]


# ---------------------------------------------------------------- RIDE: the experts' mean
def test_ride_head_scores_with_the_experts_mean_logits():
    from facelt.compare.collect import chunk_logits
    from facelt.models.expert_head import MultiExpertHead
    from facelt.models.net import OLTRNet
    head = MultiExpertHead(4, 2, experts=2, scale=30.0)
    r = 1 / math.sqrt(2)
    with torch.no_grad():
        head.heads[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.heads[1].weight.copy_(torch.tensor([[2.0, 2.0], [-1.0, 1.0]]))
    v = torch.tensor([[3.0, 4.0, 1.0, 0.0]])
    # expert 1: cos with (.6, .8) -> (.6, .8); expert 2: cos of (1, 0) -> (r, -r)
    want = [30 * (0.6 + r) / 2, 30 * (0.8 - r) / 2]
    logits, aux = head(v)
    assert logits[0].tolist() == pytest.approx(want, rel=1e-6)
    assert aux["expert_logits"][:, 0].flatten().tolist() == pytest.approx(
        [18.0, 24.0, 30 * r, -30 * r])
    net = OLTRNet(torch.nn.Identity(), head)
    (_, _, lg), = list(chunk_logits(net, v.numpy(), torch.device("cpu")))   # compare's path
    assert lg[0].tolist() == pytest.approx(want, rel=1e-6)


def test_expert_trunk_gives_each_expert_its_own_slice():
    from facelt.models.backbones import SmallCNN
    from facelt.models.expert_body import ExpertTrunk
    torch.manual_seed(0)
    trunk = ExpertTrunk(SmallCNN(1, widths=(4, 6, 8)), experts=3).eval()
    assert trunk.out_channels == 24
    x = torch.randn(2, 1, 12, 12)
    out = trunk(x)
    shared = trunk.shared(x)
    for e in range(3):
        assert torch.allclose(out[:, 8 * e:8 * (e + 1)], trunk.experts[e](shared))
    w = [dict(trunk.experts[e].named_parameters())["0.weight"] for e in range(3)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])   # each its own draw


# ---------------------------------------------------------------- LR schedules, LWS lr factor
def test_cosine_annealing_and_multistep_factors_by_hand():
    from facelt.train.stage import lr_factor
    ca = _stage(epochs=10, lr_schedule="cosine_annealing")
    assert [lr_factor(ca, e) for e in (0, 5, 9)] == pytest.approx(
        [1.0, 0.5, (1 + math.cos(math.pi * 0.9)) / 2])
    warm = _stage(epochs=12, lr_schedule="cosine_annealing", warmup_epochs=2)
    assert [lr_factor(warm, e) for e in (0, 1, 2, 7)] == pytest.approx([0.5, 1.0, 1.0, 0.5])
    # LDAM-DRW cifar_train.py: warmup (epoch + 1) / 5, x0.01 from epoch 160, x0.0001 from 180
    ms = _stage(epochs=200, lr_schedule="multistep", lr_milestones=[160, 180], lr_gamma=0.01,
                warmup_epochs=5)
    assert [lr_factor(ms, e) for e in (0, 4, 5, 159, 160, 179, 180, 199)] == pytest.approx(
        [0.2, 1.0, 1.0, 1.0, 0.01, 0.01, 1e-4, 1e-4])


def test_lws_classifier_trains_at_its_lr_factor():
    from facelt.models.heads import LWSHead
    from facelt.models.net import Body, OLTRNet
    from facelt.train.stage import build_optimizer
    body = lambda: Body(torch.nn.Linear(3, 3), torch.nn.Identity())  # noqa: E731
    net = OLTRNet(body(), LWSHead(3, 2, train_classifier=True, classifier_lr_factor=0.05))
    st = _stage(classifier_lr=0.1, backbone_lr=0.2)
    groups = {g["name"]: g for g in build_optimizer(net, st).param_groups}
    assert groups["classifier"]["lr"] == pytest.approx(0.1)
    assert groups["classifier_x0.05"]["lr"] == pytest.approx(0.005)
    assert [p.shape for p in groups["classifier_x0.05"]["params"]] == [(2, 3), (2,)]
    frozen = OLTRNet(body(), LWSHead(3, 2))
    assert "classifier_x1" not in {g["name"] for g in build_optimizer(frozen, st).param_groups}


def test_best_f_threshold_by_hand():
    from facelt.openset.metrics import best_f_threshold
    # known (label 0) scores .9 .6 (both right), open .7 .2
    scores, preds, labels = [0.9, 0.6, 0.7, 0.2], [0, 0, 0, 0], [0, 0, -1, -1]
    # t=0.1: TP 2 FP 0 FN 2 -> F 2/3; t=0.65: TP 1 FP 1 FN 1 -> .5; t=0.8: TP 1, FP 1, FN 0 -> 2/3
    # t=0.5: TP 2 FP 0 FN 1 -> P 1 R 2/3 -> F 0.8
    t, f = best_f_threshold(scores, preds, labels, [0.1, 0.5, 0.65, 0.8])
    assert (t, f) == (0.5, pytest.approx(0.8))
