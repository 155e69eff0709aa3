"""``fc``: fully-connected encoder, latent and decoder, the standard VAE (Kingma & Welling).

The ``fc`` latent transform also serves any other encoder/decoder pair: on the crVAE conv stack it
is the VAE-GAN baseline's 1024-d latent (Linear features -> mu, log sigma^2; Linear z -> features).
"""

from __future__ import annotations

import math

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
    describe_shape,
    hookimpl,
    int_tuple,
    mlp,
    one_of,
    option,
    positive_int,
    positive_ints,
    to_bool,
    to_int,
)


@attrs.frozen
class FCOptions:
    hidden: tuple[int, ...] = option((512, 256), "widths of the hidden layers", positive_ints, int_tuple)
    activation: str = option("relu", "activation between layers", one_of(*ACTIVATIONS))
    batch_norm: bool = option(False, "batch norm after each hidden layer", converter=to_bool)


class FCEncoder(Encoder[FCOptions]):
    """Flattened image -> MLP -> feature vector."""

    name = "fc"
    Options = FCOptions
    test_options = {"hidden": [32]}
    counterparts = {"decoder": "fc", "transform": "fc"}

    def __init__(self, options: FCOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        sizes = [math.prod(ctx.image_shape), *options.hidden]
        self.net = mlp(sizes, options.activation, options.batch_norm)
        self.output_shape = (options.hidden[-1],)

    def forward(self, x: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.net(x.flatten(1))


class FCDecoder(Decoder[FCOptions]):
    """Decoder input (any shape, flattened) -> MLP (hidden widths reversed) -> image logits."""

    name = "fc"
    Options = FCOptions
    test_options = {"hidden": [32]}

    def __init__(self, options: FCOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        assert ctx.transform is not None, "the latent transform is built before the decoder"
        in_features = math.prod(ctx.transform.output_shape)
        hidden = list(reversed(options.hidden))
        self.image_shape = ctx.image_shape
        self.net = nn.Sequential(
            mlp([in_features, *hidden], options.activation, options.batch_norm),
            nn.Linear(hidden[-1], math.prod(ctx.image_shape)),
        )

    def forward(self, u: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.net(u.flatten(1)).view(-1, *self.image_shape)


@attrs.frozen
class FCLatentOptions:
    latent_dim: int = option(32, "size of the latent vector z", positive_int, to_int)
    output_activation: str = option("relu", "activation after the z -> features layer", one_of(*ACTIVATIONS))
    output_shape: tuple[int, ...] = option(
        (),
        "shape of u; empty mirrors the encoder's features (as VAE-GAN's Linear 1024 -> 4096)",
        converter=int_tuple,
    )
    groups: int = option(
        1,
        "split z into this many equal groups, in order (a two-layer top-down prior reads group 0 as the upper "
        "latent z2 and group 1 as the lower z1); latent_dim must be a multiple of it",
        positive_int,
        to_int,
    )

    def __attrs_post_init__(self) -> None:
        if self.latent_dim % self.groups:
            raise ValueError(
                f"groups {self.groups} must divide latent_dim {self.latent_dim} (the groups are of equal size)"
            )


class FCLatent(LatentTransform[FCLatentOptions]):
    """Fully-connected latent: Linear(features) -> (mu, log sigma^2); Linear(z) -> u."""

    name = "fc"
    Options = FCLatentOptions
    test_options = {"latent_dim": 4}

    def __init__(self, options: FCLatentOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        assert ctx.encoder is not None, "the encoder is built before the latent transform"
        in_shape = ctx.encoder.output_shape
        d = options.latent_dim
        g = options.groups
        self.layout = LatentLayout((d,), group_sizes=(d // g,) * g) if g > 1 else LatentLayout((d,))
        self.output_shape = tuple(options.output_shape) or tuple(in_shape)
        if min(self.output_shape) <= 0:
            raise self.fail(f"output_shape {describe_shape(self.output_shape)} must be positive")
        self.to_params = nn.Linear(math.prod(in_shape), 2 * d)
        self.from_z = nn.Linear(d, math.prod(self.output_shape))
        self.act = activation(options.output_activation)

    def generation_modules(self) -> list[nn.Module]:
        return [self.from_z]

    def posterior(self, features: Tensor, fwd: ForwardPass | None = None) -> Gaussian:
        mean, logvar = self.to_params(features.flatten(1)).chunk(2, dim=1)
        return Gaussian(mean, logvar)

    def generate(self, z: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.act(self.from_z(z)).view(-1, *self.output_shape)


@hookimpl
def genvae_register_encoders(register: RegisterComponent[Encoder]) -> None:
    register(FCEncoder)


@hookimpl
def genvae_register_transforms(register: RegisterComponent[LatentTransform]) -> None:
    register(FCLatent)


@hookimpl
def genvae_register_decoders(register: RegisterComponent[Decoder]) -> None:
    register(FCDecoder)


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    register(
        "vae",
        {
            "image_size": 32,
            "channels": 3,
            "encoder": {"name": "fc", "options": {"hidden": [512, 256]}},
            "transform": {"name": "fc", "options": {"latent_dim": 32}},
            "decoder": {"name": "fc", "options": {"hidden": [512, 256]}},
            "prior": {"name": "normal"},
            "losses": [{"name": "mse"}, {"name": "kl"}],
            "train": {"lr": 1e-3, "batch_size": 64},
        },
        help="standard VAE: MLP encoder/decoder, 32-d Gaussian latent, MSE + KL",
    )
