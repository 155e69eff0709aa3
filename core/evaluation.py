"""Scoring models: what a metric reads (:class:`EvalData`), feature networks, and the evaluation driver
(:func:`evaluate_models`, which ``genvae evaluate`` and ``genvae.evaluate`` share).

A metric is a function registered by a plugin (``genvae_register_metrics``) that takes an :class:`EvalData`
and returns named numbers. ``EvalData`` computes what metrics ask for once and shares it: the real images,
the model's reconstructions (posterior mean) and samples, and their features in a feature network's space.
Feature networks are registered too (``genvae_register_feature_networks``) and opened from a path; every
score computed in one says so in its label (``FID (fashion-mnist classifier features)``), so a score in a
small classifier's space is never mistaken for an Inception one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from genvae.core.errors import GenvaeError
from genvae.core.progress import report

#: what a metric may read: the model's reconstructions of the real images, its samples, feature-space views
NEEDS = ("reconstructions", "samples", "features")


@runtime_checkable
class FeatureNetwork(Protocol):
    """A frozen network whose features (and class logits) metrics are computed in."""

    #: how scores in its space are labelled, e.g. "fashion-mnist classifier features"
    label: str
    #: the images it takes: (channels, size, size); others are fitted (resized, grey <-> RGB)
    image_shape: tuple[int, int, int]

    def features(self, x: Tensor) -> Tensor:
        """(B, F) features of images in [-1, 1]."""
        ...

    def logits(self, x: Tensor) -> Tensor:
        """(B, K) class logits of images in [-1, 1] (the Inception-Score-style metric's classifier)."""
        ...


def fit_to(x: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Images in [-1, 1] fitted to a network's (channels, size, size): bilinear resize, grey <-> RGB."""
    c, h, w = shape
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True) if c == 1 else x.expand(-1, c, -1, -1) if x.shape[1] == 1 else x
        if x.shape[1] != c:
            raise GenvaeError(f"cannot fit {x.shape[1]}-channel images to a {c}-channel feature network")
    if tuple(x.shape[-2:]) != (h, w):
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x


class EvalData:
    """One model's evaluation inputs, computed lazily and once: real images (uint8, the model's size), the
    reconstructions (posterior mean) and ``n_samples`` samples (images in [-1, 1], on the CPU), and with a
    feature network their features and logits. Random draws follow ``seed``. Every batch of long work is
    reported to ``progress(task, done, total)`` when given, else to the engine's reporter
    (:func:`genvae.core.progress.report`: the command line's bars).

    The model sees ``batch_size`` images at a time, or fewer: the chunk that fits the memory limit beside the
    image sets kept here (:func:`genvae.core.budget.inference_batch`); the results are the same either way."""

    def __init__(
        self,
        model: Any,
        real: Tensor,
        device: torch.device,
        *,
        features: FeatureNetwork | None = None,
        n_samples: int | None = None,
        batch_size: int = 256,
        seed: int = 0,
        progress: Callable[[str, int, int], None] | None = None,
    ):
        self.model = model
        self.real = real
        self.device = device
        self.network = features
        self.n_samples = n_samples or len(real)
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self._cache: dict[str, Tensor] = {}

    def _tell(self, task: str, done: int, total: int) -> None:
        (self.progress or report)(task, done, total)

    # -- images -------------------------------------------------------------------------------------
    def real_images(self) -> Tensor:
        """The real images in [-1, 1], (N, C, H, W) float on the CPU."""
        if "real" not in self._cache:
            self._cache["real"] = self.real.float() / 127.5 - 1.0
        return self._cache["real"]

    def held_bytes(self) -> int:
        """What an evaluation keeps on the host while the model runs: the real images (uint8 and in [-1, 1]),
        the reconstructions and the samples (float)."""
        from genvae.core.budget import image_bytes

        return image_bytes(self.model, len(self.real), 1 + 4 + 4) + image_bytes(self.model, self.n_samples)

    @torch.no_grad()
    def reconstructions(self) -> Tensor:
        """The model's reconstructions of the real images (posterior mean), in [-1, 1], on the CPU."""
        from genvae.core.inference import reconstruct_images

        if "recon" not in self._cache:
            out = torch.empty(len(self.real), *self.real.shape[1:])
            done = 0
            for batch in self._batches():
                out[done : done + len(batch)] = reconstruct_images(
                    self.model,
                    batch,
                    self.device,
                    held=self.held_bytes(),
                    holding="the image sets it scores",
                    command="evaluate",
                )
                done += len(batch)
                self._tell("reconstructions", done, len(self.real))
            self._cache["recon"] = out
        return self._cache["recon"]

    @torch.no_grad()
    def samples(self) -> Tensor:
        """``n_samples`` images drawn from the model (prior samples), in [-1, 1], on the CPU."""
        from genvae.core.inference import draw_samples, sample_chunks

        if "samples" not in self._cache:
            devices = [self.device] if self.device.type == "cuda" else []
            budget: dict[str, Any] = {
                "block": self.batch_size,
                "dtype": torch.float32,
                "held": self.held_bytes(),
                "holding": "the image sets it scores",
                "command": "evaluate",
            }
            sample_chunks(self.model, self.n_samples, **budget)  # refused before any draw if one does not fit
            with torch.random.fork_rng(devices=devices):  # the caller's random streams are left as they were
                torch.manual_seed(self.seed)
                out = torch.empty(self.n_samples, *self.real.shape[1:])
                done = 0
                while done < self.n_samples:  # latents drawn batch_size at a time, as always
                    n = min(self.batch_size, self.n_samples - done)
                    out[done : done + n] = draw_samples(self.model, n, self.device, **budget)
                    done += n
                    self._tell("samples", done, self.n_samples)
            self._cache["samples"] = out
        return self._cache["samples"]

    def _batches(self) -> Iterable[Tensor]:
        real = self.real_images()
        for i in range(0, len(real), self.batch_size):
            yield real[i : i + self.batch_size]

    # -- feature space ------------------------------------------------------------------------------
    def require_network(self, metric: str) -> FeatureNetwork:
        if self.network is None:
            raise GenvaeError(
                f"metric '{metric}' needs a feature network: train one with genvae train-classifier "
                "and pass --classifier DIR"
            )
        return self.network

    @torch.no_grad()
    def _in_network(self, which: str, images: Tensor, method: str) -> Tensor:
        key = f"{method}:{which}"
        if key not in self._cache:
            net = self.require_network(method)
            out = []
            for i in range(0, len(images), self.batch_size):
                batch = fit_to(images[i : i + self.batch_size].to(self.device), net.image_shape)
                out.append(getattr(net, method)(batch).double().cpu())
                self._tell(f"{method} of {which}", min(i + self.batch_size, len(images)), len(images))
            self._cache[key] = torch.cat(out)
        return self._cache[key]

    def features(self, which: str) -> Tensor:
        """(N, F) float64 features of ``which``: ``real``, ``samples`` or ``reconstructions``."""
        return self._in_network(which, self._images(which), "features")

    def logits(self, which: str) -> Tensor:
        """(N, K) float64 class logits of ``which`` (``real``, ``samples`` or ``reconstructions``)."""
        return self._in_network(which, self._images(which), "logits")

    def _images(self, which: str) -> Tensor:
        if which == "real":
            return self.real_images()
        if which == "samples":
            return self.samples()
        if which == "reconstructions":
            return self.reconstructions()
        raise ValueError(f"unknown image set '{which}'; known: real, samples, reconstructions")

    @property
    def feature_label(self) -> str | None:
        return self.network.label if self.network is not None else None


def open_feature_network(path: str | Path, registry: Any, device: torch.device | str = "cpu") -> FeatureNetwork:
    """A feature network from a path: a folder whose ``config.json`` names its loader (``"feature_network"``),
    or a file a registered loader accepts (its extension). One-line errors for anything else."""
    import json

    path = Path(path)
    names = registry.names("features")
    if path.is_dir():
        config = path / "config.json"
        try:
            kind = json.loads(config.read_text(encoding="utf-8")).get("feature_network")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind not in names:
            raise GenvaeError(
                f"{path} is not a feature network folder (its config.json names no feature network of "
                f"{', '.join(names) or 'none installed'}); make one with genvae train-classifier"
            )
        network = registry.get("features", kind).obj(path)
    elif path.is_file():
        loaders = [n for n in names if path.suffix in registry.get("features", n).extra.get("suffixes", ())]
        if not loaders:
            raise GenvaeError(f"no feature network reads {path.name}; installed: {', '.join(names) or 'none'}")
        network = registry.get("features", loaders[0]).obj(path)
    else:
        raise GenvaeError(f"feature network {path} does not exist")
    if isinstance(network, torch.nn.Module):
        network = network.to(device).eval()
    return network


def metric_needs(names: Sequence[str], registry: Any) -> set[str]:
    return {need for name in names for need in registry.get("metric", name).extra.get("needs", ())}


def check_metrics(names: Sequence[str], registry: Any, classifier: Any = None) -> list[str]:
    """The metric names, deduplicated, each one registered, and a feature network given when one needs it; a
    one-line error otherwise (before any model is loaded)."""
    names = list(dict.fromkeys(names))
    known = registry.names("metric")
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise GenvaeError(f"unknown metric '{unknown[0] if unknown else ''}'; metrics: {', '.join(known)}")
    if "features" in metric_needs(names, registry) and classifier is None:
        wanting = [n for n in names if "features" in registry.get("metric", n).extra.get("needs", ())]
        raise GenvaeError(
            f"{', '.join(wanting)} need a feature network: train one with genvae train-classifier "
            "--data DATA -o CLF and pass --classifier CLF"
        )
    return names


def evaluate_models(
    models: Sequence[tuple[str, Any]],
    names: Sequence[str],
    *,
    data: Any = None,
    data_root: str | None = None,
    download: bool = False,
    classifier: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    n_samples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "auto",
    registry: Any = None,
) -> dict[str, Any]:
    """Score each of ``models`` (``(label, model folder or loaded model)``) with the metrics ``names`` on the same
    images, as ``genvae evaluate`` does, and return its JSON report: ``genvae_version``, ``data``, ``split``,
    ``images``, ``seed``, ``feature_network``, ``classifier``, ``labels`` (each metric's label, naming the
    feature space) and ``models`` (per model: ``model``, ``metrics`` {metric: {key: value}}, ``samples``).

    Every random stream is seeded with ``seed`` before each model is scored, so a model's scores do not depend on
    the others'. A loaded model is moved to the device and put in eval mode."""
    from genvae import __version__
    from genvae.core.checkpoint import load_model
    from genvae.core.data import load_data
    from genvae.core.registry import get_registry
    from genvae.core.training.run import resolve_device, seed_everything

    reg = registry or get_registry()
    names = check_metrics(names, reg, classifier)
    needs = metric_needs(names, reg)
    dev = resolve_device(device)
    results: list[dict[str, Any]] = []
    network: FeatureNetwork | None = None
    source, count = None, 0
    for label, given in models:
        seed_everything(seed)
        if isinstance(given, str | Path):
            model = load_model(given, device=dev, registry=reg, amp="config")  # as its train.amp runs it
        else:
            model = given.to(dev)
        model.eval()
        if network is None and classifier is not None:
            network = open_feature_network(classifier, reg, dev)
        spec = model.spec
        images = load_data(
            data,
            image_size=spec.image_size,
            channels=spec.channels,
            split=split,
            root=data_root,
            download=download,
            registry=reg,
        )
        real = images.images if limit is None else images.images[:limit]
        source, count = images.source, len(real)

        def progress(task: str, done: int, total: int, where: str = label) -> None:
            report(f"evaluate {where}: {task}", done, total)

        batch = EvalData(
            model,
            real,
            dev,
            features=network,
            n_samples=n_samples or len(real),
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
        scores = {name: reg.get("metric", name).obj(batch) for name in names}
        results.append({"model": label, "metrics": scores, "samples": batch.n_samples if "samples" in needs else 0})
    feature_label = network.label if network is not None else None
    labels = {}
    for name in names:
        entry = reg.get("metric", name)
        label = entry.extra.get("label", name)
        uses_features = "features" in entry.extra.get("needs", ())
        labels[name] = f"{label} ({feature_label})" if uses_features and feature_label else label
    return {
        "genvae_version": __version__,
        "data": source,
        "split": split,
        "images": count,
        "seed": seed,
        "feature_network": feature_label,
        "classifier": str(classifier) if classifier else None,
        "labels": labels,
        "models": results,
    }


__all__ = [
    "NEEDS",
    "EvalData",
    "FeatureNetwork",
    "check_metrics",
    "evaluate_models",
    "fit_to",
    "metric_needs",
    "open_feature_network",
]
