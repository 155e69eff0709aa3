"""``metrics``: the scores of ``genvae evaluate``.

* ``rmse``: per-image root mean squared reconstruction error on the 0-255 scale (LapCVAE's table), mean and std;
* ``fid``: Fréchet distance between Gaussians fitted to the features of real images and of samples (Heusel et al.
  2017), computed by torchmetrics' ``FrechetInceptionDistance`` on the feature network's features;
* ``kid``: kernel distance (Bińkowski et al. 2018; cubic polynomial kernel, unbiased MMD over random subsets), by
  torchmetrics' ``KernelInceptionDistance``: mean and std over subsets;
* ``is``: the Inception-Score-style score exp(E KL(p(y|x) || p(y))) of the samples under the feature network's
  classifier (Salimans et al. 2016), by torchmetrics' ``InceptionScore``: mean and std over splits;
* ``pr``: improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls
  around its points reaching their k-th nearest neighbour (k = 3); precision = share of samples inside the real
  manifold, recall = share of real images inside the samples' manifold (no library implements it; written here
  and tested against hand-computed cases);
* ``coverage``: mode coverage, the share of samples the feature network's classifier puts in each class (the rarest
  class's share, and how many classes hold at least 3 %);
* ``spectrum``: periodic artefacts (checkerboards of strided deconvolutions show as excess power at high spatial
  frequencies): the radially averaged power spectrum of the samples over that of the real images, at every radius
  above half the Nyquist frequency (mean ratio, and the worst radius's factor max(ratio, 1 / ratio)).

Every feature-space score is labelled with the network it was computed in (``--classifier``): a score in a small
classifier's space is comparable only with scores in the same network.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from genvae.api import EvalData, MetricFunction, RegisterNamed, hookimpl

PR_NEIGHBOURS = 3


class _Given(nn.Module):
    """torchmetrics' feature extractor for features computed beforehand: the input is the output."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


@contextmanager
def _quiet() -> Iterator[None]:
    """torchmetrics warns that it keeps features in memory: genvae passes them precomputed, by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="torchmetrics")
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        yield


def rmse(data: EvalData) -> dict[str, float]:
    x, x_hat = data.real_images(), data.reconstructions()
    per_image = ((x_hat.double() - x.double()) * 127.5).pow(2).flatten(1).mean(1).sqrt()
    return {"rmse": per_image.mean().item(), "rmse_std": per_image.std().item() if len(per_image) > 1 else 0.0}


def fid_of(real: Tensor, fake: Tensor) -> float:
    """FID between two (N, F) feature sets (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    with _quiet():
        metric = FrechetInceptionDistance(feature=_Given(real.shape[1]))
        metric.update(real, real=True)
        metric.update(fake, real=False)
        return float(metric.compute())


def fid(data: EvalData) -> dict[str, float]:
    return {"fid": fid_of(data.features("real"), data.features("samples"))}


def kid_of(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID mean and std between two (N, F) feature sets (torchmetrics) over ``subsets`` random subsets of
    ``subset_size`` (at most half the smaller set, so that subsets differ)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = max(2, min(subset_size, min(len(real), len(fake)) // 2))
    with _quiet(), torch.random.fork_rng(devices=[]):
        metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=subsets, subset_size=size)
        metric.update(real, real=True)
        metric.update(fake, real=False)
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def kid(data: EvalData) -> dict[str, float]:
    mean, std = kid_of(data.features("real"), data.features("samples"), seed=data.seed)
    return {"kid": mean, "kid_std": std}


def inception_score_of(logits: Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """The IS of (N, K) class logits: exp(mean KL(p(y|x) || p(y))) per split, mean and std (torchmetrics)."""
    from torchmetrics.image.inception import InceptionScore

    with _quiet(), torch.random.fork_rng(devices=[]):
        metric = InceptionScore(feature=_Given(logits.shape[1]), splits=min(splits, len(logits)))
        metric.update(logits)
        torch.manual_seed(seed)  # torchmetrics shuffles before splitting
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(data: EvalData) -> dict[str, float]:
    mean, std = inception_score_of(data.logits("samples"), seed=data.seed)
    return {"is": mean, "is_std": std}


def _kth_radius(points: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], points)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st smallest is the point itself (0)
    return torch.cat(out)


def _inside(queries: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """For each query, whether it lies within some centre's ball (distance <= radius)."""
    out = []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i : i + chunk], centres)
        out.append((d <= radii.unsqueeze(0)).any(1))
    return torch.cat(out)


def precision_recall_of(real: Tensor, fake: Tensor, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall of (N, F) fake features against (M, F) real features (Kynkäänniemi et al.)."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and generated images")
    real, fake = real.double(), fake.double()
    precision = _inside(fake, real, _kth_radius(real, k)).double().mean().item()
    recall = _inside(real, fake, _kth_radius(fake, k)).double().mean().item()
    return precision, recall


def precision_recall(data: EvalData) -> dict[str, float]:
    precision, recall = precision_recall_of(data.features("real"), data.features("samples"))
    return {"precision": precision, "recall": recall}


#: coverage: a class counts as covered when at least this share of the samples fall in it
COVERED_SHARE = 0.03


def class_shares_of(logits: Tensor) -> Tensor:
    """(K,) share of the samples the classifier puts in each class (argmax of its (N, K) logits)."""
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).double()
    return counts / counts.sum()


def coverage(data: EvalData) -> dict[str, float]:
    shares = class_shares_of(data.logits("samples"))
    out = {
        "min_class_share": shares.min().item(),
        "classes_covered": float((shares >= COVERED_SHARE).sum().item()),
        "classes": float(len(shares)),
    }
    out.update({f"class_share_{k}": v for k, v in enumerate(shares.tolist())})
    return out


def radial_power(images: Tensor) -> Tensor:
    """The radially averaged power spectrum of (N, C, H, W) images, averaged over images and channels: (R,) power
    per integer radius r = 0 .. min(H, W) // 2 of the centred 2-D spectrum (the mean is removed per image)."""
    x = images.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x).abs().pow(2), dim=(-2, -1)).mean(dim=(0, 1))
    h, w = power.shape
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = (yy.double().pow(2) + xx.double().pow(2)).sqrt().round().long().flatten()
    top = min(h, w) // 2
    keep = radius <= top
    total = torch.zeros(top + 1, dtype=torch.float64).index_add_(0, radius[keep], power.flatten()[keep])
    count = torch.zeros(top + 1, dtype=torch.float64).index_add_(
        0, radius[keep], torch.ones_like(power.flatten()[keep])
    )
    return total / count.clamp(min=1)


def spectrum_ratios(real: Tensor, fake: Tensor) -> Tensor:
    """Per radius above half the Nyquist frequency (r > min(H, W) / 4), the samples' power over the real images'."""
    r, f = radial_power(real), radial_power(fake)
    high = torch.arange(len(r)) > (len(r) - 1) / 2
    return f[high] / r[high].clamp(min=1e-30)


def spectrum(data: EvalData) -> dict[str, float]:
    ratios = spectrum_ratios(data.real_images(), data.samples())
    worst = torch.maximum(ratios, 1 / ratios.clamp(min=1e-30)).max()
    return {
        "spectrum_high_ratio": ratios.mean().item(),
        "spectrum_worst_ratio": worst.item(),
    }


@hookimpl
def genvae_register_metrics(register: RegisterNamed[MetricFunction]) -> None:
    register(
        "rmse",
        rmse,
        help="reconstruction RMSE per image on the 0-255 scale (posterior mean), mean and std",
        needs=("reconstructions",),
        label="RMSE (0-255)",
    )
    register(
        "fid",
        fid,
        help="Fréchet distance between real and sample features (lower is better)",
        needs=("samples", "features"),
        label="FID",
    )
    register(
        "kid",
        kid,
        help="kernel distance between real and sample features, mean and std over subsets",
        needs=("samples", "features"),
        label="KID",
    )
    register(
        "is",
        inception_score,
        help="Inception-Score-style exp(E KL(p(y|x) || p(y))) of the samples under "
        "the feature network's classifier (higher is better)",
        needs=("samples", "features"),
        label="IS",
    )
    register(
        "pr",
        precision_recall,
        help="improved precision (samples inside the real manifold) and recall (real "
        "images inside the samples' manifold), k = 3",
        needs=("samples", "features"),
        label="precision/recall",
    )
    register(
        "coverage",
        coverage,
        help="mode coverage: the classifier's share of samples per class; the rarest class's share and how many "
        f"classes hold at least {COVERED_SHARE:.0%} of the samples",
        needs=("samples", "features"),
        label="class coverage",
    )
    register(
        "spectrum",
        spectrum,
        help="periodic artefacts: the samples' radially averaged power spectrum over the real images', above half "
        "the Nyquist frequency; mean ratio and the worst bin's factor (max of ratio, 1/ratio)",
        needs=("samples",),
        label="power spectrum, samples / real",
    )
