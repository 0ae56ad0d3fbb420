"""Discriminative-centroid loss: value and gradients on a 2-sample, 2-class, 2-D case by hand."""
from __future__ import annotations

import pytest
import torch

from facelt.losses import DiscCentroidLoss


def _case():
    # c0 = [0, 0], c1 = [2, 0]; v0 = [1, 0] (class 0), v1 = [2, 1] (class 1)
    feats = torch.tensor([[1.0, 0.0], [2.0, 1.0]], requires_grad=True)
    cents = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)
    return feats, cents, torch.tensor([0, 1])


def test_value_and_gradients_by_hand():
    feats, cents, labels = _case()
    loss = DiscCentroidLoss(margin=10.0, repel_weight=0.01)(feats, labels, cents)
    # attract: (||v0-c0||^2 + ||v1-c1||^2) / (2B) = (1 + 1) / 4 = 0.5
    # other-class distances: ||v0-c1||^2 = 1, ||v1-c0||^2 = 5 -> sum 6 / (B*K = 4) = 1.5
    # repel = 10 - 1.5 = 8.5; loss = 0.5 + 0.01 * 8.5 = 0.585
    assert abs(loss.item() - 0.585) < 1e-6
    loss.backward()
    # d attract / d v_i = (v_i - c_{y_i}) / B           -> v0: [0.5, 0],  v1: [0, 0.5]
    # d repel-term / d v_i = -w/4 * 2 (v_i - c_other)   -> v0: -0.0025*[-2,0] = [0.005, 0]
    #                                                     v1: -0.0025*[4, 2] = [-0.01, -0.005]
    assert torch.allclose(feats.grad, torch.tensor([[0.505, 0.0], [-0.01, 0.495]]), atol=1e-6)
    # d attract / d c_k = -sum_{y_i=k} (v_i - c_k) / B   -> c0: [-0.5, 0], c1: [0, -0.5]
    # d repel-term / d c_k = -w/4 * 2 (c_k - v_other)    -> c0: -0.0025*[-4,-2] = [0.01, 0.005]
    #                                                     c1: -0.0025*[2, 0] = [-0.005, 0]
    assert torch.allclose(cents.grad, torch.tensor([[-0.49, 0.005], [-0.005, -0.5]]), atol=1e-6)


def test_repel_hinge_is_off_past_the_margin():
    feats, cents, labels = _case()
    # margin 1 < mean other distance 1.5: repel clamps to 0, only the attract term remains
    loss = DiscCentroidLoss(margin=1.0, repel_weight=0.01)(feats, labels, cents)
    assert abs(loss.item() - 0.5) < 1e-6
    loss.backward()
    assert torch.allclose(feats.grad, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    assert torch.allclose(cents.grad, torch.tensor([[-0.5, 0.0], [0.0, -0.5]]))


def test_matches_brute_force_on_random_batch():
    torch.manual_seed(0)
    feats = torch.randn(6, 4, dtype=torch.float64)
    cents = torch.randn(5, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 3, 4, 0])
    attract = sum(((feats[i] - cents[labels[i]]) ** 2).sum() for i in range(6)) / 12
    other = sum(((feats[i] - cents[k]) ** 2).sum() for i in range(6) for k in range(5)
                if k != labels[i])
    expected = attract + 0.1 * max(0.0, 20.0 - other / 30)
    got = DiscCentroidLoss(margin=20.0, repel_weight=0.1)(feats, labels, cents)
    assert abs(got.item() - float(expected)) < 1e-9


def test_closed_form_repel_matches_brute_force_distances():
    """The loss never forms the B x K distances; a brute-force double loop must agree, with the
    repel term active (large margin) and inactive, values and gradients."""
    import torch
    from facelt.losses import DiscCentroidLoss
    torch.manual_seed(0)
    B, K, d = 6, 9, 5
    for margin in (1e4, 0.0):
        v = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
        c = torch.randn(K, d, dtype=torch.float64, requires_grad=True)
        y = torch.randint(0, K, (B,))
        loss = DiscCentroidLoss(margin=margin, repel_weight=0.01)(v, y, c)
        gv, gc = torch.autograd.grad(loss, (v, c))
        own = sum(((v[i] - c[y[i]]) ** 2).sum() for i in range(B))
        other = sum(((v[i] - c[k]) ** 2).sum() for i in range(B) for k in range(K) if k != y[i])
        ref = own / (2 * B) + 0.01 * torch.clamp(margin - other / (B * K), min=0)
        rv, rc = torch.autograd.grad(ref, (v, c))
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(gv, rv)
        torch.testing.assert_close(gc, rc)


def test_reference_centroid_update_is_the_center_loss_style_gradient():
    """Hand case: B = 3, labels (0, 0, 1), K = 2, d = 1; c = (1, 5), v = (0, 4, 9).
    Reference: dL/dc_0 = ((1-0) + (1-4)) / (1 + 2) / 3 = -2/9, dL/dc_1 = (5-9) / (1 + 1) / 3 = -2/3,
    whatever the loss weight; features keep the true gradient (v - c_y) / B * weight."""
    import torch
    from facelt.losses import DiscCentroidLoss
    v = torch.tensor([[0.0], [4.0], [9.0]], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([[1.0], [5.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1])
    loss = DiscCentroidLoss(margin=0.0, centroid_update="reference", loss_weight=0.01)(v, y, c)
    assert loss.item() == pytest.approx((1 + 9 + 16) / 6)
    (0.01 * loss).backward()
    torch.testing.assert_close(c.grad, torch.tensor([[-2 / 9], [-2 / 3]], dtype=torch.float64))
    torch.testing.assert_close(v.grad, 0.01 * torch.tensor([[-1.0], [3.0], [4.0]],
                                                           dtype=torch.float64) / 3)


def test_reference_centroid_update_carries_the_loss_scale():
    """The hand case above under a loss scale S = 2**16 (what a GradScaler's ``scale(loss)``
    does): every gradient, the reference centroid step included, is S times the unscaled one, so
    the scaler's unscaling gives back -2/9 and -2/3. Before issue 19 the centroid step ignored the
    incoming gradient and came out 1/S of the float32 step after unscaling."""
    import torch
    from facelt.losses import DiscCentroidLoss
    v = torch.tensor([[0.0], [4.0], [9.0]], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([[1.0], [5.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1])
    scale = 2.0 ** 16
    loss = DiscCentroidLoss(margin=0.0, centroid_update="reference", loss_weight=0.01)(v, y, c)
    (scale * (0.01 * loss)).backward()
    torch.testing.assert_close(c.grad / scale,
                               torch.tensor([[-2 / 9], [-2 / 3]], dtype=torch.float64))
    torch.testing.assert_close(v.grad / scale, 0.01 * torch.tensor([[-1.0], [3.0], [4.0]],
                                                                   dtype=torch.float64) / 3)
    with pytest.raises(ValueError, match="loss_weight"):
        DiscCentroidLoss(centroid_update="reference", loss_weight=0.0)


class _ThreadSum:
    """An all-reduce SUM between threads (each thread one 'process' of a DDP batch)."""

    def __init__(self, n: int) -> None:
        import threading
        self.barrier = threading.Barrier(n)
        self.parts: dict[int, torch.Tensor] = {}

    def for_rank(self, rank: int):
        def global_sum(t: torch.Tensor) -> torch.Tensor:
            self.parts[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.parts[r] for r in sorted(self.parts))
            self.barrier.wait()
            return t.copy_(total)
        return global_sum


def _share_gradients(margin: float, with_global_sum: bool):
    """The by-hand case split over 2 'processes' (one sample each): each share's loss and its
    gradients w.r.t. its own feature and the (replicated) centroids."""
    import threading
    feats, cents, labels = _case()
    reducer = _ThreadSum(2)
    out = [None, None]

    def share(r: int) -> None:
        v = feats.detach()[r:r + 1].clone().requires_grad_(True)
        c = cents.detach().clone().requires_grad_(True)
        loss = DiscCentroidLoss(margin=margin, repel_weight=0.01,
                                global_sum=reducer.for_rank(r) if with_global_sum else None)(
            v, labels[r:r + 1], c)
        loss.backward()
        out[r] = (loss.detach(), v.grad[0], c.grad)

    threads = [threading.Thread(target=share, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_ddp_shares_reach_the_one_process_gradient_when_the_hinge_splits():
    """Margin 2: the whole batch's mean other-class distance is 1.5 (repel active), share 0's alone
    is 1 / 2 = 0.5 (active), share 1's is 5 / 2 = 2.5 (inactive). With ``global_sum`` the hinge is
    the whole batch's, so DDP's average of the shares' gradients is the one-process gradient:
    features (each share's, averaged over the 2 processes) and centroids (averaged)."""
    feats, cents, labels = _case()
    whole = DiscCentroidLoss(margin=2.0, repel_weight=0.01)(feats, labels, cents)
    whole.backward()
    # by hand, as in test_value_and_gradients_by_hand (the repel gradient does not depend on the
    # margin while active): v0 [0.505, 0], v1 [-0.01, 0.495]; c0 [-0.49, 0.005], c1 [-0.005, -0.5]
    assert torch.allclose(feats.grad, torch.tensor([[0.505, 0.0], [-0.01, 0.495]]), atol=1e-6)
    shares = _share_gradients(2.0, with_global_sum=True)
    for r in range(2):
        torch.testing.assert_close(shares[r][1] / 2, feats.grad[r])
    torch.testing.assert_close((shares[0][2] + shares[1][2]) / 2, cents.grad)
    # the logged value (mean over the shares) is the whole batch's loss
    torch.testing.assert_close((shares[0][0] + shares[1][0]) / 2, whole.detach())
    # without it each share takes its own hinge: share 1 loses its repel gradient
    alone = _share_gradients(2.0, with_global_sum=False)
    assert torch.allclose(alone[1][1] / 2, torch.tensor([0.0, 0.5]))
