"""``adv``: the adversarial loss of VAE-GAN / crVAE-GAN, with the discriminator it trains.

As in the crVAE authors' code (``models/allconv_lstm.lua``, ``train_test/train_test_lstm.lua``):

* the discriminator: a trunk of blocks conv -> maxpool 2 -> ReLU -> spatial dropout 0.5 (5x5
  convolutions, 3x3 in the last block; 64x64 -> 256x4x4), then a GAN head Linear -> L2 normalise
  -> dropout -> ReLU -> minibatch discrimination -> Linear -> one logit. The trunk is shared with
  the ``mi`` loss (``provides = {DISCRIMINATOR}``, the ``DiscriminatorTrunk`` protocol) and trains
  at half the learning rate;
* phase ``discriminator`` (the last update of the step in the authors' order, ``train.schedule``: after the
  model updates, on the reconstructions made before them and the prior branch's samples): binary
  cross-entropy on one batch mixing real images, reconstructions and prior samples (64 / 32 / 32 of 128 by
  default), all detached. When the discriminator's error rate on that batch is under ``skip_below`` (0.1) its
  update is skipped for the step (``Loss.SKIP``; one host sync per step, only while the rule is on). Its
  accuracy on each part (``adv.acc_real``, ``adv.acc_recon``, ``adv.acc_prior``, before the update) is logged,
  not summed into the objective. ``adam_gan.lua``'s warm-up (lr/50 for the first 10 updates, lr/5 up to 30)
  applies to the GAN head (``d_warmup: head``, crVAE-GAN) or the whole discriminator (``all``, the VAE-GAN
  baseline);
* phase ``model``: beta times the non-saturating loss -log D(x~) on reconstructions and on fresh
  prior samples (z ~ p(z) through ``model.generate``); the gradient reaches the decoder, the
  latent transform and (``gan_to_encoder``, the crVAE-GAN code) the encoder. The authors' VAE-GAN
  baseline (``train_test_baseline.lua``) keeps it from the encoder: ``gan_to_encoder: false``.

The minibatch discrimination is the authors' ``nn.BatchDiscrimination`` (see
:class:`MinibatchDiscrimination`): the exp(-L1) terms are averaged over the whole batch, the sample
itself included.

The prior samples (z, u, x) are the step's ``ForwardPass.prior_sample()`` (drawn once, until an update of
``train.schedule`` asks for fresh ones); the trunk features of reconstructions and prior samples
in a model-phase update are kept in ``fwd.fake_features`` for that update, so ``mi``
reuses both without a second generation or trunk pass. On a schedule's ``posterior`` update the
generator terms are ``g_recon`` (and ``similarity``), on a ``prior`` update ``g_prior``; the
discriminator always sees real images, reconstructions and prior samples.

Larsen et al.'s learned similarity (the original VAE-GAN): with ``similarity_layer`` = k, the
model phase also measures the reconstruction as the mean squared error between the conv outputs
of trunk block k for x and x_hat (dropout off, real features detached), weighted by
``similarity_weight``.

Dropout follows Torch7's ``nn.SpatialDropout`` / ``nn.Dropout(p, true)`` (the authors' code): no
rescaling while training, outputs scaled by 1 - p in evaluation.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genvae.api import (
    DISCRIMINATOR,
    BuildContext,
    FakeFeatures,
    ForwardPass,
    GenerativeModel,
    Loss,
    RegisterComponent,
    batch_norms,
    expects,
    float_tuple,
    hookimpl,
    int_tuple,
    non_negative,
    non_negative_int,
    one_of,
    option,
    positive_int,
    running_stats_frozen,
    shorten,
    to_bool,
    to_float,
    to_float32,
    to_int,
)

#: adam_gan.lua's warm-up of the discriminator: lr/50 before its 10th update, lr/5 before its 30th
AUTHORS_D_WARMUP: tuple[tuple[int, float], ...] = ((10, 0.02), (30, 0.2))


class Torch7Dropout(nn.Module):
    """Dropout without train-time rescaling (Torch7 ``v1`` dropout); ``spatial`` drops whole channels."""

    def __init__(self, p: float, spatial: bool) -> None:
        super().__init__()
        self.p = p
        self.spatial = spatial

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0:
            return x
        if not self.training:
            return x * (1.0 - self.p)
        shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if self.spatial else x.shape
        keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}, spatial={self.spatial}"


class Trunk(nn.Module):
    """Blocks of conv -> maxpool 2 -> ReLU -> spatial dropout; each block halves the size."""

    def __init__(self, channels: int, widths: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        blocks = []
        prev = channels
        for i, width in enumerate(widths):
            k = 3 if i == len(widths) - 1 else 5
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(prev, width, k, 1, k // 2),
                    nn.MaxPool2d(2),
                    nn.ReLU(),
                    Torch7Dropout(dropout, spatial=True),
                )
            )
            prev = width
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def layer_features(self, x: Tensor, layer: int) -> Tensor:
        """The conv output of block ``layer`` (1-based), dropout off on the way: Larsen's learned similarity."""
        convs = [block[0] for block in self.blocks]  # type: ignore[index]
        for conv in convs[: layer - 1]:
            x = F.relu(F.max_pool2d(conv(x), 2))
        return convs[layer - 1](x)


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016, as the ``nn.BatchDiscrimination`` layer the crVAE authors used (stnbhwd, branch
    batchDisc): M = x T (T: in_features x kernels*dims, no bias), then for sample i and kernel b the feature
    (1/n) sum_j exp(-||M_i,b - M_j,b||_1) over all n samples of the batch, the sample itself included (its term
    is exp(0) = 1): the layer ends in ``nn.Sum(1, 2, true)``, whose third argument averages. T starts uniform in
    +-1/sqrt(in_features) (Torch's ``nn.Linear`` default: +-1/32 at the paper's 1024 features)."""

    def __init__(self, in_features: int, kernels: int, dims: int) -> None:
        super().__init__()
        self.kernels, self.dims = kernels, dims
        bound = 1.0 / math.sqrt(in_features)
        self.T = nn.Parameter(torch.empty(in_features, kernels * dims).uniform_(-bound, bound))

    def forward(self, x: Tensor, alone: bool = False) -> Tensor:
        """``alone``: each sample as a batch of its own (its one term is exp(0) = 1), so no sample depends on the
        others: what a per-image objective (image completion) needs."""
        n = x.shape[0]
        if alone:
            return torch.cat([x, x.new_ones(n, self.kernels)], dim=1)
        m = (x @ self.T).view(n, self.kernels, self.dims).transpose(0, 1)  # (kernels, n, dims)
        # the L1 distances of every pair, per kernel, without the (n, n, kernels, dims) differences
        dist = torch.cdist(m, m, p=1).permute(1, 2, 0)  # (n, n, kernels), zero on the diagonal
        return torch.cat([x, torch.exp(-dist).mean(1)], dim=1)


class GANHead(nn.Module):
    """Linear -> L2 normalise -> dropout -> ReLU -> [minibatch discrimination] -> Linear -> logit."""

    def __init__(self, in_features: int, hidden: int, dropout: float, kernels: int, dims: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, hidden)
        nn.init.zeros_(self.linear.bias)
        self.dropout = Torch7Dropout(dropout, spatial=False)
        self.minibatch = MinibatchDiscrimination(hidden, kernels, dims) if kernels > 0 else None
        self.out = nn.Linear(hidden + (kernels if kernels > 0 else 0), 1)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: Tensor, alone: bool = False) -> Tensor:
        h = F.relu(self.dropout(F.normalize(self.linear(features.flatten(1)), dim=1)))
        if self.minibatch is not None:
            h = self.minibatch(h, alone)
        return self.out(h).squeeze(1)


@expects("three fractions (real, reconstructions, prior samples) summing to 1")
def _fraction(instance: object, attribute: attrs.Attribute[tuple[float, ...]], value: tuple[float, ...]) -> None:
    if len(value) != 3 or any(v < 0 for v in value) or not math.isclose(sum(value), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"{attribute.name} must be three fractions (real, reconstructions, prior samples) "
            f"summing to 1, got {shorten(list(value))}"
        )


@expects("a list of positive channel counts")
def _widths(instance: object, attribute: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]) -> None:
    if not value or min(value) <= 0:
        raise ValueError(f"{attribute.name} must list positive channel counts, got {shorten(list(value))}")


@attrs.frozen
class AdvOptions:
    beta: float = option(
        0.0125,
        "weight of the generator's adversarial loss (the paper's beta; the loss weight multiplies it)",
        non_negative,
        to_float,
    )
    widths: tuple[int, ...] = option(
        (64, 128, 256, 256),
        "channels of the trunk blocks (each halves the size); the VAE-GAN baseline uses half: 32,64,128,256",
        _widths,
        int_tuple,
    )
    head_hidden: int = option(1024, "width of the GAN head's Linear layer", positive_int, to_int)
    dropout: float = option(0.5, "spatial dropout in the trunk and dropout in the head", non_negative, to_float)
    minibatch_kernels: int = option(100, "minibatch discrimination kernels (0: off)", non_negative_int, to_int)
    minibatch_dims: int = option(5, "dimensions per minibatch discrimination kernel", positive_int, to_int)
    mix: tuple[float, ...] = option(
        (0.5, 0.25, 0.25),
        "the discriminator's batch: fractions of real images, reconstructions and prior samples",
        _fraction,
        float_tuple,
    )
    skip_below: float = option(
        0.1,
        "skip the discriminator update when its error rate on its batch is under this (0: never skip, no host sync)",
        non_negative,
        to_float,
    )
    on_recon: bool = option(True, "adversarial loss on reconstructions (z from the posterior)", converter=to_bool)
    on_prior: bool = option(True, "adversarial loss on samples (z from the prior)", converter=to_bool)
    trunk_lr: float = option(
        0.5,
        "learning-rate multiplier of the trunk (authors' crVAE-GAN: lr/2; their VAE-GAN "
        "baseline runs the whole discriminator at lr/2: trunk_lr 1 with train.phase_lr)",
        non_negative,
        to_float,
    )
    gan_to_encoder: bool = option(
        True,
        "the generator's adversarial loss on reconstructions also reaches the encoder "
        "(authors' crVAE-GAN); false: it reaches the generation side only, as in their "
        "VAE-GAN baseline (the reconstructions it judges are regenerated from z detached; "
        "mi's model-phase term on reconstructions shares them)",
        converter=to_bool,
    )
    similarity_layer: int = option(
        0,
        "Larsen's learned similarity: reconstruction error on the conv output of this trunk block (1-based; 0: off)",
        non_negative_int,
        to_int,
    )
    similarity_weight: float = option(1.0, "weight of the learned-similarity term", non_negative, to_float)
    d_warmup: str = option(
        "head",
        "the authors' warm-up of the discriminator's learning rate (adam_gan.lua: lr/50 for its first 10 steps, "
        "lr/5 until step 30): on the GAN 'head' (their crVAE-GAN, whose trunk steps with plain Adam), on 'all' of "
        "the discriminator (their VAE-GAN baseline), or 'off'; train.lr_warmup sets other stages",
        one_of("head", "all", "off"),
    )

    def __attrs_post_init__(self) -> None:
        if self.dropout >= 1:
            raise ValueError(f"dropout must be < 1, got {self.dropout}")
        if self.similarity_layer > len(self.widths):
            raise ValueError(f"similarity_layer {self.similarity_layer} is past the trunk's {len(self.widths)} blocks")
        if not (self.on_recon or self.on_prior):
            raise ValueError("on_recon and on_prior cannot both be off")


class AdversarialLoss(Loss[AdvOptions]):
    """GAN loss with its discriminator (conv trunk + minibatch-discrimination head), trained in its own phase."""

    name = "adv"
    Options = AdvOptions
    role = "adversarial"
    provides = frozenset({DISCRIMINATOR})
    test_options = {"widths": [8, 16], "head_hidden": 16, "minibatch_kernels": 4, "minibatch_dims": 2}
    may_skip = True
    phases = ("discriminator", "model")
    phase_order = ("discriminator", "model")
    branches = ("posterior", "prior")

    def __init__(self, options: AdvOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        c, h, w = ctx.image_shape
        blocks = len(options.widths)
        size = h // 2**blocks
        if size < 1 or h % 2**blocks:
            raise self.fail(f"the trunk's {blocks} blocks halve {h}x{w} {blocks} times; use fewer widths")
        self.trunk = Trunk(c, options.widths, options.dropout)
        self.trunk_shape = (options.widths[-1], size, size)
        self.trunk_layers = blocks
        self.head = GANHead(
            math.prod(self.trunk_shape),
            options.head_hidden,
            options.dropout,
            options.minibatch_kernels,
            options.minibatch_dims,
        )

    def attach(self, model: GenerativeModel) -> None:
        # the generation side's batch norms, whose running statistics the regeneration must not update twice
        self.refer("_generation_norms", batch_norms(model.transform, model.decoder))

    def lr_multipliers(self) -> dict[str, float]:
        return {"trunk": self.options.trunk_lr} if self.options.trunk_lr != 1.0 else {}

    def lr_warmups(self) -> dict[str, tuple[tuple[int, float], ...]]:
        where = {"head": "head", "all": "", "off": None}[self.options.d_warmup]
        return {} if where is None else {where: AUTHORS_D_WARMUP}

    def owned_modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self}

    # -- shared with mi ------------------------------------------------------------------------------------
    def generator_reconstructions(self, fwd: ForwardPass) -> Tensor:
        """The reconstructions the generator's adversarial loss judges: x_hat itself, or (``gan_to_encoder``
        off) x_hat regenerated from z detached, so that loss reaches the generation side and not the encoder.

        The regeneration runs the same layers on the same z in the same mode, so its values equal x_hat's; the
        generation side's batch norms use the batch's statistics as in the forward pass but do not update
        their running statistics a second time."""
        if self.options.gan_to_encoder:
            assert fwd.x_hat is not None  # the model's forward sets it
            return fwd.x_hat
        assert fwd.z is not None  # the model's forward sets it
        with running_stats_frozen(self._generation_norms):
            return fwd.model.generate(fwd.z.detach())[1]

    def fake_features(self, fwd: ForwardPass) -> dict[str, Tensor]:
        """Trunk features of the fakes the current update's generator terms judge, by branch: "recon"
        (reconstructions) when it wants the posterior branch, "prior" (prior samples) when it wants the prior
        branch; one trunk pass, made once per update and shared with mi."""
        cached = fwd.fake_features
        if cached is not None and cached.update == fwd.update:
            return cached.by_branch
        names, images = [], []
        if fwd.wants("posterior"):
            names.append("recon")
            images.append(self.generator_reconstructions(fwd))
        if fwd.wants("prior"):
            names.append("prior")
            images.append(fwd.prior_sample().x)
        features = self.trunk_features(torch.cat(images)).split([x.shape[0] for x in images])
        out = dict(zip(names, features, strict=True))
        fwd.fake_features = FakeFeatures(fwd.update, out)
        return out

    def trunk_features(self, images: Tensor) -> Tensor:
        """The trunk's output, its convolutions in the model's precision (bf16 autocast or float32), handed on in
        float32: the head (minibatch discrimination's distances, the logits) and every loss on them are float32."""
        with self.precision.autocast():
            return to_float32(self.trunk(images))

    def layer_features(self, images: Tensor, layer: int) -> Tensor:
        """The conv output of trunk block ``layer`` (1-based), dropout off (Larsen's learned similarity), in
        float32 (computed in the model's precision)."""
        with self.precision.autocast():
            return to_float32(self.trunk.layer_features(images, layer))

    def discriminate(self, images: Tensor) -> Tensor:
        return self.head(self.trunk_features(images))

    def discriminate_each(self, images: Tensor) -> Tensor:
        """The logits of each image as if it were a batch of its own: minibatch discrimination compares it with
        itself only, so one image's logit never depends on the others (image completion's per-image objective)."""
        return self.head(self.trunk_features(images), alone=True)

    def batch_counts(self, n: int) -> tuple[int, int, int]:
        _, f_recon, f_prior = self.options.mix
        recon, prior = int(n * f_recon), int(n * f_prior)
        return n - recon - prior, recon, prior

    # -- the loss ------------------------------------------------------------------------------------------
    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        if phase == "discriminator":
            return self._discriminator_terms(fwd)
        return self._generator_terms(fwd)

    def _discriminator_terms(self, fwd: ForwardPass) -> dict[str, Tensor]:
        assert fwd.x_hat is not None  # the model's forward sets it
        n = fwd.x.shape[0]
        real, recon, prior = self.batch_counts(n)
        x_prior = fwd.prior_sample().x
        batch = torch.cat([fwd.x[:real], fwd.x_hat[real : real + recon].detach(), x_prior[real + recon :].detach()])
        labels = torch.cat([torch.ones(real, device=batch.device), torch.zeros(n - real, device=batch.device)])
        logits = self.discriminate(batch)
        terms = {"d": F.binary_cross_entropy_with_logits(logits, labels)}
        with torch.no_grad():
            correct = ((logits > 0).float() == labels).float()
            # training health, logged and never summed: how often the discriminator is right on each kind of image
            # (real ones called real; reconstructions and prior samples called fake), before this step's update
            fwd.log("adv.acc_real", correct[:real])
            if recon:
                fwd.log("adv.acc_recon", correct[real : real + recon])
            if prior:
                fwd.log("adv.acc_prior", correct[real + recon :])
        if self.options.skip_below > 0:
            terms[Loss.SKIP] = (1.0 - correct.mean()) < self.options.skip_below
        return terms

    def _generator_terms(self, fwd: ForwardPass) -> dict[str, Tensor]:
        o = self.options
        features = self.fake_features(fwd)
        scale = self.weight * o.beta
        terms = {}
        if o.on_recon and "recon" in features:
            logits = self.head(features["recon"])
            terms["g_recon"] = scale * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if o.on_prior and "prior" in features:
            logits = self.head(features["prior"])
            terms["g_prior"] = scale * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if o.similarity_layer and fwd.wants("posterior"):
            assert fwd.x_hat is not None  # the model's forward sets it
            fake = self.layer_features(fwd.x_hat, o.similarity_layer)
            with torch.no_grad():
                real = self.layer_features(fwd.x, o.similarity_layer)
            terms["similarity"] = self.weight * o.similarity_weight * (fake - real).pow(2).mean()
        return terms


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(AdversarialLoss)
