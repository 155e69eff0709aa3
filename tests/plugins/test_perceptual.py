"""The perceptual loss: its value in each feature network, where its gradient goes, and its refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import vgg

from genvae.api import BuildError, build_model
from genvae.core.compose import apply_sets, preset_spec
from genvae.core.errors import GenvaeError, OptionsError
from genvae.core.spec import LossSpec
from genvae.plugins.adv import AdversarialLoss
from genvae.plugins.classifier import Classifier, save_classifier
from genvae.plugins.perceptual import VGG_RELUS, PerceptualLoss, VGG16Features
from genvae.testing import check_component, tiny_spec


def gan_spec(**perceptual):
    s = apply_sets(
        preset_spec("vae-gan-small"),
        [
            "image_size=16",
            "transform.latent_dim=8",
            "loss.adv.widths=[8,16]",
            "loss.adv.head_hidden=16",
            "loss.adv.dropout=0",
        ],
    )
    import attrs

    return attrs.evolve(s, losses=(*s.losses, LossSpec("perceptual", 0.5, perceptual)))


def test_discriminator_features_by_hand_and_the_gradient_reaches_the_generator():
    torch.manual_seed(0)
    model = build_model(gan_spec(layers=[1, 2], layer_weights=[1.0, 3.0]))
    model.train()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    fwd = model(x)
    term = model.phase_terms(fwd, "model")["perceptual"]
    adv = model.losses["adv"]
    assert isinstance(adv, AdversarialLoss)
    with torch.no_grad():
        expect = 0.5 * sum(
            (
                w * (adv.trunk.layer_features(fwd.x_hat, k) - adv.trunk.layer_features(x, k)).pow(2).mean()
                for k, w in ((1, 1.0), (2, 3.0))
            ),
            torch.zeros(()),
        )
    assert term.item() == pytest.approx(expect.item(), rel=1e-5)
    grads = torch.autograd.grad(term, list(model.decoder.parameters()), retain_graph=True)
    assert any(g.abs().sum() > 0 for g in grads)
    # only the reconstruction side: no gradient through the real image's features
    x2 = x.clone().requires_grad_(True)
    state2 = model(x2)
    loss = model.losses["perceptual"]
    assert isinstance(loss, PerceptualLoss)
    real_only = loss._outputs(state2.x)[0]
    assert real_only.requires_grad  # (the trunk itself is differentiable) ...
    with torch.no_grad():
        assert not loss._outputs(state2.x)[0].requires_grad  # ... and forward computes it under no_grad
    assert model.phase_terms(state2, "model")["perceptual"].grad_fn is not None


def test_the_perceptual_loss_conforms():
    check_component("loss", "perceptual", spec=gan_spec(layers=[2]))


def test_network_discriminator_without_a_discriminator_is_refused():
    with pytest.raises(
        BuildError, match="loss 'perceptual': network=discriminator needs a loss that provides a discriminator"
    ):
        build_model(tiny_spec("loss", "perceptual"))


def test_layers_beyond_the_trunk_are_refused():
    with pytest.raises(BuildError, match="the discriminator trunk has 2 blocks; layers go up to 3"):
        build_model(gan_spec(layers=[3]))


def test_vgg16_needs_its_weights_file_and_reads_relu_outputs(tmp_path):
    with pytest.raises(GenvaeError, match="VGG16 weights .* not found; genvae does not download them"):
        VGG16Features(tmp_path / "missing.safetensors")
    torch.manual_seed(0)
    stack = vgg.make_layers(vgg.cfgs["D"])
    save_file({f"features.{k}": v.contiguous() for k, v in stack.state_dict().items()}, str(tmp_path / "vgg.st"))
    net = VGG16Features(tmp_path / "vgg.st")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    outs = net.layer_outputs(x, (1, 2, 4))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 32, 32), (128, 16, 16), (512, 4, 4)]
    rgb = ((x.expand(-1, 3, -1, -1) + 1) / 2 - net.mean) / net.std
    assert torch.allclose(outs[1], stack[: VGG_RELUS[1] + 1](rgb), atol=1e-5)
    assert not any(p.requires_grad for p in net.parameters())
    spec = gan_spec(network="vgg16", path=str(tmp_path / "vgg.st"), layers=[1, 2])
    model = build_model(spec)
    assert not any(k.startswith("losses.perceptual") for k in model.state_dict())  # not saved with the model
    with pytest.raises(BuildError, match="VGG16 has layers 1-4"):
        build_model(gan_spec(network="vgg16", path=str(tmp_path / "vgg.st"), layers=[5]))


def test_a_classifiers_feature_vector_as_the_network(tmp_path):
    torch.manual_seed(0)
    net = Classifier(1, 16, 3, width=4, features=6)
    save_classifier(
        net.eval(),
        tmp_path / "clf",
        {
            "feature_network": "genvae-classifier",
            "data_name": "toy",
            "classes": ["a", "b", "c"],
            "image_size": 16,
            "channels": 1,
            "width": 4,
            "features": 6,
        },
    )
    model = build_model(gan_spec(network="classifier", path=str(tmp_path / "clf")))
    model.eval()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    fwd = model(x, sample=False)
    with torch.no_grad():
        expect = 0.5 * (net.features(fwd.x_hat) - net.features(x)).pow(2).mean()
    assert model.phase_terms(fwd, "model")["perceptual"].item() == pytest.approx(expect.item(), rel=1e-5)


def test_a_file_network_needs_a_path():
    with pytest.raises(OptionsError, match="network vgg16 needs path"):
        build_model(gan_spec(network="vgg16"))
