"""The model zoo side by side: for each model pythae also has, genvae's preset and pythae's model trained on the same
networks, data, optimiser and step budget, and scored the same way (docs/model-zoo.md).

genvae's row trains as a user trains it, ``genvae build --preset P -o DIR`` then ``genvae train DIR --data
fashion-mnist --max-steps N`` (subprocesses); pythae's model gets the preset's encoder, latent transform and decoder
(built from the same spec with the same seed) wrapped in its ``BaseEncoder``/``BaseDecoder`` and trains in its
``BaseTrainer`` for one epoch of N batches of 64 (Adam, lr 1e-3, as the preset). Both see Fashion-MNIST from the
Debian package (``/usr/share/datasets/fashion-mnist``), 28 px padded to 32 px, grey, pixels in [0, 1] for pythae's
Bernoulli likelihood and [-1, 1] for genvae's networks (pythae's wrapper maps one to the other).

Scored for both, with one evaluator (:func:`score`), all under the Bernoulli likelihood on pixels in [0, 1] (genvae's
``bce``: a tanh decoder's output a gives Bernoulli logits 2a):

* ELBO: the mean over the test images of log p(x|z) + log p(z) - log q(z|x) at one posterior draw z per image,
  in nats per image (flows: log q includes the log-determinant; VampPrior: the mixture's log density);
* IWAE-k: the mean over a fixed subset of the test images of log (1/k) sum_i w_i, w_i = p(x, z_i) / q(z_i|x),
  k = 5000 draws per image (a tighter lower bound on log p(x));
* reconstruction MSE on the test images, pixels in [0, 1], from the posterior mean (through the flow, if any);
* FID in the features of genvae's Fashion-MNIST classifier (``genvae train-classifier``; docs/evaluation.md) between
  the test images and samples from the prior, computed by genvae's ``fid`` metric;
* training images/s between the first and the last tenth of the run (genvae: its metrics.jsonl; pythae: a
  callback's clock at each step), so start-up and saving are not counted.

pythae is not a dependency of genvae: run this in a venv with both (see benchmarks/peer_pythae.py):

    python -m venv .venv-peer && .venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1 pythae -e .
    .venv-peer/bin/python benchmarks/model_zoo.py --out runs/model-zoo

Without pythae (``--frameworks genvae``) only genvae's rows run. A row whose preset is not installed prints
``pending``; a bound the model does not define (a deterministic or density-free posterior) prints ``—``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from genvae.api import (
    EvalData,
    FeatureNetwork,
    ForwardPass,
    GenerativeModel,
    build_model,
    compose_spec,
    get_registry,
    load_data,
    load_model,
    open_feature_network,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' own helpers
from support import scratch_folder  # noqa: E402

DATA = "fashion-mnist"
DATA_ROOT = "/usr/share/datasets/fashion-mnist"
BATCH = 64
LR = 1e-3
LOG_2PI = math.log(2 * math.pi)
#: a decoder's output space -> the factor to Bernoulli logits (genvae's bce)
LOGIT_SCALE = {"tanh": 2.0, "bernoulli": 1.0}


# -- the rows ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """pythae's model of a row: its class and config class names in ``pythae.models``, config fields beyond the
    shared ones, the trainer, and how its posterior draws and prior are read (``flow``: none, ``linnf``, ``iaf``;
    ``prior``: ``normal`` or ``vamp``; ``bound``: whether the ELBO/IWAE is defined)."""

    model: str
    config: str
    options: dict[str, Any] = field(default_factory=dict)
    trainer: str = "BaseTrainer"
    flow: str = "none"
    prior: str = "normal"
    bound: bool = True
    encoder: str = "gaussian"  # "gaussian": embedding + log_covariance; "point": embedding only (an AE)


@dataclass(frozen=True)
class Row:
    """One model of the zoo: genvae's preset, pythae's counterpart (None: pythae has none) and a note."""

    preset: str
    peer: Peer | None
    note: str = ""


#: a row per model; adding one is one entry. The pythae options follow the preset's settings (keep them equal).
ROWS: dict[str, Row] = {
    "conv-vae": Row("conv-vae", Peer("VAE", "VAEConfig")),
    "beta-vae": Row("beta-vae", Peer("BetaVAE", "BetaVAEConfig", {"beta": 4.0})),
    "vae-vamp": Row("vae-vamp", Peer("VAMP", "VAMPConfig", {"number_components": 50}, prior="vamp")),
    "iwae": Row("iwae", Peer("IWAE", "IWAEConfig", {"number_samples": 5})),
    "miwae": Row("miwae", Peer("MIWAE", "MIWAEConfig", {"number_samples": 5, "number_gradient_estimates": 3})),
    "vae-planar": Row("vae-planar", Peer("VAE_LinNF", "VAE_LinNF_Config", {"flows": ["Planar"] * 4}, flow="linnf")),
    "vae-radial": Row("vae-radial", Peer("VAE_LinNF", "VAE_LinNF_Config", {"flows": ["Radial"] * 4}, flow="linnf")),
    "vae-iaf": Row("vae-iaf", Peer("VAE_IAF", "VAE_IAF_Config", {"n_made_blocks": 4}, flow="iaf")),
    "vae-mog": Row("vae-mog", None, "pythae has no mixture-of-Gaussians prior to train with"),
    "vq-vae": Row(
        "vq-vae", Peer("VQVAE", "VQVAEConfig", {"num_embeddings": 64, "use_ema": True}, bound=False, encoder="point")
    ),
    "two-layer-vae": Row("two-layer-vae", None, "pythae has no hierarchical (two stochastic layer) VAE"),
    "beta-tcvae": Row("beta-tcvae", Peer("BetaTCVAE", "BetaTCVAEConfig", {"beta": 6.0})),
    "factor-vae": Row("factor-vae", Peer("FactorVAE", "FactorVAEConfig", {"gamma": 6.0}, trainer="AdversarialTrainer")),
    "wae-mmd": Row(
        "wae-mmd",
        Peer("WAE_MMD", "WAE_MMD_Config", {"kernel_choice": "imq", "reg_weight": 10.0}, bound=False, encoder="point"),
    ),
    "info-vae": Row(
        "info-vae", Peer("INFOVAE_MMD", "INFOVAE_MMD_Config", {"kernel_choice": "rbf", "alpha": 0.0, "lbd": 1000.0})
    ),
}


# -- the evaluator -------------------------------------------------------------------------------------------------


class Scorer(Protocol):
    """What :func:`score` reads of a trained model, whichever framework trained it. Images are in [0, 1]."""

    #: whether the ELBO and IWAE bounds are defined (a stochastic posterior with a density, Bernoulli logits)
    has_bound: bool

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """log p(x|z) + log p(z) - log q(z|x) of k posterior draws per image: (k, B), nats."""
        ...

    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstructions from the posterior mean, in [0, 1]."""
        ...

    def sample(self, n: int) -> Tensor:
        """n images from the prior, in [0, 1]."""
        ...


def bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x|z) under Bernoulli(sigmoid(logits)) per pixel, summed per image: logits (..., B, C, H, W) and x
    (B, C, H, W) in [0, 1] -> (..., B). The negative of genvae's ``bce`` term for one image."""
    target = x.expand_as(logits)
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(-3).sum(-1)


def iwae_bound(log_w: Tensor) -> Tensor:
    """log (1/k) sum_i exp(log_w_i) per image from (k, B) log-weights: the k-sample importance-weighted bound."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


@torch.no_grad()
def elbo(scorer: Scorer, images: Tensor, batch: int = 500) -> float:
    """The mean over ``images`` (uint8 or [0, 1]) of one draw's log-weight: an unbiased estimate of the ELBO."""
    total = 0.0
    for i in range(0, len(images), batch):
        x = as_unit(images[i : i + batch])
        total += float(scorer.log_weights(x, 1).sum())
    return total / len(images)


@torch.no_grad()
def iwae(scorer: Scorer, images: Tensor, k: int, chunk: int = 2048) -> float:
    """The mean over ``images`` of the k-sample IWAE bound; the model sees about ``chunk`` (images x draws) at once."""
    group = max(1, min(len(images), chunk))
    draws = max(1, chunk // group)
    values = []
    for i in range(0, len(images), group):
        x = as_unit(images[i : i + group])
        log_w = torch.cat([scorer.log_weights(x, min(draws, k - done)) for done in range(0, k, draws)])
        values.append(iwae_bound(log_w))
    return float(torch.cat(values).mean())


@torch.no_grad()
def reconstruction_mse(scorer: Scorer, images: Tensor, batch: int = 500) -> float:
    """Mean squared error per pixel in [0, 1] between the images and their reconstructions."""
    total = 0.0
    for i in range(0, len(images), batch):
        x = as_unit(images[i : i + batch])
        total += float((scorer.reconstruct(x) - x).pow(2).sum())
    return total / images[0].numel() / len(images)


def as_unit(images: Tensor) -> Tensor:
    """uint8 images to floats in [0, 1]; float images are taken to be there already."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


class GivenImages(EvalData):
    """genvae's evaluation data with samples drawn elsewhere (pythae's, or genvae's own drawn by a scorer), so FID
    is computed by genvae's registered ``fid`` metric in its feature network for every model alike; the real
    images' features are computed once and shared."""

    def __init__(self, real: Tensor, samples: Tensor, network: FeatureNetwork, real_features: Tensor | None):
        super().__init__(None, real, torch.device("cpu"), features=network, n_samples=len(samples))
        self._given = samples
        self._real_features = real_features

    def samples(self) -> Tensor:
        return self._given

    def features(self, which: str) -> Tensor:
        if which == "real" and self._real_features is not None:
            return self._real_features
        return super().features(which)


def fid(real: Tensor, samples01: Tensor, network: FeatureNetwork, real_features: Tensor | None = None) -> float:
    """FID between uint8 real images and samples in [0, 1], by genvae's ``fid`` metric in ``network``'s features."""
    data = GivenImages(real, samples01 * 2 - 1, network, real_features)
    return float(get_registry().get("metric", "fid").obj(data)["fid"])


@dataclass
class Scores:
    elbo: float | None
    iwae: float | None
    mse: float
    fid: float | None
    eval_seconds: float


def score(
    scorer: Scorer,
    test: Tensor,
    *,
    elbo_images: int,
    iwae_images: int,
    iwae_k: int,
    network: FeatureNetwork | None = None,
    fid_samples: int = 0,
    real_features: Tensor | None = None,
    seed: int = 0,
) -> Scores:
    """Every figure of a row for one trained model: the bounds (None where not defined), MSE and FID (None without a
    feature network). The test images are uint8 (N, C, H, W); the first ``elbo_images`` give the ELBO and MSE, the
    first ``iwae_images`` the IWAE bound."""
    began = time.perf_counter()
    torch.manual_seed(seed)
    bound = scorer.has_bound
    e = elbo(scorer, test[:elbo_images]) if bound else None
    w = iwae(scorer, test[:iwae_images], iwae_k) if bound and iwae_images and iwae_k else None
    mse = reconstruction_mse(scorer, test[:elbo_images])
    f = None
    if network is not None and fid_samples:
        with torch.no_grad():
            samples = torch.cat([scorer.sample(min(500, fid_samples - i)) for i in range(0, fid_samples, 500)])
        f = fid(test, samples, network, real_features)
    return Scores(e, w, mse, f, time.perf_counter() - began)


class GenvaeScorer:
    """A genvae model through its public API: the pass's posterior, k draws through the transform's flow as one
    batch (``latent_pass``, ``ForwardPass.multi``), the prior of the pass (``model.prior``: a VampPrior's mixture of
    the pseudo-inputs' posteriors encoded in the same pass) and the decoder's output read as Bernoulli logits."""

    def __init__(self, model: GenerativeModel):
        self.model = model.eval()
        self.scale = LOGIT_SCALE.get(model.decoder.output)
        self.has_bound = self.scale is not None and model.transform.stochastic

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        assert self.scale is not None, "the bound needs a decoder with logits"
        model = self.model
        fwd = ForwardPass(model, x * 2 - 1)
        posterior = model.encode_pass(fwd.x, fwd)
        model.latent_pass(fwd, posterior, k)
        fwd.prior = model.prior(fwd)
        if fwd.multi is not None:
            z, log_q, out = fwd.multi.z, fwd.multi.log_q, fwd.multi.decoder_output
        else:
            assert fwd.z is not None and fwd.decoder_output is not None
            z, log_q, out = fwd.z.unsqueeze(0), fwd.log_q.unsqueeze(0), fwd.decoder_output.unsqueeze(0)
        return bernoulli_log_likelihood(self.scale * out, x) + fwd.prior.log_prob(z) - log_q

    def reconstruct(self, x: Tensor) -> Tensor:
        return (self.model.reconstruct(x * 2 - 1) + 1) / 2

    def sample(self, n: int) -> Tensor:
        return (self.model.sample(n) + 1) / 2


# -- genvae's run: the command line ----------------------------------------------------------------------------------


def genvae_exe() -> list[str]:
    """The ``genvae`` command of this interpreter's environment."""
    return [str(Path(sys.executable).parent / "genvae")]


def train_genvae(preset: str, folder: Path, steps: int, seed: int, data_root: str) -> tuple[float, list[str]]:
    """``genvae build --preset`` + ``genvae train`` as a user types them; returns images/s and the commands."""
    log_every = max(1, steps // 10)
    build = [*genvae_exe(), "build", "--preset", preset, "-o", str(folder)]
    train = [
        *genvae_exe(),
        "train",
        str(folder),
        "--data",
        DATA,
        "--data-root",
        data_root,
        "--max-steps",
        str(steps),
        "--seed",
        str(seed),
        "--log-every",
        str(log_every),
        "--quiet",
    ]
    for cmd in (build, train):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first, last = lines[0], lines[-1]
    rate = (last["step"] - first["step"]) * BATCH / max(1e-9, last["wall_time"] - first["wall_time"])
    return rate, ["genvae " + " ".join(c[1:]) for c in (build, train)]


# -- pythae's run ------------------------------------------------------------------------------------------------


def preset_network(preset: str, seed: int) -> GenerativeModel:
    """The genvae model of ``preset`` (or, for a row whose preset is not installed, the zoo network of ``conv-vae``),
    built with ``seed``: pythae trains its encoder, latent transform and decoder."""
    torch.manual_seed(seed)
    return build_model(compose_spec(preset=preset))


def make_peer(row: Row, network: GenerativeModel) -> tuple[Any, Any]:
    """pythae's model of ``row`` on ``network``'s encoder, latent transform and decoder; and its decoder's logits."""
    import pythae.models as pm
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    peer = row.peer
    assert peer is not None

    # pythae pickles its encoder and decoder at the end of training (cloudpickle, by value for classes made here):
    # they hold the parts and plain values, never the model (whose registry reference does not pickle)
    class Encoder(BaseEncoder):
        def __init__(self, encoder: Any, transform: Any, point: bool) -> None:
            super().__init__()
            self.encoder, self.transform, self.point = encoder, transform, point

        def forward(self, x: Tensor) -> Any:
            post = self.transform.posterior(self.encoder(x * 2 - 1))
            if self.point:
                return ModelOutput(embedding=post.mean.flatten(1))
            return ModelOutput(embedding=post.mean.flatten(1), log_covariance=post.logvar.flatten(1))

    class Decoder(BaseDecoder):
        def __init__(self, decoder: Any, transform: Any, shape: tuple[int, ...], scale: float) -> None:
            super().__init__()
            self.decoder, self.transform, self.shape, self.scale = decoder, transform, shape, scale

        def logits(self, z: Tensor) -> Tensor:
            return self.scale * self.decoder(self.transform.generate(z.view(-1, *self.shape)))

        def forward(self, z: Tensor) -> Any:
            return ModelOutput(reconstruction=torch.sigmoid(self.logits(z)))

    fields: dict[str, Any] = {"input_dim": tuple(network.spec.image_shape), "latent_dim": int(network.layout.numel)}
    config_cls = getattr(pm, peer.config)
    if "reconstruction_loss" in getattr(config_cls, "__dataclass_fields__", {}):
        fields["reconstruction_loss"] = "bce"
    config = config_cls(**fields, **peer.options)
    encoder = Encoder(network.encoder, network.transform, peer.encoder == "point")
    decoder = Decoder(
        network.decoder, network.transform, tuple(network.layout.shape), LOGIT_SCALE[network.decoder.output]
    )
    return getattr(pm, peer.model)(config, encoder=encoder, decoder=decoder), decoder


class StepClock:
    """A pythae training callback that notes the time at the end of every step."""

    def __init__(self) -> None:
        from pythae.trainers.training_callbacks import TrainingCallback

        clock = self

        class Callback(TrainingCallback):
            def on_train_step_end(self, training_config: Any, **kwargs: Any) -> None:
                clock.times.append(time.perf_counter())

        self.times: list[float] = []
        self.callback = Callback()

    def rate(self) -> float:
        """Images/s between the first and the last tenth of the steps."""
        t = self.times
        a = len(t) // 10
        return (len(t) - 1 - a) * BATCH / max(1e-9, t[-1] - t[a])


def train_pythae(row: Row, network: GenerativeModel, train01: Tensor, steps: int, seed: int) -> tuple[Any, Any, float]:
    """pythae's model of ``row`` trained for ``steps`` batches of 64 (one epoch of steps * 64 training images drawn
    with ``seed``) by its trainer with Adam at 1e-3; returns the model, its decoder and images/s."""
    import contextlib
    import io
    import logging

    import pythae.trainers as pt
    from pythae.data.datasets import BaseDataset

    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.manual_seed(seed)
    model, decoder = make_peer(row, network)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train01), generator=g)[: steps * BATCH]
    data = train01[idx]
    dataset = BaseDataset(data, torch.zeros(len(data)))
    assert row.peer is not None
    trainer_cls = getattr(pt, row.peer.trainer)
    config_cls = getattr(pt, row.peer.trainer + "Config")
    config = config_cls(
        output_dir=scratch_folder(prefix="pythae-zoo-"),
        num_epochs=1,
        learning_rate=LR,
        per_device_train_batch_size=BATCH,
        train_dataloader_num_workers=0,
        optimizer_cls="Adam",
        no_cuda=True,
        steps_saving=None,
        steps_predict=None,
    )
    clock = StepClock()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        trainer = trainer_cls(model, dataset, training_config=config, callbacks=[clock.callback])
        trainer.train()
    return model.eval(), decoder, clock.rate()


class PythaeScorer:
    """A pythae model under the same evaluator: its encoder's Gaussian, its flows (planar/radial layers, IAF) with
    their log-determinants, its prior (N(0, I), or the VampPrior's mixture) and its decoder's Bernoulli logits."""

    def __init__(self, model: Any, decoder: Any, peer: Peer):
        self.model, self.decoder, self.peer = model, decoder, peer
        self.has_bound = peer.bound

    def _flow(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_det = torch.zeros(z.shape[0])
        if self.peer.flow == "linnf":
            for layer in self.model.net:
                out = layer(z)
                z, log_det = out.out, log_det + out.log_abs_det_jac
        elif self.peer.flow == "iaf":
            out = self.model.iaf_flow.inverse(z)
            z, log_det = out.out, out.log_abs_det_jac
        return z, log_det

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        out = self.model.encoder(x)
        mu, logvar = out.embedding, out.log_covariance
        b, d = mu.shape
        z0 = mu + torch.exp(0.5 * logvar) * torch.randn(k, b, d)
        log_q = (-0.5 * (LOG_2PI + logvar + (z0 - mu).pow(2) * torch.exp(-logvar))).sum(-1)
        z, log_det = self._flow(z0.flatten(0, 1))
        log_q = log_q - log_det.view(k, b)
        if self.peer.prior == "vamp":  # pythae's mixture log density, which leaves out the 2 pi constant
            log_p = self.model._log_p_z(z) - 0.5 * d * LOG_2PI
        else:
            log_p = (-0.5 * (LOG_2PI + z.pow(2))).sum(-1)
        logits = self.decoder.logits(z)
        return bernoulli_log_likelihood(logits.view(k, b, *x.shape[1:]), x) + log_p.view(k, b) - log_q

    def reconstruct(self, x: Tensor) -> Tensor:
        z = self.model.encoder(x).embedding
        if self.peer.flow != "none":
            z = self._flow(z)[0]
        return torch.sigmoid(self.decoder.logits(z))

    def sample(self, n: int) -> Tensor:
        from pythae.samplers import NormalSampler, VAMPSampler

        sampler = VAMPSampler(self.model) if self.peer.prior == "vamp" else NormalSampler(self.model)
        return sampler.sample(num_samples=n, batch_size=n, return_gen=True)


# -- the driver ---------------------------------------------------------------------------------------------------


def ensure_classifier(out: Path, data_root: str, given: str | None = None) -> Path:
    """genvae's Fashion-MNIST feature network: ``given``, or one trained once into OUT/classifier
    (``genvae train-classifier --width 16 --epochs 2``, as docs/evaluation.md) and reused."""
    if given:
        return Path(given)
    folder = out / "classifier"
    if not (folder / "config.json").exists():
        cmd = [*genvae_exe(), "train-classifier", "--data", DATA, "--data-root", data_root, "-o", str(folder)]
        cmd += ["--width", "16", "--epochs", "2"]
        print("training the feature network:", "genvae " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, capture_output=True)
    return folder


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(results: Sequence[dict[str, Any]]) -> str:
    """The markdown table of docs/model-zoo.md."""
    head = "| model | framework | ELBO | IWAE-k | MSE | FID | train images/s | run s |"
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if r.get("status"):
            lines.append(f"| {r['model']} | {r['framework']} | {r['status']} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['framework']} | {fmt(r['elbo'])} | {fmt(r['iwae'])} | {fmt(r['mse'], 4)} | "
            f"{fmt(r['fid'], 2)} | {fmt(r['images_per_s'], 0)} | {fmt(r['seconds'], 0)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", default=",".join(ROWS), help=f"comma-separated rows: {', '.join(ROWS)}")
    ap.add_argument("--frameworks", default="genvae,pythae", help="genvae, pythae or both")
    ap.add_argument("--steps", type=int, default=300, help="training steps of 64 images per run")
    ap.add_argument("--out", default="runs/model-zoo", help="folder for the models, the classifier and results")
    ap.add_argument("--data-root", default=DATA_ROOT)
    ap.add_argument("--elbo-images", type=int, default=10000, help="test images for the ELBO and the MSE")
    ap.add_argument("--iwae-images", type=int, default=16, help="test images for the IWAE bound")
    ap.add_argument("--iwae-k", type=int, default=5000, help="importance samples per image of the IWAE bound")
    ap.add_argument("--fid-samples", type=int, default=5000, help="prior samples for FID (0: no FID)")
    ap.add_argument("--classifier", help="a genvae train-classifier folder (default: train one into OUT/classifier)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ROWS]
    if unknown:
        sys.exit(f"unknown model {unknown[0]}; known: {', '.join(ROWS)}")
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if "pythae" in frameworks:
        try:
            import pythae  # noqa: F401
        except ImportError:
            sys.exit("pythae is not installed in this environment; see this script's docstring for its own venv")
    threads = torch.get_num_threads()
    print(
        f"model zoo: {len(models)} model(s) x {len(frameworks)} framework(s), {args.steps} steps of {BATCH} "
        f"({args.steps * BATCH} images) per run | ELBO and MSE on {args.elbo_images} test images | IWAE-{args.iwae_k} "
        f"on {args.iwae_images} | FID on {args.fid_samples} samples | cpu, {threads} thread(s)",
        flush=True,
    )
    began = time.perf_counter()
    clf = ensure_classifier(out, args.data_root, args.classifier)
    network = open_feature_network(clf, get_registry())
    test = load_data(DATA, image_size=32, channels=1, split="test", root=args.data_root).images
    real_features = GivenImages(test, test[:1].float(), network, None).features("real")
    train01 = None
    installed = set(get_registry().names("preset"))
    results: list[dict[str, Any]] = []
    budget = dict(
        elbo_images=args.elbo_images,
        iwae_images=args.iwae_images,
        iwae_k=args.iwae_k,
        network=network,
        fid_samples=args.fid_samples,
        real_features=real_features,
        seed=args.seed,
    )
    for name in models:
        row = ROWS[name]
        for framework in frameworks:
            record: dict[str, Any] = {"model": name, "framework": framework}
            run_began = time.perf_counter()
            if framework == "genvae":
                if row.preset not in installed:
                    record["status"] = "pending (preset not installed)"
                else:
                    folder = out / "genvae" / name
                    if folder.exists():
                        import shutil

                        shutil.rmtree(folder)
                    rate, commands = train_genvae(row.preset, folder, args.steps, args.seed, args.data_root)
                    scores = score(GenvaeScorer(load_model(folder)), test, **budget)  # type: ignore[arg-type]
                    record.update(vars(scores), images_per_s=rate, commands=commands)
            else:
                if row.peer is None:
                    record["status"] = f"— ({row.note})"
                else:
                    if train01 is None:
                        train01 = as_unit(load_data(DATA, image_size=32, channels=1, root=args.data_root).images)
                    preset = row.preset if row.preset in installed else "conv-vae"
                    net = preset_network(preset, args.seed)
                    model, decoder, rate = train_pythae(row, net, train01, args.steps, args.seed)
                    scores = score(PythaeScorer(model, decoder, row.peer), test, **budget)  # type: ignore[arg-type]
                    record.update(vars(scores), images_per_s=rate, network_of=preset)
            record["seconds"] = time.perf_counter() - run_began
            results.append(record)
            print(json.dumps(record), flush=True)
    total = time.perf_counter() - began
    print(table(results))
    print(f"total {total:.0f} s")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "total_s": total, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
