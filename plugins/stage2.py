"""``stage2``: the crVAE paper's second stage (section 4.3): a network that raises a Stage1 model's images to twice
(or 2^k times) their size, trained adversarially on Stage1's generations and reconstructions, with a perceptual
loss on the reconstructions.

The authors did not release Stage2; as the shared notes suggest, ours is StackGAN-like (Zhang et al. 2017, stage II
without the text conditioning): a 3x3 conv, two stride-2 down-sampling convs, ``blocks`` residual blocks, then
nearest-neighbour x2 up-sampling + 3x3 conv stages up to the output size, and a 3x3 conv to the image channels.

In genvae's terms a Stage2 model is an ordinary composed model whose first half is the frozen Stage1:

* encoder ``stage1``: the Stage1 model itself (its weights copied in when the model is built, then frozen):
  the high-resolution image is shrunk to Stage1's size (area average) and encoded by Stage1's encoder;
* latent transform ``stage1``: Stage1's posterior and Stage1's whole generator: z -> Stage1's image, the
  decoder's input;
* decoder ``stage2``: the up-sampling network above; its output is the high-resolution image (tanh logits);
* losses (preset ``stage2``): ``adv`` at the output size on reconstructions and prior samples, ``perceptual`` in the
  discriminator's features on reconstructions, and a small pixel ``mse``; ``kl`` at weight 0 (the latent is Stage1's
  and frozen);
* ``train.freeze = ["encoder"]`` (Stage1 lives under the encoder): only Stage2 and its discriminator train.

    genvae build --preset stage2 --stage1 runs/crvae-gan -o runs/stage2        # 64 -> 128, RGB
    genvae build --preset stage2-small --stage1 runs/crvae-gan-small -o s2     # 32 -> 64, grey
    genvae train s2 --data fashion-mnist
    genvae sample s2 -o s2.png                                                 # Stage1 then Stage2

The Stage1 folder is read once, when the Stage2 model is built: its spec goes into the encoder's options and its
weights into the Stage2 model folder, which is then self-contained. Stage1 models with a standard normal prior
(crVAE-GAN, VAE-GAN, the paper's) are accepted; sampling goes through that prior.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genvae.api import (
    BuildContext,
    Decoder,
    Encoder,
    ForwardPass,
    Gaussian,
    GenerativeModel,
    LatentTransform,
    NoOptions,
    PresetSpec,
    RegisterComponent,
    RegisterNamed,
    hookimpl,
    non_negative_int,
    option,
    positive_int,
    to_int,
)


def _mapping(value: Any) -> dict:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a spec (a JSON object), got {type(value).__name__}")
    return dict(value)


@attrs.frozen
class Stage1Options:
    stage1: str = option(
        "", "the trained Stage1 model folder (read when the Stage2 model is built; genvae build --stage1 DIR sets it)"
    )
    spec: dict = option(
        help="the Stage1 model's spec, filled in from the folder at build time (the Stage2 folder is "
        "then self-contained)",
        converter=_mapping,
        factory=dict,
    )


def _on_meta() -> bool:
    return torch.empty(0).device.type == "meta"


class Stage1Encoder(Encoder[Stage1Options]):
    """A trained Stage1 model, frozen: the image shrunk to Stage1's size, then Stage1's encoder."""

    name = "stage1"
    Options = Stage1Options
    counterparts = {"transform": "stage1", "decoder": "stage2", "preset": "stage2"}

    def __init__(self, options: Stage1Options, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        from genvae.api import ModelSpec, build_model, load_spec, load_weights

        fresh = not options.spec
        if fresh:
            if not options.stage1:
                raise self.fail("needs a trained Stage1 model: genvae build --preset stage2 --stage1 DIR")
            folder = Path(options.stage1)
            if not (folder / "config.json").is_file():
                raise self.fail(f"Stage1 folder {folder} holds no model (config.json)")
            spec = load_spec(folder)
            self.options = attrs.evolve(options, spec=spec.to_dict())  # recorded in the Stage2 model's config
        else:
            spec = ModelSpec.from_dict(dict(options.spec), where="encoder 'stage1' option spec")
        c, h, w = ctx.image_shape
        if spec.channels != c:
            raise self.fail(
                f"the Stage1 model makes {spec.channels}-channel images; this model has {c} (--set "
                f"channels={spec.channels})"
            )
        factor = h // spec.image_size
        if h != w or factor < 2 or spec.image_size * factor != h or factor & (factor - 1):
            raise self.fail(
                f"the image size {h} must be a power-of-two multiple (x2, x4, ...) of Stage1's "
                f"{spec.image_size}; e.g. --set image_size={2 * spec.image_size}"
            )
        stage1 = build_model(spec, check=False)
        if stage1.prior.name != "normal":
            raise self.fail(
                f"Stage1 models with the standard normal prior are supported; this one's prior is '{stage1.prior.name}'"
            )
        if fresh and not _on_meta():
            load_weights(stage1, Path(options.stage1) / "model.safetensors")
        self.stage1 = stage1.eval()
        self.low_size = spec.image_size
        self.output_shape = tuple(stage1.encoder.output_shape)

    def forward(self, x: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        low = F.adaptive_avg_pool2d(x, self.low_size) if x.shape[-1] != self.low_size else x
        return self.stage1.encoder(low)


class Stage1Latent(LatentTransform[NoOptions]):
    """Stage1's posterior, and Stage1's whole generator: z -> Stage1's image (the Stage2 network's input)."""

    name = "stage1"
    _stage1: GenerativeModel  # kept with refer(): saved once, under the encoder

    def __init__(self, options: Any, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        enc = ctx.encoder
        if not isinstance(enc, Stage1Encoder):
            raise self.fail(f"needs the 'stage1' encoder (the Stage1 model), not '{getattr(enc, 'name', None)}'")
        self.refer("_stage1", enc.stage1)  # saved once, under the encoder
        self.layout = enc.stage1.layout
        self.output_shape = tuple(enc.stage1.spec.image_shape)

    def posterior(self, features: Tensor, fwd: ForwardPass | None = None) -> Gaussian:
        return self._stage1.transform.posterior(features)

    def generate(self, z: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self._stage1.generate(z)[1]

    def generation_modules(self) -> list[nn.Module]:
        return []  # Stage1's generator belongs to the encoder's module tree, frozen


@attrs.frozen
class Stage2Options:
    width: int = option(
        64, "channels of the full-size stages; the residual blocks work at 4 x width", positive_int, to_int
    )
    blocks: int = option(4, "residual blocks at the bottleneck", non_negative_int, to_int)
    factor: int = option(
        2,
        "how many times larger than its input the output is (a power of two; must match the image sizes)",
        positive_int,
        to_int,
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class Stage2Decoder(Decoder[Stage2Options]):
    """StackGAN-like up-sampler: conv, two stride-2 downs, residual blocks, x2 ups to the output size."""

    name = "stage2"
    Options = Stage2Options
    test_options = {"width": 4, "blocks": 1}

    def __init__(self, options: Stage2Options, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        transform = ctx.transform
        if transform is None:
            raise self.fail("is built after the latent transform, which is missing")
        c_in, h_in, w_in = self.require_spatial(
            tuple(transform.output_shape),
            f"latent transform '{transform.name}'",
            "its input is a low-resolution image, e.g. the 'stage1' transform's",
        )
        c, h, w = ctx.image_shape
        if h_in % 4 or w_in % 4:
            raise self.fail(f"its input {h_in}x{w_in} must be divisible by 4 (two stride-2 down-samplings)")
        if h != options.factor * h_in or w != options.factor * w_in or options.factor & (options.factor - 1):
            raise self.fail(
                f"factor {options.factor} takes {h_in}x{w_in} to {options.factor * h_in}x"
                f"{options.factor * w_in}, but the images are {h}x{w}; set decoder.factor={h // h_in}"
            )
        wd = options.width
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, wd, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(wd, 2 * wd, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * wd),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * wd, 4 * wd, 4, 2, 1, bias=False),
            nn.BatchNorm2d(4 * wd),
            nn.ReLU(inplace=True),
        ]
        layers += [ResidualBlock(4 * wd) for _ in range(options.blocks)]
        ups = 2 + int(math.log2(options.factor))
        prev = 4 * wd
        for i in range(ups):
            out = max(wd, 4 * wd // 2 ** (i + 1))
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(prev, out, 3, 1, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            prev = out
        layers.append(nn.Conv2d(prev, c, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, u: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.net(u)


def _stage2_preset(size: int, channels: int, width: int, blocks: int, adv_widths: list[int], lr: float) -> dict:
    return {
        "image_size": size,
        "channels": channels,
        "encoder": {"name": "stage1"},
        "transform": {"name": "stage1"},
        "decoder": {"name": "stage2", "options": {"width": width, "blocks": blocks, "factor": 2}},
        "prior": {"name": "normal"},
        "losses": [
            {"name": "mse", "weight": 0.1, "options": {"reduction": "mean"}},
            {"name": "kl", "weight": 0.0},
            {"name": "adv", "options": {"widths": adv_widths, "head_hidden": 256, "beta": 0.05}},
            {"name": "perceptual", "weight": 1.0, "options": {"network": "discriminator", "layers": [2, 3]}},
        ],
        "train": {"lr": lr, "batch_size": 32, "freeze": ["encoder"], "schedule": "one-pass"},
    }


@hookimpl
def genvae_register_encoders(register: RegisterComponent[Encoder]) -> None:
    register(Stage1Encoder)


@hookimpl
def genvae_register_transforms(register: RegisterComponent[LatentTransform]) -> None:
    register(Stage1Latent)


@hookimpl
def genvae_register_decoders(register: RegisterComponent[Decoder]) -> None:
    register(Stage2Decoder)


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    register(
        "stage2",
        _stage2_preset(128, 3, 64, 4, [64, 128, 256, 256, 256], 2e-4),
        help="crVAE paper Stage2 (64 -> 128, RGB) on a trained Stage1 (genvae build --preset stage2 --stage1 "
        "DIR): StackGAN-like up-sampler, adversarial + perceptual (discriminator features) + small MSE",
        builds_on="--stage1 DIR",
    )
    register(
        "stage2-small",
        _stage2_preset(64, 1, 16, 2, [16, 32, 64, 64], 1e-3),
        help="Stage2 for CPUs (32 -> 64, grey) on a -small Stage1 such as crvae-gan-small",
        builds_on="--stage1 DIR",
    )
