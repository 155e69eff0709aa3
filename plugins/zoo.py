"""``zoo``: presets of the model zoo (docs/model-zoo.md) that need no component of their own.

Every zoo preset is built on one network, the ZOO NETWORK, so that ``benchmarks/model_zoo.py`` compares models (and
genvae against pythae) on the same layers: a ``conv`` encoder (width 32, depth 3: 1x32x32 -> 128x4x4), an ``fc``
latent transform (16 latent values; z -> u of the encoder's feature shape) and a ``conv`` decoder back to the image,
grey 32x32 images, Adam at 1e-3, batch 64. The presets here differ only in their prior and losses:

* ``conv-vae``, the VAE (Kingma and Welling, *Auto-Encoding Variational Bayes*, ICLR 2014): the negative ELBO
  -E_q[log p(x|z)] + KL(q(z|x) || N(0, I)) with a Bernoulli likelihood on the pixels in [0, 1] (``bce``) and the
  closed-form KL (``kl``);
* ``beta-vae`` (Higgins et al., *beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
  Framework*, ICLR 2017): the same with the KL term weighted by beta = 4 (``kl`` option ``beta``);
* ``vae-vamp`` (Tomczak and Welling, *VAE with a VampPrior*, AISTATS 2018): the prior is the mixture
  (1/K) sum_k q(z|u_k) over K = 50 learned pseudo-inputs (``vamp``), its KL the Monte Carlo estimate
  log q(z|x) - log p(z) at the pass's sample.

The presets are plain data (``ZOO_NETWORK`` below); ``--set`` changes any of it, e.g. ``--set image_size=64``.
"""

from __future__ import annotations

import copy
from typing import Any

from genvae.api import PresetSpec, RegisterNamed, hookimpl

#: the network every zoo preset shares (docs/model-zoo.md); its prior and losses are the model's own
ZOO_NETWORK: dict[str, Any] = {
    "image_size": 32,
    "channels": 1,
    "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
    "transform": {"name": "fc", "options": {"latent_dim": 16}},
    "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
    "prior": {"name": "normal"},
    "losses": [{"name": "bce"}, {"name": "kl"}],
    "train": {"lr": 1e-3, "batch_size": 64},
}


def zoo_preset(prior: dict[str, Any] | None = None, losses: list[dict[str, Any]] | None = None) -> PresetSpec:
    """The ZOO NETWORK with this model's prior and losses (a fresh copy: presets never share mutable parts)."""
    spec = copy.deepcopy(ZOO_NETWORK)
    if prior is not None:
        spec["prior"] = prior
    if losses is not None:
        spec["losses"] = losses
    return spec


#: the presets this module registers: name -> (spec, help)
PRESETS: dict[str, tuple[PresetSpec, str]] = {
    "conv-vae": (
        zoo_preset(),
        "VAE on the zoo network (conv encoder/decoder, 16-value latent), Bernoulli likelihood + KL",
    ),
    "beta-vae": (
        zoo_preset(losses=[{"name": "bce"}, {"name": "kl", "options": {"beta": 4.0}}]),
        "beta-VAE (beta = 4) on the zoo network, Bernoulli likelihood",
    ),
    "vae-vamp": (
        zoo_preset(prior={"name": "vamp", "options": {"components": 50}}),
        "VAE with a VampPrior (50 pseudo-inputs) on the zoo network, Bernoulli likelihood",
    ),
}


@hookimpl
def genvae_register_presets(register: RegisterNamed) -> None:
    for name, (spec, help_text) in PRESETS.items():
        register(name, copy.deepcopy(spec), help=help_text)
