"""``perceptual``: the perceptual loss, a distance between reconstructions and images in a frozen network's features.

    perceptual = weight * sum_l  w_l * mean((phi_l(x_hat) - phi_l(x))^2)

over the chosen layers l of a feature network phi, with the real image's features detached; the gradient reaches
the generator through phi, whose own weights never train. The feature networks (``network``):

* ``discriminator`` (default): the model's own discriminator trunk (needs a loss that provides the ``discriminator``
  capability, e.g. ``adv``): the conv output of trunk block l (1-based, dropout off), Larsen et al.'s learned
  similarity; needs no weights file. It follows the discriminator as it trains.
* ``classifier``: a classifier folder written by ``genvae train-classifier`` (``path``): its feature vector (one
  layer; ``layers`` is ignored).
* ``vgg16``: torchvision's VGG16 with ImageNet weights from a local ``.safetensors`` file (``path``; genvae never
  downloads it): the ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3 are layers 1-4; images are mapped to
  ImageNet's normalisation, grey images repeated to 3 channels.

The classifier and VGG16 are kept out of the model's module tree (``refer``): they are not saved in the model
folder, so ``path`` must exist wherever the model is built or loaded.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from genvae.api import (
    DISCRIMINATOR,
    BuildContext,
    DiscriminatorTrunk,
    ForwardPass,
    GenerativeModel,
    GenvaeError,
    Loss,
    RegisterComponent,
    fit_to,
    float_tuple,
    hookimpl,
    int_tuple,
    one_of,
    option,
    positive_ints,
    to_float32,
)

NETWORKS = ("discriminator", "classifier", "vgg16")
#: the VGG16 feature indices after relu1_2, relu2_2, relu3_3, relu4_3 (torchvision's vgg16().features)
VGG_RELUS = (3, 8, 15, 22)


@attrs.frozen
class PerceptualOptions:
    network: str = option(
        "discriminator",
        "feature network: discriminator (the model's own trunk), classifier "
        "(a genvae train-classifier folder) or vgg16 (a local ImageNet weights .safetensors)",
        one_of(*NETWORKS),
    )
    path: str = option("", "the classifier folder or VGG16 weights file (network classifier / vgg16)")
    layers: tuple[int, ...] = option(
        (3,),
        "layers compared, 1-based: discriminator trunk blocks, VGG16 relu1_2..relu4_3 (1-4)",
        positive_ints,
        int_tuple,
    )
    layer_weights: tuple[float, ...] = option((), "weight of each layer; empty = 1 for each", converter=float_tuple)

    def __attrs_post_init__(self) -> None:
        if self.layer_weights and len(self.layer_weights) != len(self.layers):
            raise ValueError(f"{len(self.layer_weights)} layer_weights for {len(self.layers)} layers")
        if self.network != "discriminator" and not self.path:
            raise ValueError(f"network {self.network} needs path (the {self.network} weights)")


class VGG16Features(nn.Module):
    """VGG16's conv stack with ImageNet weights from a local safetensors file; ReLU outputs by layer."""

    mean: Tensor
    std: Tensor

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        from safetensors.torch import load_file
        from torchvision.models import vgg

        if not Path(path).is_file():
            raise GenvaeError(
                f"VGG16 weights {path} not found; genvae does not download them: save torchvision's "
                "vgg16 ImageNet state_dict as a .safetensors file there"
            )
        try:
            weights = {k[len("features.") :]: v for k, v in load_file(str(path)).items() if k.startswith("features.")}
        except Exception as exc:
            raise GenvaeError(f"cannot read VGG16 weights {path}: {str(exc).splitlines()[0]}") from None
        self.features = vgg.make_layers(vgg.cfgs["D"])[: VGG_RELUS[-1] + 1]  # VGG16's conv stack up to relu4_3
        try:
            self.features.load_state_dict({k: v for k, v in weights.items() if int(k.split(".")[0]) <= VGG_RELUS[-1]})
        except RuntimeError as exc:
            raise GenvaeError(f"{path} is not torchvision VGG16 weights: {str(exc).splitlines()[0]}") from None
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def layer_outputs(self, x: Tensor, layers: tuple[int, ...]) -> list[Tensor]:
        x = fit_to(x, (3, x.shape[-2], x.shape[-1]))
        x = ((x + 1) / 2 - self.mean) / self.std
        wanted = {VGG_RELUS[i - 1]: i for i in layers}
        out: dict[int, Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                out[wanted[index]] = x
        return [out[i] for i in layers]


class PerceptualLoss(Loss[PerceptualOptions]):
    """Squared distance between reconstruction and image in a frozen network's features (learned similarity)."""

    name = "perceptual"
    Options = PerceptualOptions
    role = "auxiliary"
    # kept with refer() (not submodules): the frozen network (VGG16Features, or a feature network from a file,
    # an nn.Module; None with network=discriminator) and, with network=discriminator, the loss providing it
    _network: Any
    _disc: DiscriminatorTrunk

    def __init__(self, options: PerceptualOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        self.layer_weights = list(options.layer_weights) or [1.0] * len(options.layers)
        self.refer("_network", None)
        # a frozen network from a file, on the CPU even while the model is sized on the meta device (it is not
        # part of the model); moved to the images' device at the first forward
        with torch.device("cpu"):
            if options.network == "vgg16":
                if max(options.layers) > len(VGG_RELUS):
                    raise self.fail(
                        f"VGG16 has layers 1-{len(VGG_RELUS)} (relu1_2 .. relu4_3), not {max(options.layers)}"
                    )
                self.refer("_network", VGG16Features(options.path))
            elif options.network == "classifier":
                from genvae.api import get_registry, open_feature_network

                self.refer("_network", open_feature_network(options.path, get_registry()))

    def attach(self, model: GenerativeModel) -> None:
        if self.options.network != "discriminator":
            return
        losses = typing.cast("Iterable[Loss]", model.losses.values())  # the model's losses, by name
        found = next((loss for loss in losses if DISCRIMINATOR in loss.provides), None)
        if found is None:
            raise self.fail(
                "network=discriminator needs a loss that provides a discriminator (e.g. adv); or use "
                "network=classifier / vgg16"
            )
        disc = typing.cast(DiscriminatorTrunk, found)  # the build checks the provider implements the protocol
        blocks = disc.trunk_layers
        if max(self.options.layers) > blocks:
            raise self.fail(f"the discriminator trunk has {blocks} blocks; layers go up to {max(self.options.layers)}")
        self.refer("_disc", disc)

    def _outputs(self, x: Tensor) -> list[Tensor]:
        """The feature network's outputs, computed in the model's precision and handed on in float32 (the
        distances are float32)."""
        network = self.options.network
        if network == "discriminator":
            return [self._disc.layer_features(x, layer) for layer in self.options.layers]
        net = self._network
        if next(net.buffers(), next(net.parameters(), x)).device != x.device:
            net.to(x.device)
        with self.precision.autocast():
            if network == "vgg16":
                outputs = net.layer_outputs(x, self.options.layers)
            else:
                outputs = [net.features(fit_to(x, net.image_shape))]
        return [to_float32(o) for o in outputs]

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        if not fwd.wants("posterior"):
            return {}
        assert fwd.x_hat is not None  # the model's forward sets it
        fake = self._outputs(fwd.x_hat)
        with torch.no_grad():
            real = self._outputs(fwd.x)
        total = sum(w * (f - r).pow(2).mean() for w, f, r in zip(self.layer_weights, fake, real, strict=False))
        return {"perceptual": self.weight * typing.cast(Tensor, total)}  # layers is not empty: a tensor


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(PerceptualLoss)
