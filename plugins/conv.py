"""``conv``: fully convolutional encoder/decoder with a spatial latent (the cVAE baseline).

The layer stacks are plain builders, :func:`down_stack` and :func:`up_stack`, so other plugins (the
Laplacian pyramid's per-level networks) build the same stacks without building a component.
"""

from __future__ import annotations

import attrs
from torch import Tensor, nn

from genvae.api import (
    ACTIVATIONS,
    BuildContext,
    Decoder,
    Encoder,
    ForwardPass,
    Gaussian,
    LatentLayout,
    LatentTransform,
    PresetSpec,
    RegisterComponent,
    RegisterNamed,
    activation,
    decoder_widths,
    down_stack,
    hookimpl,
    one_of,
    option,
    positive_int,
    stack_widths,
    to_bool,
    to_int,
    up_stack,
)


@attrs.frozen
class ConvOptions:
    width: int = option(
        32, "channels after the first stride-2 layer; doubles at each further one", positive_int, to_int
    )
    depth: int = option(3, "number of stride-2 layers (each halves or doubles the size)", positive_int, to_int)
    max_width: int = option(256, "cap on the channel count", positive_int, to_int)
    activation: str = option("lrelu", "activation after each layer", one_of(*ACTIVATIONS))
    batch_norm: bool = option(True, "batch norm after each hidden layer", converter=to_bool)


def _widths(o: ConvOptions) -> list[int]:
    return stack_widths(o.width, o.depth, o.max_width)


class ConvEncoder(Encoder[ConvOptions]):
    """Stride-2 4x4 convolutions: (C, H, W) -> (width * 2^(depth-1), H / 2^depth, W / 2^depth)."""

    name = "conv"
    Options = ConvOptions
    test_options = {"width": 8, "depth": 2, "max_width": 16}
    counterparts = {"decoder": "conv", "transform": "conv"}

    def __init__(self, options: ConvOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        c, h, w = ctx.image_shape
        if options.depth > max(h, w).bit_length():  # before 2**depth: a hostile depth must not build a huge int
            raise self.fail(f"depth {options.depth} halves the {h}x{w} image below one pixel; lower depth")
        factor = 2**options.depth
        if h % factor or w % factor:
            raise self.fail(f"image size {h}x{w} is not divisible by 2^depth = {factor}; lower depth")
        widths = _widths(options)
        self.net = down_stack(c, widths, options.activation, options.batch_norm)
        self.output_shape = (widths[-1], h // factor, w // factor)

    def forward(self, x: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.net(x)


class ConvDecoder(Decoder[ConvOptions]):
    """Stride-2 4x4 transposed convolutions from a spatial input up to the image size."""

    name = "conv"
    Options = ConvOptions
    test_options = {"width": 8, "depth": 2, "max_width": 16}

    def __init__(self, options: ConvOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        c_in, ups = self.upsampling_plan(ctx, "use a spatial latent transform such as 'conv'")
        c = ctx.image_shape[0]
        self.net = up_stack(
            c_in, decoder_widths(options.width, ups, options.max_width), c, options.activation, options.batch_norm
        )

    def forward(self, u: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.net(u)


@attrs.frozen
class ConvLatentOptions:
    latent_channels: int = option(16, "channels of the spatial latent z", positive_int, to_int)
    kernel: int = option(3, "kernel size of the features <-> latent convolutions (odd)", positive_int, to_int)
    output_activation: str = option("lrelu", "activation after the z -> u convolution", one_of(*ACTIVATIONS))

    def __attrs_post_init__(self) -> None:
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")


class ConvLatent(LatentTransform[ConvLatentOptions]):
    """Spatial latent: conv(features) -> (mu, log sigma^2) per position; conv(z) -> u of the features' shape."""

    name = "conv"
    Options = ConvLatentOptions
    test_options = {"latent_channels": 2}

    def __init__(self, options: ConvLatentOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        assert ctx.encoder is not None, "the encoder is built before the latent transform"
        in_shape = ctx.encoder.output_shape
        c, h, w = self.require_spatial(
            in_shape, f"encoder '{ctx.encoder.name}'", "use the 'fc' latent transform for vector features"
        )
        lc, k = options.latent_channels, options.kernel
        self.layout = LatentLayout((lc, h, w))
        self.output_shape = tuple(in_shape)
        self.to_params = nn.Conv2d(c, 2 * lc, k, 1, k // 2)
        self.from_z = nn.Sequential(nn.Conv2d(lc, c, k, 1, k // 2), activation(options.output_activation))

    def posterior(self, features: Tensor, fwd: ForwardPass | None = None) -> Gaussian:
        mean, logvar = self.to_params(features).chunk(2, dim=1)
        return Gaussian(mean, logvar)

    def generate(self, z: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.from_z(z)


@hookimpl
def genvae_register_encoders(register: RegisterComponent[Encoder]) -> None:
    register(ConvEncoder)


@hookimpl
def genvae_register_transforms(register: RegisterComponent[LatentTransform]) -> None:
    register(ConvLatent)


@hookimpl
def genvae_register_decoders(register: RegisterComponent[Decoder]) -> None:
    register(ConvDecoder)


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    register(
        "cvae",
        {
            "image_size": 32,
            "channels": 3,
            "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "transform": {"name": "conv", "options": {"latent_channels": 2}},
            "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "prior": {"name": "normal"},
            "losses": [{"name": "mse"}, {"name": "kl"}],
            "train": {"lr": 1e-3, "batch_size": 64},
        },
        help="convolutional VAE: conv encoder/decoder, spatial 2x4x4 latent (32 values), MSE + KL",
    )
