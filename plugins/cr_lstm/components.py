"""The three ``cr-lstm`` components: the CReLU conv encoder, the channel-recurrent latent and the conv/deconv decoder
(the authors' ``models/allconv_lstm.lua``)."""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genvae.api import (
    MI_TARGET,
    BuildContext,
    Decoder,
    Encoder,
    ForwardPass,
    Gaussian,
    LatentLayout,
    LatentTransform,
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

# -- building blocks ---------------------------------------------------------------------------------


class CReLU(nn.Module):
    """Concatenated ReLU: relu(cat(x, -x)) along channels (doubles the channel count)."""

    def forward(self, x: Tensor) -> Tensor:
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
BN_MOMENTUM_HELP = (
    "momentum of the batch norms: the weight of the new batch in the running statistics, as in "
    "Torch7 (PyTorch's default 0.1; the authors' run commands: 0.9)"
)


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
    width: int = option(
        32,
        "channels of the first stride-2 convolution (the authors' baseChannels); doubles at each further stage",
        positive_int,
        to_int,
    )
    max_width: int = option(256, "cap on the channel count; also the features' channels", positive_int, to_int)
    latent_size: int = option(4, "spatial size of the features (image size / 2^stages)", positive_int, to_int)
    slope: float = option(0.1, "LeakyReLU slope of the stride-1 convolutions", non_negative, to_float)
    bn_eps: float = option(1e-5, BN_EPS_HELP, positive, to_float)
    bn_momentum: float = option(0.1, BN_MOMENTUM_HELP, unit_interval, to_float)


class CREncoder(Encoder[CREncoderOptions]):
    """crVAE conv stack: CReLU, stride-2 conv + BN + CReLU stages, stride-1 convs on the last two stages."""

    name = "cr-lstm"
    Options = CREncoderOptions
    counterparts = {"decoder": "cr-lstm", "transform": "cr-lstm", "preset": "crvae"}

    def __init__(self, options: CREncoderOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        c, h, w = ctx.image_shape
        stages = _log2_exact(h / options.latent_size)
        if stages is None or stages < 1 or h != w:
            raise self.fail(f"image size {h}x{w} is not latent_size {options.latent_size} times a power of 2")

        # 64x64, width 32: CReLU 3->6 | conv5x5 s2 6->32, BN, CReLU | conv3x3 s2 64->64, BN, CReLU |
        # conv3x3 s2 128->128, BN, CReLU; conv3x3 256->256, BN, LReLU | conv3x3 s2 256->256, BN, CReLU;
        # conv3x3 512->256, BN, LReLU  ->  256x4x4
        def bn(n: int) -> nn.BatchNorm2d:
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

    def forward(self, x: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.net(x)


# -- decoder -------------------------------------------------------------------------------------------


@attrs.frozen
class CRDecoderOptions:
    width: int = option(
        32, "the encoder's width: the last deconvolutions have 2 x width channels", positive_int, to_int
    )
    max_width: int = option(256, "channels of the first deconvolution (cap)", positive_int, to_int)
    input_conv: str = option(
        "auto",
        "conv3x3 + BN from the input to max_width channels first: auto (when the input "
        "has other channels, as u of cr-lstm), yes or no",
        one_of("auto", "yes", "no"),
    )
    slope: float = option(0.1, "LeakyReLU slope", non_negative, to_float)
    bn_eps: float = option(1e-5, BN_EPS_HELP, positive, to_float)
    bn_momentum: float = option(0.1, BN_MOMENTUM_HELP, unit_interval, to_float)
    upsample: str = option(
        "deconv",
        "how each stage doubles the size: 'deconv' (4x4 stride-2 transposed convolution, the authors') or 'resize' "
        "(nearest-neighbour x2, then a 3x3 convolution: no checkerboard artefacts, Odena et al. 2016)",
        one_of("deconv", "resize"),
    )


class CRDecoder(Decoder[CRDecoderOptions]):
    """crVAE deconv stack: [conv3x3 + BN], stride-2 4x4 deconvolutions (or resize + conv3x3) + BN + LReLU, conv3x3,
    conv3x3 to the image."""

    name = "cr-lstm"
    Options = CRDecoderOptions

    def __init__(self, options: CRDecoderOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        c_in, ups = self.upsampling_plan(ctx, "give the fc latent an output_shape such as [256, 4, 4]")
        assert ctx.transform is not None  # upsampling_plan has read it
        c = ctx.image_shape[0]
        if ups < 1:
            raise self.fail(
                f"needs an input smaller than the image {list(ctx.image_shape)}; it has "
                f"{list(ctx.transform.output_shape)}"
            )
        o = options
        top = min(o.max_width, o.width * 2 ** max(ups - 1, 1))

        def bn(n: int) -> nn.BatchNorm2d:
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
            if o.upsample == "resize":
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(prev, out, 3, 1, 1)]
            else:
                layers += [nn.ConvTranspose2d(prev, out, 4, 2, 1)]
            layers += [bn(out), nn.LeakyReLU(o.slope)]
            prev = out
            if j == 0:
                layers += [nn.Conv2d(prev, prev, 3, 1, 1), bn(prev), nn.LeakyReLU(o.slope)]
        layers += [nn.Conv2d(prev, prev, 3, 1, 1), bn(prev), nn.LeakyReLU(o.slope), nn.Conv2d(prev, c, 3, 1, 1)]
        self.net = nn.Sequential(*layers)
        _torch7_conv_init(self.net)

    def forward(self, u: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.net(u)


# -- the channel-recurrent latent ------------------------------------------------------------------------


@attrs.frozen
class CRLatentOptions:
    latent_channels: int = option(
        64, "channels c of the latent c x h x w (h, w: the features' size)", positive_int, to_int
    )
    steps: int = option(
        8, "time steps T: the latent and the features are cut into T channel blocks", positive_int, to_int
    )
    hidden: int = option(512, "hidden size of both LSTMs", positive_int, to_int)
    layers: int = option(2, "layers of both LSTMs", positive_int, to_int)
    forget_bias: float = option(1.0, "initial forget-gate bias of both LSTMs", finite, to_float)
    bias_init: float = option(
        0.01, "the learnable mean and u biases start uniform in +-bias_init", non_negative, to_float
    )
    lr_multiplier: float | None = option(
        None,
        "learning-rate multiplier of the recurrent paths (LSTM, BN, Linear); none: 1/T as in the authors' code",
        attrs.validators.optional(positive),
        optional_float,
    )
    grad_clamp: float = option(5.0, "clamp the recurrent paths' gradients to +-value (0: off)", non_negative, to_float)


class RecurrentPath(nn.Module):
    """One recurrent path of the latent: an LSTM over the T blocks, [a batch norm shared over steps,] a Linear
    per step [and a learnable bias]; a module of its own so its weights keep the names var.lstm, gen.bias, ..."""

    norm: nn.BatchNorm1d
    bias: nn.Parameter

    def __init__(
        self, lstm: nn.LSTM, linear: nn.Linear, norm: nn.BatchNorm1d | None = None, bias: nn.Parameter | None = None
    ) -> None:
        super().__init__()
        self.lstm = lstm
        if norm is not None:
            self.norm = norm
        self.linear = linear
        if bias is not None:
            self.bias = bias


class CRLatent(LatentTransform[CRLatentOptions]):
    """Channel-recurrent latent: conv mean + bias; LSTM over T feature blocks for log sigma^2; LSTM z -> u + bias."""

    name = "cr-lstm"
    Options = CRLatentOptions
    provides = frozenset({MI_TARGET})

    def __init__(self, options: CRLatentOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        assert ctx.encoder is not None, "the encoder is built before the latent transform"
        c, h, w = self.require_spatial(tuple(ctx.encoder.output_shape), f"encoder '{ctx.encoder.name}'")
        t, lc = options.steps, options.latent_channels
        if c % t:
            raise self.fail(
                f"the encoder's {c} feature channels cannot be cut into steps={t} blocks; choose T dividing {c}"
            )
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
        self.var = RecurrentPath(
            nn.LSTM(self.feature_block, hidden, options.layers, batch_first=True),
            nn.Linear(hidden, self.latent_block),
            norm=nn.BatchNorm1d(hidden),
        )
        # generation path: LSTM over z's T blocks, Linear per step -> u, plus a learnable bias
        self.gen = RecurrentPath(
            nn.LSTM(self.latent_block, hidden, options.layers, batch_first=True),
            nn.Linear(hidden, self.latent_block),
            bias=nn.Parameter(torch.empty(lc, h, w).uniform_(-options.bias_init, options.bias_init)),
        )
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

    def posterior(self, features: Tensor, fwd: ForwardPass | None = None) -> Gaussian:
        b = features.shape[0]
        mean = self.mean_conv(features) + self.mean_bias
        # step t sees feature channels [t C/T, (t+1) C/T): one fused LSTM call over the T steps
        seq = features.reshape(b, self.steps, self.feature_block)
        out, _ = self.var.lstm(seq)
        out = self.var.norm(out.reshape(b * self.steps, -1))
        logvar = self.var.linear(out).reshape(b, *self.layout.shape)
        return Gaussian(mean, logvar)

    def recurrent_u(self, z: Tensor) -> Tensor:
        """The generation LSTM's output u (before the bias): what ``mi`` predicts from the image."""
        out, _ = self.gen.lstm(z.reshape(z.shape[0], self.steps, self.latent_block))
        return self.gen.linear(out).reshape(z.shape[0], *self.output_shape)

    def generate(self, z: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.recurrent_u(z) + self.gen.bias

    def mi_target(self, z: Tensor, u: Tensor) -> Tensor:
        """The MI regulariser's target for a (z, u) pair: the LSTM output u, without the constant bias."""
        return u - self.gen.bias

    def generation_modules(self) -> list[nn.Module]:
        return [self.gen]
