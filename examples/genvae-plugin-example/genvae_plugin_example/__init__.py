"""``resnet``: a residual encoder and decoder, packaged as a third-party genvae plugin.

genvae finds this module through the ``genvae`` entry-point group declared in this package's
pyproject.toml (``resnet = "genvae_plugin_example"``), imports it, and calls the
``genvae_register_*`` hooks below once. Nothing else is needed: the components can then be
named in specs and on the command line like the built-in ones.

Provides:

* encoder ``resnet``: a 3x3 stem, then ``stages`` stride-2 downsampling stages, each followed by
  ``blocks_per_stage`` residual blocks (conv3x3-BN-ReLU-conv3x3-BN plus the identity skip).
  Its output is spatial, (width * 2^(stages-1), H / 2^stages, W / 2^stages), so it pairs with
  the built-in spatial latent transform ``conv``.
* decoder ``resnet``: the mirror image: residual blocks, then nearest-neighbour x2 upsampling
  and a 3x3 conv per stage, and a final 3x3 conv to the image channels: logits in the ``tanh``
  output space (declared by ``output``; the engine makes x_hat = tanh(logits)).
* latent transform ``tanh-flow`` and loss ``renyi`` (in :mod:`genvae_plugin_example.family`): a posterior
  through an elementwise normalising flow, and the variational Renyi bound of k posterior draws (an objective
  loss): the flow and multi-sample contracts of genvae 0.3.
* preset ``resnet-vae``: 32x32 RGB, resnet encoder/decoder, ``conv`` latent with 4 channels
  (a 4x4x4 = 64-value latent), MSE + KL.
"""

from __future__ import annotations

import attrs
from torch import nn

from genvae.api import BuildContext, Decoder, Encoder, hookimpl, non_negative_int, option, positive_int, to_int
from genvae_plugin_example.family import RenyiBound, TanhFlow

__version__ = "0.1.0"


def _optional_positive_int(instance, attribute, value) -> None:
    if value is not None:
        positive_int(instance, attribute, value)


def _optional_int(value):
    return None if value is None or value == "none" else to_int(value)


@attrs.frozen
class ResNetOptions:
    width: int = option(32, "channels of the first stage; doubles at each further stage", positive_int, to_int)
    stages: int = option(3, "number of stride-2 downsampling stages (each halves the size)", positive_int, to_int)
    blocks_per_stage: int = option(1, "residual blocks after each downsampling stage", non_negative_int, to_int)


@attrs.frozen
class ResNetDecoderOptions:
    width: int = option(32, "channels of the last (full-size) stage; doubles towards the input", positive_int, to_int)
    stages: int | None = option(
        None,
        "number of x2 upsampling stages; none = as many as the input needs to reach the image size",
        _optional_positive_int,
        _optional_int,
    )
    blocks_per_stage: int = option(1, "residual blocks before each upsampling stage", non_negative_int, to_int)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _stage_widths(width: int, stages: int) -> list[int]:
    return [width * 2**i for i in range(stages)]


class ResidualBlock(nn.Module):
    """relu(x + BN(conv3x3(relu(BN(conv3x3(x)))))): the basic ResNet block, same channels and size."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(x + self.body(x))


class ResNetEncoder(Encoder[ResNetOptions]):
    """Residual encoder: stride-2 stages with residual blocks; (C, H, W) -> spatial (C', H/2^s, W/2^s)."""

    name = "resnet"
    Options = ResNetOptions
    counterparts = {"decoder": "resnet", "transform": "conv"}
    test_options = {"width": 4, "stages": 2, "blocks_per_stage": 1}  # as a partner in genvae.testing's checks

    def __init__(self, options: ResNetOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        c, h, w = ctx.image_shape
        factor = 2**options.stages
        if h % factor or w % factor:
            raise self.fail(f"image size {h}x{w} is not divisible by 2^stages = {factor}; lower stages")
        layers: list[nn.Module] = _conv_bn_relu(c, options.width)
        prev = options.width
        for width in _stage_widths(options.width, options.stages):
            layers += _conv_bn_relu(prev, width, stride=2)
            layers += [ResidualBlock(width) for _ in range(options.blocks_per_stage)]
            prev = width
        self.net = nn.Sequential(*layers)
        self.output_shape = (prev, h // factor, w // factor)

    def forward(self, x, fwd=None):
        return self.net(x)


class ResNetDecoder(Decoder[ResNetDecoderOptions]):
    """Residual decoder: residual blocks and nearest x2 upsampling from a spatial input to image logits."""

    name = "resnet"
    Options = ResNetDecoderOptions
    test_options = {"width": 4, "blocks_per_stage": 1}
    output = "tanh"  # the output space: logits; x_hat = tanh(logits)

    def __init__(self, options: ResNetDecoderOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        c_in, ups = self.upsampling_plan(ctx, "use a spatial latent transform such as 'conv'")
        c, h, w = ctx.image_shape
        assert ctx.transform is not None  # upsampling_plan has read it
        h_in, w_in = ctx.transform.output_shape[1:]
        if options.stages is not None and options.stages != ups:
            raise self.fail(
                f"stages={options.stages}, but {h_in}x{w_in} reaches the image size {h}x{w} in {ups} x2 "
                f"upsampling stage(s); set stages to {ups} or leave it unset"
            )
        widths = _stage_widths(options.width, ups) or [options.width]
        layers: list[nn.Module] = _conv_bn_relu(c_in, widths[-1])
        for i in reversed(range(ups)):
            layers += [ResidualBlock(widths[i]) for _ in range(options.blocks_per_stage)]
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers += _conv_bn_relu(widths[i], widths[max(i - 1, 0)])
        layers.append(nn.Conv2d(widths[0], c, 3, 1, 1))  # logits in the declared tanh space
        self.net = nn.Sequential(*layers)
        self.upsampling_stages = ups

    def forward(self, u, fwd=None):
        return self.net(u)


@hookimpl
def genvae_register_encoders(register):
    register(ResNetEncoder)


@hookimpl
def genvae_register_decoders(register):
    register(ResNetDecoder)


@hookimpl
def genvae_register_transforms(register):
    register(TanhFlow)


@hookimpl
def genvae_register_losses(register):
    register(RenyiBound)


@hookimpl
def genvae_register_presets(register):
    register(
        "resnet-vae",
        {
            "image_size": 32,
            "channels": 3,
            "encoder": {"name": "resnet", "options": {"width": 32, "stages": 3, "blocks_per_stage": 1}},
            "transform": {"name": "conv", "options": {"latent_channels": 4}},
            "decoder": {"name": "resnet", "options": {"width": 32, "blocks_per_stage": 1}},
            "prior": {"name": "normal"},
            "losses": [{"name": "mse"}, {"name": "kl"}],
            "train": {"lr": 1e-3, "batch_size": 64},
        },
        help="residual VAE: resnet encoder/decoder (3 stages, 1 block each), spatial 4x4x4 conv latent, MSE + KL",
    )
