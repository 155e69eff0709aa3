"""``cr-lstm``: channel-recurrent autoencoding (crVAE / crVAE-GAN, Shang, Sohn & Tian, WACV 2018).

Three components and the paper's presets, following the authors' released Torch code
(``models/allconv_lstm.lua``; the facts are collected in ``shared/seeds/README.md``):

* encoder ``cr-lstm``: the CReLU conv stack, image -> features (256x4x4 at 64x64);
* latent transform ``cr-lstm``: the latent c x h x w is cut into T channel blocks (time steps).
  The mean path has no recurrence (conv3x3 + a learnable c x h x w bias); the log-variance path runs
  the T blocks of encoder features through an LSTM (BatchNorm1d shared over steps, then a Linear per
  step); the generation LSTM maps z's T blocks to u (Linear per step, plus a learnable bias). Every
  LSTM is one fused ``nn.LSTM`` call over the T steps: no Python loop per time step;
* decoder ``cr-lstm``: the conv/deconv stack from any spatial input (u of the cr-lstm latent, or the
  256x4x4 mirror of the ``fc`` latent, which makes the VAE-GAN baseline: both models then differ
  only in the latent construction).

Latent groups: step t owns latent channels [t c/T, (t+1) c/T), contiguous in the flattened latent,
so ``kl`` ``group_weights`` and ``mi`` ``group_weights`` are per time step. The ``draw`` and
``traverse`` commands show the latent channel semantics of the paper's section 4.5.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from genvae.core.capabilities import MI_TARGET
from genvae.core.components import BuildContext, Decoder, Encoder, Gaussian, LatentLayout, LatentTransform
from genvae.core.hookspecs import hookimpl
from genvae.core.options import (
    finite,
    non_negative,
    one_of,
    option,
    optional_float,
    positive,
    positive_int,
    to_float,
    to_int,
    unit_interval,
)
from genvae.plugins.mi import PAPER_WEIGHTS

# -- building blocks ---------------------------------------------------------------------------------


class CReLU(nn.Module):
    """Concatenated ReLU: relu(cat(x, -x)) along channels (doubles the channel count)."""

    def forward(self, x):
        return F.relu(torch.cat([x, -x], dim=1))


def _torch7_conv_init(module: nn.Module) -> None:
    """The authors' ConvInit: weights uniform in +-sqrt(1 / (kW kH nOutputPlane)), biases zero."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            out = m.out_channels
            bound = math.sqrt(1.0 / (m.kernel_size[0] * m.kernel_size[1] * out))
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


BN_EPS_HELP = "eps of the batch norms (PyTorch's default 1e-5; the authors' run commands: 1e-6)"
BN_MOMENTUM_HELP = ("momentum of the batch norms: the weight of the new batch in the running statistics, as in "
                    "Torch7 (PyTorch's default 0.1; the authors' run commands: 0.9)")


def _log2_exact(ratio: float) -> int | None:
    if ratio < 1 or not float(ratio).is_integer():
        return None
    n = int(ratio).bit_length() - 1
    return n if 2**n == int(ratio) else None


def set_forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Forget gates start at ``value``: PyTorch's gate order is (i, f, g, o); the input-side bias
    carries it and the hidden-side forget bias is zeroed, so the effective bias is exactly ``value``."""
    h = lstm.hidden_size
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            getattr(lstm, f"bias_ih_l{layer}")[h : 2 * h].fill_(value)
            getattr(lstm, f"bias_hh_l{layer}")[h : 2 * h].zero_()


# -- encoder -------------------------------------------------------------------------------------------


@attrs.frozen
class CREncoderOptions:
    width: int = option(32, "channels of the first stride-2 convolution (the authors' baseChannels); doubles at "
                        "each further stage", positive_int, to_int)
    max_width: int = option(256, "cap on the channel count; also the features' channels", positive_int, to_int)
    latent_size: int = option(4, "spatial size of the features (image size / 2^stages)", positive_int, to_int)
    slope: float = option(0.1, "LeakyReLU slope of the stride-1 convolutions", non_negative, to_float)
    bn_eps: float = option(1e-5, BN_EPS_HELP, positive, to_float)
    bn_momentum: float = option(0.1, BN_MOMENTUM_HELP, unit_interval, to_float)


class CREncoder(Encoder):
    """crVAE conv stack: CReLU, stride-2 conv + BN + CReLU stages, stride-1 convs on the last two stages."""

    name = "cr-lstm"
    Options = CREncoderOptions
    counterparts = {"decoder": "cr-lstm", "transform": "cr-lstm", "preset": "crvae"}

    def __init__(self, options: CREncoderOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        c, h, w = ctx.image_shape
        stages = _log2_exact(h / options.latent_size)
        if stages is None or stages < 1 or h != w:
            raise self.fail(f"image size {h}x{w} is not latent_size {options.latent_size} times a power of 2")
        # 64x64, width 32: CReLU 3->6 | conv5x5 s2 6->32, BN, CReLU | conv3x3 s2 64->64, BN, CReLU |
        # conv3x3 s2 128->128, BN, CReLU; conv3x3 256->256, BN, LReLU | conv3x3 s2 256->256, BN, CReLU;
        # conv3x3 512->256, BN, LReLU  ->  256x4x4
        def bn(n):
            return nn.BatchNorm2d(n, options.bn_eps, options.bn_momentum)

        layers: list[nn.Module] = [CReLU()]
        prev = 2 * c
        for i in range(stages):
            out = min(options.width * 2**i, options.max_width)
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(prev, out, k, 2, k // 2), bn(out), CReLU()]
            prev = 2 * out
            if i >= stages - 2:
                nxt = min(prev, options.max_width)
                layers += [nn.Conv2d(prev, nxt, 3, 1, 1), bn(nxt), nn.LeakyReLU(options.slope)]
                prev = nxt
        self.net = nn.Sequential(*layers)
        _torch7_conv_init(self.net)
        self.output_shape = (prev, options.latent_size, options.latent_size)

    def forward(self, x, state=None):
        return self.net(x)


# -- decoder -------------------------------------------------------------------------------------------


@attrs.frozen
class CRDecoderOptions:
    width: int = option(32, "the encoder's width: the last deconvolutions have 2 x width channels", positive_int,
                        to_int)
    max_width: int = option(256, "channels of the first deconvolution (cap)", positive_int, to_int)
    input_conv: str = option("auto", "conv3x3 + BN from the input to max_width channels first: auto (when the input "
                             "has other channels, as u of cr-lstm), yes or no", one_of("auto", "yes", "no"))
    slope: float = option(0.1, "LeakyReLU slope", non_negative, to_float)
    bn_eps: float = option(1e-5, BN_EPS_HELP, positive, to_float)
    bn_momentum: float = option(0.1, BN_MOMENTUM_HELP, unit_interval, to_float)


class CRDecoder(Decoder):
    """crVAE deconv stack: [conv3x3 + BN], stride-2 4x4 deconvolutions + BN + LReLU, conv3x3, conv3x3 to the image."""

    name = "cr-lstm"
    Options = CRDecoderOptions

    def __init__(self, options: CRDecoderOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        c_in, ups = self.upsampling_plan(ctx, "give the fc latent an output_shape such as [256, 4, 4]")
        c = ctx.image_shape[0]
        if ups < 1:
            raise self.fail(f"needs an input smaller than the image {list(ctx.image_shape)}; it has "
                            f"{list(ctx.transform.output_shape)}")
        o = options
        top = min(o.max_width, o.width * 2 ** max(ups - 1, 1))

        def bn(n):
            return nn.BatchNorm2d(n, o.bn_eps, o.bn_momentum)

        layers: list[nn.Module] = []
        if o.input_conv == "yes" or (o.input_conv == "auto" and c_in != top):
            layers += [nn.Conv2d(c_in, top, 3, 1, 1), bn(top)]  # no activation (authors' code)
            prev = top
        else:
            prev = c_in
        # 4x4 -> 64x64 at width 32: deconv 256->256 (+ conv3x3 256->256), 256->128, 128->64, 64->64
        for j in range(ups):
            out = min(o.max_width, o.width * 2 ** max(ups - 1 - j, 1))
            layers += [nn.ConvTranspose2d(prev, out, 4, 2, 1), bn(out), nn.LeakyReLU(o.slope)]
            prev = out
            if j == 0:
                layers += [nn.Conv2d(prev, prev, 3, 1, 1), bn(prev), nn.LeakyReLU(o.slope)]
        layers += [nn.Conv2d(prev, prev, 3, 1, 1), bn(prev), nn.LeakyReLU(o.slope),
                   nn.Conv2d(prev, c, 3, 1, 1)]
        self.net = nn.Sequential(*layers)
        _torch7_conv_init(self.net)

    def forward(self, u, state=None):
        return self.net(u)


# -- the channel-recurrent latent ------------------------------------------------------------------------


@attrs.frozen
class CRLatentOptions:
    latent_channels: int = option(64, "channels c of the latent c x h x w (h, w: the features' size)", positive_int,
                                  to_int)
    steps: int = option(8, "time steps T: the latent and the features are cut into T channel blocks", positive_int,
                        to_int)
    hidden: int = option(512, "hidden size of both LSTMs", positive_int, to_int)
    layers: int = option(2, "layers of both LSTMs", positive_int, to_int)
    forget_bias: float = option(1.0, "initial forget-gate bias of both LSTMs", finite, to_float)
    bias_init: float = option(0.01, "the learnable mean and u biases start uniform in +-bias_init", non_negative,
                              to_float)
    lr_multiplier: float | None = option(None, "learning-rate multiplier of the recurrent paths (LSTM, BN, Linear); "
                                         "none: 1/T as in the authors' code", attrs.validators.optional(positive),
                                         optional_float)
    grad_clamp: float = option(5.0, "clamp the recurrent paths' gradients to +-value (0: off)", non_negative,
                               to_float)


class RecurrentPath(nn.Module):
    """One recurrent path of the latent: an LSTM over the T blocks, [a batch norm shared over steps,] a Linear
    per step [and a learnable bias]; a module of its own so its weights keep the names var.lstm, gen.bias, ..."""

    norm: nn.BatchNorm1d
    bias: nn.Parameter

    def __init__(self, lstm: nn.LSTM, linear: nn.Linear, norm: nn.BatchNorm1d | None = None,
                 bias: nn.Parameter | None = None):
        super().__init__()
        self.lstm = lstm
        if norm is not None:
            self.norm = norm
        self.linear = linear
        if bias is not None:
            self.bias = bias


class CRLatent(LatentTransform):
    """Channel-recurrent latent: conv mean + bias; LSTM over T feature blocks for log sigma^2; LSTM z -> u + bias."""

    name = "cr-lstm"
    Options = CRLatentOptions
    provides = frozenset({MI_TARGET})

    def __init__(self, options: CRLatentOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        c, h, w = self.require_spatial(tuple(ctx.encoder.output_shape), f"encoder '{ctx.encoder.name}'")
        t, lc = options.steps, options.latent_channels
        if c % t:
            raise self.fail(f"the encoder's {c} feature channels cannot be cut into steps={t} blocks; "
                            f"choose T dividing {c}")
        if lc % t:
            raise self.fail(f"latent_channels={lc} cannot be cut into steps={t} blocks; choose T dividing {lc}")
        self.steps = t
        self.feature_block = (c // t) * h * w  # 512 at the paper's config: 32 channels x 4 x 4
        self.latent_block = (lc // t) * h * w  # 128: 8 channels x 4 x 4
        self.layout = LatentLayout((lc, h, w), group_sizes=(self.latent_block,) * t, group_label="time step")
        self.output_shape = (lc, h, w)
        hidden = options.hidden
        # mean path: no recurrence
        self.mean_conv = nn.Conv2d(c, lc, 3, 1, 1)
        self.mean_bias = nn.Parameter(torch.empty(lc, h, w).uniform_(-options.bias_init, options.bias_init))
        _torch7_conv_init(self.mean_conv)
        # variance path: LSTM over the T blocks of encoder features, BN shared over steps, Linear per step
        self.var = RecurrentPath(nn.LSTM(self.feature_block, hidden, options.layers, batch_first=True),
                                 nn.Linear(hidden, self.latent_block), norm=nn.BatchNorm1d(hidden))
        # generation path: LSTM over z's T blocks, Linear per step -> u, plus a learnable bias
        self.gen = RecurrentPath(nn.LSTM(self.latent_block, hidden, options.layers, batch_first=True),
                                 nn.Linear(hidden, self.latent_block),
                                 bias=nn.Parameter(torch.empty(lc, h, w).uniform_(-options.bias_init,
                                                                                  options.bias_init)))
        for lstm in (self.var.lstm, self.gen.lstm):
            set_forget_bias(lstm, options.forget_bias)
        for linear in (self.var.linear, self.gen.linear):
            nn.init.zeros_(linear.bias)

    # the recurrent paths train at lr/T with clamped gradients (var_encoder / var_decoder in the authors' code)
    _RECURRENT = ("var", "gen.lstm", "gen.linear")

    def lr_multipliers(self) -> dict[str, float]:
        mult = self.options.lr_multiplier if self.options.lr_multiplier is not None else 1.0 / self.steps
        return dict.fromkeys(self._RECURRENT, mult)

    def grad_clamps(self) -> dict[str, float]:
        return dict.fromkeys(self._RECURRENT, self.options.grad_clamp) if self.options.grad_clamp > 0 else {}

    def posterior(self, features, state=None) -> Gaussian:
        b = features.shape[0]
        mean = self.mean_conv(features) + self.mean_bias
        # step t sees feature channels [t C/T, (t+1) C/T): one fused LSTM call over the T steps
        seq = features.reshape(b, self.steps, self.feature_block)
        out, _ = self.var.lstm(seq)
        out = self.var.norm(out.reshape(b * self.steps, -1))
        logvar = self.var.linear(out).reshape(b, *self.layout.shape)
        return Gaussian(mean, logvar)

    def recurrent_u(self, z):
        """The generation LSTM's output u (before the bias): what ``mi`` predicts from the image."""
        out, _ = self.gen.lstm(z.reshape(z.shape[0], self.steps, self.latent_block))
        return self.gen.linear(out).reshape(z.shape[0], *self.output_shape)

    def generate(self, z, state=None):
        return self.recurrent_u(z) + self.gen.bias

    def mi_target(self, z, u):
        """The MI regulariser's target for a (z, u) pair: the LSTM output u, without the constant bias."""
        return u - self.gen.bias

    def generation_modules(self) -> list[nn.Module]:
        return [self.gen]


# -- presets ----------------------------------------------------------------------------------------------

PAPER_KL = [3e-4] * 3 + [2e-4] * 5  # per time step, authors' code (alpha1, alpha2)
PAPER_MI = list(PAPER_WEIGHTS)  # the MI weights per time step, as mi holds them
# The authors' run commands (README: -eps 1e-6 -mom 0.9) for every BatchNorm of the conv stacks and the MI head;
# Torch7's momentum weights the new batch, as PyTorch's does. The variance path's BatchNorm1d keeps the defaults
# (1e-5, 0.1), as in their code.
PAPER_BN = {"bn_eps": 1e-6, "bn_momentum": 0.9}
# The authors' update order per iteration (train_test_lstm.lua): the posterior branch (MI head and trunk, then encoder,
# LSTMs and decoder), then new prior samples through the just-updated generator (MI head and trunk, then decoder and
# generation LSTM), the discriminator last. Without MI the same order without the mi updates.
# Updates of phases a model lacks are left out, so the one list serves crvae (model@posterior alone), crvae-gan-no-mi
# and crvae-gan (and --encoder cr-lstm --loss adv,mi, which starts from crvae).
AUTHORS_SCHEDULE = ["mi@posterior", "model@posterior", "mi@prior:fresh", "model@prior", "discriminator"]
# train_test_baseline.lua: encoder and decoder from one forward pass (the decoder on reconstructions and prior
# samples), the discriminator last.
BASELINE_SCHEDULE = ["model", "discriminator"]
PAPER_TRAIN: dict[str, Any] = {
    "lr": 3e-4, "batch_size": 128, "epochs": 150, "lr_schedule": "step", "lr_step_epochs": 60, "lr_gamma": 0.5,
    "flip": True, "phase_lr": {"discriminator": 3e-4, "mi": 3e-4}, "schedule": AUTHORS_SCHEDULE,
}
# The VAE-GAN baseline (train_test_baseline.lua) runs the whole discriminator, head and trunk, at lr/2.
PAPER_BASELINE_TRAIN = {**PAPER_TRAIN, "phase_lr": {"discriminator": PAPER_TRAIN["lr"] / 2},
                        "schedule": BASELINE_SCHEDULE}
_MSE = {"name": "mse", "options": {"reduction": "mean"}}


def _paper(transform: dict, losses: list[dict], image_size: int = 64, channels: int = 3, train=None) -> dict:
    return {
        "image_size": image_size,
        "channels": channels,
        "encoder": {"name": "cr-lstm", "options": {"width": 32, "max_width": 256, **PAPER_BN}},
        "transform": transform,
        "decoder": {"name": "cr-lstm", "options": {"width": 32, "max_width": 256, **PAPER_BN}},
        "prior": {"name": "normal"},
        "losses": losses,
        "train": dict(train or PAPER_TRAIN),
    }


_CR = {"name": "cr-lstm", "options": {"latent_channels": 64, "steps": 8, "hidden": 512, "layers": 2}}
_FC = {"name": "fc", "options": {"latent_dim": 1024, "output_activation": "none"}}
_KL_STEPS = {"name": "kl", "options": {"group_weights": PAPER_KL}}
_ADV = {"name": "adv", "options": {"beta": 0.0125}}
_MI = {"name": "mi", "options": {"kappa": 0.02, "group_weights": PAPER_MI, "weighted_branches": "both", **PAPER_BN}}
# VAE-GAN baseline: KL 2e-4, beta 0.05, half-width discriminator at lr/2 (trunk not halved again), no GAN gradient to
# the encoder (f_vae_encoder: reconstruction + KL only)
_BASELINE_ADV = {"beta": 0.05, "gan_to_encoder": False, "trunk_lr": 1.0}

# Fashion-MNIST on a CPU: 32x32x1, a quarter of the widths, T = 4, LSTMs of 128, latent 16x4x4 = 256 values for
# both models.
# Mean pixel MSE over 1024 instead of 12288 pixels: the KL weights are 12x the paper's, keeping its balance.
SMALL_KL = [3.6e-3, 3.6e-3, 2.4e-3, 2.4e-3]
SMALL_MI = [0.8, 1.375, 0.1, 1.0]  # the paper's 8 weights averaged in pairs
# Short CPU runs: lr 1e-3 (the paper's 3e-4 learns visibly slower in a few hundred steps), batch 64.
SMALL_TRAIN: dict[str, Any] = {"lr": 1e-3, "batch_size": 64, "epochs": 20, "lr_schedule": "step", "lr_step_epochs": 8,
               "lr_gamma": 0.5, "flip": False, "phase_lr": {"discriminator": 1e-3, "mi": 1e-3}, "log_every": 25,
               "checkpoint_every": 500, "schedule": AUTHORS_SCHEDULE}
SMALL_BASELINE_TRAIN = {**SMALL_TRAIN, "phase_lr": {"discriminator": SMALL_TRAIN["lr"] / 2},
                        "schedule": BASELINE_SCHEDULE}
_SMALL_STACK = {"width": 8, "max_width": 64}
_SMALL_ADV = {"widths": [16, 32, 32], "head_hidden": 256}


def _small(transform: dict, losses: list[dict], train=None) -> dict:
    spec = _paper(transform, losses, image_size=32, channels=1, train=train or SMALL_TRAIN)
    spec["encoder"] = {"name": "cr-lstm", "options": dict(_SMALL_STACK)}
    spec["decoder"] = {"name": "cr-lstm", "options": dict(_SMALL_STACK)}
    return spec


PRESETS = {
    "crvae": (
        _paper(_CR, [_MSE, _KL_STEPS]),
        "crVAE (64x64): CReLU conv stack, channel-recurrent latent 64x4x4 in T=8 steps, pixel MSE + KL weighted "
        "per step; add --loss adv,mi for crVAE-GAN",
    ),
    "crvae-gan": (
        _paper(_CR, [_MSE, _KL_STEPS, _ADV, _MI]),
        "crVAE-GAN (64x64) as in the authors' code: crvae + adversarial loss (beta 0.0125) + MI on u (kappa 0.02), "
        "the authors' update schedule",
    ),
    "crvae-gan-no-mi": (
        _paper(_CR, [_MSE, _KL_STEPS, _ADV]),
        "crVAE-GAN (64x64) without the MI regulariser (paper Table 1, middle row)",
    ),
    "vae-gan": (
        _paper(_FC, [_MSE, {"name": "kl", "weight": 2e-4},
                     {"name": "adv", "options": {**_BASELINE_ADV, "widths": [32, 64, 128, 256]}}],
               train=PAPER_BASELINE_TRAIN),
        "VAE-GAN baseline of the crVAE paper (64x64): same conv stack, FC latent of 1024, KL 2e-4, beta 0.05, "
        "half-width discriminator at lr/2, no GAN gradient to the encoder, no MI",
    ),
    "fig3-vae": (
        _paper(_FC, [_MSE, {"name": "kl", "weight": 3e-4}]),
        "crVAE paper Figure 3 (a): the conv stack with an FC latent of 1024 (VAE), MSE + KL",
    ),
    "fig3-cvae": (
        _paper({"name": "conv", "options": {"latent_channels": 64, "output_activation": "none"}},
               [_MSE, {"name": "kl", "weight": 3e-4}]),
        "crVAE paper Figure 3 (b): the conv stack with a spatial conv latent 64x4x4 (cVAE), MSE + KL",
    ),
    "fig3-crvae": (
        _paper(_CR, [_MSE, {"name": "kl", "weight": 3e-4}]),
        "crVAE paper Figure 3 (c): the conv stack with the channel-recurrent latent 64x4x4 (crVAE), MSE + KL",
    ),
    "crvae-gan-small": (
        _small({"name": "cr-lstm", "options": {"latent_channels": 16, "steps": 4, "hidden": 128, "layers": 2}},
               [_MSE, {"name": "kl", "options": {"group_weights": SMALL_KL}},
                {"name": "adv", "options": {"beta": 0.0125, **_SMALL_ADV}},
                {"name": "mi", "options": {"kappa": 0.02, "group_weights": SMALL_MI, "hidden": 16}}]),
        "crVAE-GAN for 32x32 grey images on a CPU (Fashion-MNIST): quarter widths, latent 16x4x4 in T=4 steps",
    ),
    "crvae-gan-no-mi-small": (
        _small({"name": "cr-lstm", "options": {"latent_channels": 16, "steps": 4, "hidden": 128, "layers": 2}},
               [_MSE, {"name": "kl", "options": {"group_weights": SMALL_KL}},
                {"name": "adv", "options": {"beta": 0.0125, **_SMALL_ADV}}]),
        "crvae-gan-small without the MI regulariser (Table 1's middle row at CPU size)",
    ),
    "vae-gan-small": (
        _small({"name": "fc", "options": {"latent_dim": 256, "output_activation": "none"}},
               [_MSE, {"name": "kl", "weight": 2.4e-3},
                {"name": "adv", "options": {**_BASELINE_ADV, **_SMALL_ADV}}], train=SMALL_BASELINE_TRAIN),
        "VAE-GAN baseline for 32x32 grey images on a CPU (Fashion-MNIST): as crvae-gan-small with an FC latent of 256",
    ),
}


# -- latent channel semantics (paper section 4.5) -------------------------------------------------------


def _draw_latents(model, rows: int, device) -> torch.Tensor:
    """(rows * T, *latent): row i, column t holds z_i's first t+1 blocks and zeros after them."""
    layout = model.layout
    z = model.prior.sample(rows, model, device)
    cols = [torch.where(layout.group_mask(range(t + 1), device=device), z, torch.zeros_like(z))
            for t in range(layout.num_groups)]
    return torch.stack(cols, dim=1).reshape(rows * layout.num_groups, *layout.shape)


def _traverse_latents(model, step: int, rows: int, columns: int, device) -> torch.Tensor:
    """(rows * columns, *latent): row i interpolates z_i's block ``step`` (0-based) towards one new block."""
    layout = model.layout
    z = model.prior.sample(rows, model, device)
    target = model.prior.sample(1, model, device).expand_as(z)
    mask = layout.group_mask([step], device=device)
    alphas = torch.linspace(0.0, 1.0, columns, device=device).view(1, columns, *([1] * len(layout.shape)))
    mixed = (1 - alphas) * z.unsqueeze(1) + alphas * target.unsqueeze(1)
    out = torch.where(mask, mixed, z.unsqueeze(1).expand_as(mixed))
    return out.reshape(rows * columns, *layout.shape)


def _commands():
    import click

    from genvae.core.commands import SEED

    def render(model, z, output, nrow, command):
        """The images of ``z`` as one grid, generated in chunks that fit the memory limit beside the grid."""
        from genvae.core.budget import grid_bytes
        from genvae.core.data import save_grid
        from genvae.core.inference import generate_images

        images = generate_images(model, z, held=grid_bytes(model, len(z)), command=command,
                                 holding=f"the grid of {len(z):,} images it writes")
        save_grid(images, output, nrow=nrow)

    @click.command("draw")
    @click.argument("folder", type=click.Path())
    @click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
                  help="Image grid to write (png, jpg, webp, bmp, tif).")
    @click.option("-n", "rows", default=8, show_default=True, type=click.IntRange(1, 256),
                  help="Rows (independent samples).")
    @click.option("--seed", default=0, show_default=True, type=SEED)
    @click.option("--device", default="auto", show_default=True)
    def draw(folder, output, rows, seed, device):
        """Progressive drawing (crVAE Figure 8): z starts at zero and its blocks are drawn from the prior one time
        step at a time, a column per step."""
        from genvae.core.commands import console, load_for_inference
        from genvae.core.data import check_image_output

        check_image_output(output)
        model, dev = load_for_inference(folder, device, seed)
        layout = model.layout
        with torch.no_grad():
            z = _draw_latents(model, rows, dev)
        render(model, z, output, layout.num_groups, "draw")
        console.print(f"wrote {rows} rows x {layout.num_groups} {layout.group_label}s to {output} "
                      f"(column t: the first t {layout.group_label}s sampled, the rest zero)")

    @click.command("traverse")
    @click.argument("folder", type=click.Path())
    @click.option("--step", "step", required=True, type=click.IntRange(min=1),
                  help="The time step t (1..T) whose block moves.")
    @click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
                  help="Image grid to write (png, jpg, webp, bmp, tif).")
    @click.option("-n", "rows", default=6, show_default=True, type=click.IntRange(1, 256),
                  help="Rows (independent samples z).")
    @click.option("--columns", default=8, show_default=True, type=click.IntRange(2, 256),
                  help="Interpolation points from z_t to the new z_t.")
    @click.option("--seed", default=0, show_default=True, type=SEED)
    @click.option("--device", default="auto", show_default=True)
    def traverse(folder, step, output, rows, columns, seed, device):
        """Interpolate block z_t towards one new block (the same for every row) while the other blocks stay fixed
        (crVAE Figure 9)."""
        from genvae.core.commands import console, load_for_inference
        from genvae.core.data import check_image_output
        from genvae.core.errors import GenvaeError

        check_image_output(output)
        model, dev = load_for_inference(folder, device, seed)
        layout = model.layout
        if not 1 <= step <= layout.num_groups:
            raise GenvaeError(f"--step {step}: the model's latent has {layout.num_groups} {layout.group_label}s; "
                              f"use 1..{layout.num_groups}")
        with torch.no_grad():
            z = _traverse_latents(model, step - 1, rows, columns, dev)
        render(model, z, output, columns, "traverse")
        console.print(f"wrote {rows} rows x {columns} columns to {output} ({layout.group_label} {step} interpolated "
                      f"towards one new block, the others fixed)")

    return draw, traverse


# -- registration ---------------------------------------------------------------------------------------------


@hookimpl
def genvae_register_encoders(register):
    register(CREncoder)


@hookimpl
def genvae_register_transforms(register):
    register(CRLatent)


@hookimpl
def genvae_register_decoders(register):
    register(CRDecoder)


@hookimpl
def genvae_register_presets(register):
    for name, (spec, help_text) in PRESETS.items():
        register(name, spec, help=help_text)


@hookimpl
def genvae_register_commands(cli):
    for command in _commands():
        cli.add_command(command)
