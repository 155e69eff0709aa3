"""The metrics of genvae evaluate, against hand-computed values and direct formulas on small inputs."""

from __future__ import annotations

import math

import pytest
import torch

from genvae.plugins import metrics as m


def test_fid_of_two_one_dimensional_sets_by_hand():
    # real [0, 2]: mean 1, unbiased variance 2; fake [1, 5]: mean 3, variance 8
    # FID = (1 - 3)^2 + 2 + 8 - 2 sqrt(2 * 8) = 4 + 10 - 8 = 6
    real = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    fake = torch.tensor([[1.0], [5.0]], dtype=torch.float64)
    assert m.fid_of(real, fake) == pytest.approx(6.0, abs=1e-6)
    assert m.fid_of(real, real) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_matches_the_formula_with_a_matrix_square_root():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g, dtype=torch.float64)
    fake = (
        torch.randn(200, 4, generator=g, dtype=torch.float64)
        @ torch.diag(torch.tensor([1.0, 2, 0.5, 1], dtype=torch.float64))
        + 0.3
    )
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = torch.cov(real.T), torch.cov(fake.T)
    # sqrtm(s1 s2) via the symmetric form sqrt(s1) s2 sqrt(s1), which has the same trace
    e, v = torch.linalg.eigh(s1)
    root1 = v @ torch.diag(e.sqrt()) @ v.T
    middle = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp_min(0).sqrt().sum()
    expect = (mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * middle
    assert m.fid_of(real, fake) == pytest.approx(expect.item(), rel=1e-6)


def unbiased_mmd(x, y):
    """Polynomial-kernel MMD^2, unbiased: k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    n = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return (
        (kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum()) / (n * (n - 1)) - 2 * kxy.mean()
    ).item()


def test_kid_of_is_the_mean_unbiased_polynomial_mmd_over_subsets():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(8, 3, generator=g, dtype=torch.float64)
    fake = torch.randn(8, 3, generator=g, dtype=torch.float64) + 1.0
    # subsets of 4 (half the sets); one subset pair: check against the formula on the same draw
    mean, std = m.kid_of(real, fake, subsets=1, subset_size=100, seed=3)
    torch.manual_seed(3)
    i = torch.randperm(8)[:4]
    j = torch.randperm(8)[:4]
    assert mean == pytest.approx(unbiased_mmd(real[i], fake[j]), rel=1e-6)
    many, spread = m.kid_of(real, fake, subsets=50, seed=0)
    assert spread > 0 and many > m.kid_of(real, real + 1e-3, subsets=50, seed=0)[0]


def test_inception_score_of_confident_distinct_classes_is_the_class_count():
    # p(y|x) one-hot on K different classes, p(y) uniform: KL = log K for each, score = K
    logits = torch.full((4, 4), -50.0, dtype=torch.float64)
    logits[range(4), range(4)] = 50.0
    mean, _ = m.inception_score_of(logits, splits=1)
    assert mean == pytest.approx(4.0, rel=1e-6)
    same = torch.zeros(4, 4, dtype=torch.float64)
    same[:, 0] = 50.0
    assert m.inception_score_of(same, splits=1)[0] == pytest.approx(1.0, rel=1e-6)  # one class for all: 1
    # half confident in class 0, half uniform over 2 classes: p(y) = (3/4, 1/4)
    mixed = torch.tensor([[50.0, -50.0], [0.0, 0.0]], dtype=torch.float64)
    kl_a = math.log(1 / 0.75)
    kl_b = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert m.inception_score_of(mixed, splits=1)[0] == pytest.approx(math.exp((kl_a + kl_b) / 2), rel=1e-6)


def test_precision_recall_by_hand():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    # k = 3: radii of the real points are the distance to their 3rd nearest other point: 3, 2, 2, 2, 3,
    # so the real manifold is [-3, 7]
    fake = torch.tensor([[6.5], [7.5], [100.0], [101.0], [102.0], [103.0]])
    precision, recall = m.precision_recall_of(real, fake)
    assert precision == pytest.approx(1 / 6)  # only 6.5 is within a real ball
    # fake radii: 6.5 -> 3rd nn 95.5; 7.5 -> 94.5; 100 -> 3 ; 101 -> 2; 102 -> 2; 103 -> 3
    # real points within 6.5 +- 95.5: all five: recall 1
    assert recall == pytest.approx(1.0)
    assert m.precision_recall_of(real, real + 0.1) == (1.0, 1.0)
    far = torch.tensor([[50.0], [51.0], [52.0], [53.0]])
    assert m.precision_recall_of(real, far) == (0.0, 0.0)


def test_precision_recall_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(40, 3, generator=g), torch.randn(30, 3, generator=g) * 1.5 + 0.5

    def reference(a, b, k=3):  # share of b inside a's k-NN balls
        radii = [sorted(torch.dist(p, q).item() for q in a)[k] for p in a]
        return sum(any(torch.dist(q, p).item() <= r for p, r in zip(a, radii, strict=True)) for q in b) / len(b)

    precision, recall = m.precision_recall_of(real, fake)
    assert precision == pytest.approx(reference(real, fake)) and recall == pytest.approx(reference(fake, real))


def test_precision_recall_needs_more_points_than_neighbours():
    with pytest.raises(ValueError, match="needs more than 3"):
        m.precision_recall_of(torch.zeros(3, 2), torch.zeros(10, 2))
