"""FSLwF head (Gidaris & Komodakis, CVPR 2018): the generator, the leave-one-out supports, the
train / eval weights checked on hand-worked cases, and a plain + fslwf comparison on demo data."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from facelt.errors import ConfigError
from facelt.models.fslwf import FSLwFHead, leave_one_out_means

REPO = Path(__file__).resolve().parents[1]
METHODS = REPO / "configs" / "methods"
RECIPE = REPO / "configs" / "demo_list.yaml"


def _head(dim: int, k: int, prob: float = 1.0, max_count: int = 20) -> FSLwFHead:
    torch.manual_seed(0)
    return FSLwFHead(dim, k, novel_max_count=max_count, fake_novel_prob=prob)


def _set(param: torch.nn.Parameter, value) -> None:
    with torch.no_grad():
        param.copy_(torch.as_tensor(value, dtype=param.dtype))


def test_generated_weight_without_attention_is_the_normalised_support_mean():
    h = _head(3, 4)
    _set(h.phi_att, [0.0, 0.0, 0.0])
    _set(h.phi_avg, [1.0, 1.0, 1.0])
    w = h.generate(torch.tensor([[3.0, 4.0, 0.0], [0.0, -2.0, 0.0]]), torch.tensor([0, 2]))
    assert torch.allclose(w, torch.tensor([[0.6, 0.8, 0.0], [0.0, -1.0, 0.0]]), atol=1e-6)


def test_attention_by_hand_sums_to_one_and_excludes_the_own_class():
    h = _head(2, 3)
    _set(h.keys, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    _set(h.att_temperature, 1.0)                       # phi_q starts as the identity
    att = h.attention(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    # row 0 (own class 0): cos with keys 1, 2 = 0, -1 -> softmax(0, -1)
    e = math.exp(-1.0)
    assert att[0].tolist() == pytest.approx([0.0, 1 / (1 + e), e / (1 + e)], abs=1e-6)
    # row 1 (own class 1): cos with keys 0, 2 = 1, -1 -> softmax(1, -1)
    e2 = math.exp(-2.0)
    assert att[1].tolist() == pytest.approx([1 / (1 + e2), 0.0, e2 / (1 + e2)], abs=1e-6)
    assert torch.allclose(att.sum(1), torch.ones(2))
    # with phi_avg = 0, phi_att = 1 the generated weight is the attention-weighted normalised W
    _set(h.weight, [[2.0, 0.0], [0.0, 3.0], [0.0, -1.0]])
    _set(h.phi_avg, [0.0, 0.0])
    w = h.generate(torch.tensor([[5.0, 0.0]]), torch.tensor([0]))
    assert w[0].tolist() == pytest.approx([0.0, 1 / (1 + e) - e / (1 + e)], abs=1e-6)


def test_leave_one_out_means_on_a_hand_built_batch():
    v = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    y = torch.tensor([2, 0, 2, 2, 0, 5])
    means, support = leave_one_out_means(v, y)
    # class 2 holds rows 0, 2, 3 (values 1, 3, 4); class 0 rows 1, 4 (2, 5); class 5 row 5 alone
    assert means[:, 0].tolist() == pytest.approx([3.5, 5.0, 2.5, 2.0, 2.0, 0.0])
    assert support.tolist() == [2, 1, 2, 2, 1, 0]


def test_training_substitutes_generated_weights_on_a_hand_built_batch():
    h = _head(2, 3, prob=1.0)
    _set(h.weight, [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    _set(h.phi_att, [0.0, 0.0])
    h.train()
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 4.0]])
    y = torch.tensor([0, 0, 0, 1])                     # class 1 has no other image: stays base
    logits, aux = h(v, y)
    s = 10.0
    r2 = 1 / math.sqrt(2)
    # row 0: leave-one-out support = rows 1, 2 -> mean (0.5, 1) -> cos with (1, 0) = 1/sqrt(5)
    assert logits[0].tolist() == pytest.approx([s / math.sqrt(5), 0.0, s * r2], abs=1e-5)
    # row 1: support mean (1, 0.5) -> cos with (0, 1) = 1/sqrt(5)
    assert logits[1].tolist() == pytest.approx([s / math.sqrt(5), s, s * r2], abs=1e-5)
    # row 2: support mean (0.5, 0.5) -> cos with (1, 1) = 1
    assert logits[2].tolist() == pytest.approx([s, s * r2, s], abs=1e-5)
    # row 3 (class 1): column 0 holds class 0's weight generated from all three of its images,
    # mean (2/3, 2/3); columns 1, 2 are W
    assert logits[3].tolist() == pytest.approx([s * 1.4 * r2, s * 0.8, s * 1.4 * r2], abs=1e-5)
    assert aux["fake_novel_rows"].tolist() == [0, 1, 2]
    h.fake_novel_prob = 0.0                            # no fake novel class: W everywhere
    logits, _ = h(v, y)
    assert logits[0].tolist() == pytest.approx([s, 0.0, s * r2], abs=1e-5)
    assert logits[3].tolist() == pytest.approx([s * 0.6, s * 0.8, s * 1.4 * r2], abs=1e-5)


def test_training_attention_reads_only_the_batch_base_classes():
    # W = identity; classes 0 and 1 are drawn fake novel, so with phi_avg = 0 their generated
    # weights mix W_2 and W_3 only and score 0 on features in the span of e_0, e_1
    h = _head(4, 4, prob=1.0)
    _set(h.weight, torch.eye(4))
    _set(h.phi_avg, torch.zeros(4))
    h.train()
    v = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 1.0, 0, 0], [2.0, 1.0, 0, 0]])
    logits, aux = h(v, torch.tensor([0, 0, 1, 1]))
    assert aux["fake_novel_rows"].tolist() == [0, 1, 2, 3]
    assert logits[:, :2].abs().max() < 1e-5
    assert (logits[:, 2:] == 0).all()                  # W_2, W_3 are orthogonal to every v
    # two classes of two drawn in a 2-class model: one is kept base, the logits stay finite
    h2 = _head(2, 2, prob=1.0)
    h2.train()
    logits, aux = h2(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]))
    assert len(aux["fake_novel_rows"]) == 2 and torch.isfinite(logits).all()


def test_every_generator_parameter_gets_a_gradient_even_without_fake_novel_rows():
    h = _head(4, 5, prob=0.0)
    h.train()
    logits, _ = h(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    logits.sum().backward()
    assert all(p.grad is not None for p in h.parameters())   # DDP needs every parameter used


def test_eval_generates_novel_weights_from_base_classes_and_keeps_base_weights():
    h = _head(3, 4, max_count=20)
    _set(h.weight, [[2.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 3.0, 0.0], [0.0, 0.0, -1.0]])
    h.init_centroids(torch.tensor([[9.0, 9.0, 9.0], [0.0, 4.0, 3.0],
                                   [9.0, 9.0, 9.0], [1.0, 0.0, 0.0]]))
    h.init_class_counts(torch.tensor([100, 5, 20, 19]))   # 5 and 19 < 20: classes 1, 3 novel
    assert h.novel_mask().tolist() == [False, True, False, True]
    _set(h.phi_att, [0.0, 0.0, 0.0])
    h.eval()
    with torch.no_grad():
        w = h.effective_weight()
        logits, _ = h(torch.tensor([[0.0, 1.0, 0.0]]))
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.8, 0.6], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(w, expected, atol=1e-6)
    assert logits[0].tolist() == pytest.approx([0.0, 8.0, 10.0, 0.0], abs=1e-5)
    # attention-only generation mixes base weights (classes 0, 2) only: no third component
    _set(h.phi_att, [1.0, 1.0, 1.0])
    _set(h.phi_avg, [0.0, 0.0, 0.0])
    with torch.no_grad():
        w = h.effective_weight()                      # the cache notices the changed parameters
    assert w[[1, 3], 2].abs().max() < 1e-6
    assert w[[1, 3], :2].min() > 0
    assert torch.allclose(w[[0, 2]], expected[[0, 2]])


def test_counts_must_leave_a_base_class_and_be_set_before_evaluation():
    h = _head(2, 3)
    h.eval()
    with pytest.raises(ConfigError, match="never set"):
        with torch.no_grad():
            h(torch.ones(1, 2))
    with pytest.raises(ConfigError, match="every class novel"):
        h.init_class_counts(torch.tensor([3, 4, 19]))
    with pytest.raises(ConfigError, match="fake_novel_prob"):
        FSLwFHead(2, 3, fake_novel_prob=1.5)


def test_training_step_at_identity_scale_stays_b_by_k():
    """K = 74.5K identities, d = 512, B = 128: a B x K x d tensor would be 19.5 GB."""
    k, d, b = 74_500, 512, 128
    h = FSLwFHead(d, k, fake_novel_prob=1.0)
    h.train()
    y = torch.arange(b // 4).repeat_interleave(4) * 997 % k
    with torch.no_grad():
        logits, aux = h(torch.randn(b, d), y)
    assert logits.shape == (b, k) and torch.isfinite(logits).all()
    assert len(aux["fake_novel_rows"]) == b


def test_method_file_is_a_valid_stage2_overlay():
    from facelt.compare import load_method, method_config
    spec = load_method("fslwf", METHODS)
    cfg = method_config(RECIPE, spec, load_method("plain", METHODS))
    assert spec.source.read_text().startswith("# FSLwF")
    assert spec.train == "stage2"
    st = cfg.stage2
    assert (st.head, st.init_from, st.freeze_backbone, st.sampler) == (
        "fslwf", "stage1", True, "class_aware")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    from facelt.compare import compare
    from facelt.utils.progress import set_quiet
    from pipelines.demo_data import DemoSpec, make_demo_dataset
    set_quiet(True)
    root = tmp_path_factory.mktemp("fslwf")
    d = root / "data"
    make_demo_dataset(d, DemoSpec(num_classes=6, open_classes=2, max_count=40, min_count=4,
                                  val_per_class=3, test_per_class=5, open_per_class=5,
                                  image_size=16))
    overrides = [f"data.root={d}", f"data.splits_dir={d}", "data.image_size=16", "device=cpu",
                 "stage1.epochs=2", "stage2.epochs=1", "eval.batch_size=64",
                 "data.augment=false", "stage2.batch_size=16"]
    rep = compare(RECIPE, ["plain", "fslwf"], root / "cmp", METHODS, overrides,
                  log=lambda s: None)
    return root, rep


def test_compare_plain_and_fslwf_end_to_end(compared):
    from facelt.openset.classify import evaluate_checkpoint
    from facelt.models.checkpoint import load_checkpoint
    root, rep = compared
    assert list(rep["methods"]) == ["plain", "fslwf"]
    runs = root / "cmp" / "runs"
    ckpt = runs / "fslwf" / "stage2" / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    # stage 2 starts from plain's best-on-val weights (init_weights: best, the reference's)
    plain = load_checkpoint(runs / "plain" / "stage1" / "best.pt")["model"]
    model = state["model"]
    # the trainer filled the head's statistics: counts from the training list, class means
    assert model["head.class_counts"].tolist() == state["class_counts"]
    assert (model["head.centroids"].norm(dim=1) > 0).all()
    # the backbone's weights are plain's, frozen (BN statistics re-estimated: frozen_bn train)
    for key, value in plain.items():
        if key.startswith("body.backbone.") and not key.endswith(
                ("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(model[key], value), key
    # compare's head-on-embeddings path equals the network's own forward
    ref = evaluate_checkpoint(ckpt, root / "ref", device="cpu")
    fs = rep["methods"]["fslwf"]
    for key in ("overall", "many", "medium", "few"):
        assert fs["closed_set"][key] == pytest.approx(ref["closed_set"][key], abs=1e-9)
    assert fs["open_set"]["f_measure"] == pytest.approx(ref["open_set"]["f_measure"])
    assert "| fslwf |" in (root / "cmp" / "report.md").read_text()


def test_checkpoints_written_before_a_config_key_existed_are_still_reused():
    from facelt.compare import load_method, method_config, recipe_diff
    cfg = method_config(RECIPE, load_method("plain", METHODS), None)
    saved = cfg.to_dict()
    del saved["stage1"]["fslwf"]["novel_max_count"]  # a checkpoint older than the key
    assert recipe_diff(saved, cfg, 1) is None
    saved["stage1"]["fslwf"]["fake_novel_prob"] = 0.25  # a real difference is still named
    assert "stage1.fslwf.fake_novel_prob" in recipe_diff(saved, cfg, 1)
