"""The paper presets' layers against a table written from the authors' code (``models/allconv_lstm.lua``,
``models/allconv_baseline.lua``, their README's run commands ``-eps 1e-6 -mom 0.9``; summarised in
shared/seeds/README.md): layer types and sizes, activations (CReLU, LeakyReLU(0.1), LeakyReLU(0.2) in
the MI head, tanh output), BatchNorm eps/momentum, LSTM hidden size 512 with forget-gate bias 1, the
discriminator; and the meaning of the BatchNorm momentum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genvae.core.compose import compose_spec, preset_spec
from genvae.core.model import build_model
from genvae.plugins.cr_lstm.components import CReLU

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


@pytest.fixture(scope="module")
def crvae_gan():
    torch.manual_seed(0)
    return build_model(preset_spec("crvae-gan"), check=False)


@pytest.fixture(scope="module")
def vae_gan():
    torch.manual_seed(0)
    return build_model(preset_spec("vae-gan"), check=False)


def layers(module) -> list[tuple]:
    """The leaf layers of a Sequential, in order, as (kind, sizes...) rows."""
    rows: list[tuple] = []
    for m in module:
        if isinstance(m, CReLU):
            rows.append(("crelu",))
        elif isinstance(m, nn.ConvTranspose2d):
            rows.append(("deconv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]))
        elif isinstance(m, nn.Conv2d):
            rows.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]))
        elif isinstance(m, nn.BatchNorm2d):
            rows.append(("bn", m.num_features, m.eps, m.momentum))
        elif isinstance(m, nn.LeakyReLU):
            rows.append(("lrelu", m.negative_slope))
        elif isinstance(m, nn.ReLU):
            rows.append(("relu",))
        elif isinstance(m, nn.MaxPool2d):
            rows.append(("maxpool", m.kernel_size))
        elif isinstance(m, nn.Linear):
            rows.append(("linear", m.in_features, m.out_features))
        elif isinstance(m, nn.Flatten):
            rows.append(("flatten",))
        else:
            rows.append((type(m).__name__,))
    return rows


BN = ("bn", 1e-6, 0.9)  # the run commands' -eps 1e-6 -mom 0.9


def bn(n):
    return ("bn", n, BN[1], BN[2])


# allconv_lstm.lua, dataset 'bird', baseChannels 32, nf 64, 4x4 latent
ENCODER = [
    ("crelu",),
    ("conv", 6, 32, 5, 2),
    bn(32),
    ("crelu",),
    ("conv", 64, 64, 3, 2),
    bn(64),
    ("crelu",),
    ("conv", 128, 128, 3, 2),
    bn(128),
    ("crelu",),
    ("conv", 256, 256, 3, 1),
    bn(256),
    ("lrelu", 0.1),
    ("conv", 256, 256, 3, 2),
    bn(256),
    ("crelu",),
    ("conv", 512, 256, 3, 1),
    bn(256),
    ("lrelu", 0.1),
]
DECODER_UPSAMPLING = [
    ("deconv", 256, 256, 4, 2),
    bn(256),
    ("lrelu", 0.1),
    ("conv", 256, 256, 3, 1),
    bn(256),
    ("lrelu", 0.1),
    ("deconv", 256, 128, 4, 2),
    bn(128),
    ("lrelu", 0.1),
    ("deconv", 128, 64, 4, 2),
    bn(64),
    ("lrelu", 0.1),
    ("deconv", 64, 64, 4, 2),
    bn(64),
    ("lrelu", 0.1),
    ("conv", 64, 64, 3, 1),
    bn(64),
    ("lrelu", 0.1),
    ("conv", 64, 3, 3, 1),  # then tanh (the model's)
]
# crVAE-GAN: u (64x4x4, the bias added by the transform) -> conv3x3 64->256 + BN, no activation
CR_DECODER = [("conv", 64, 256, 3, 1), bn(256), *DECODER_UPSAMPLING]
MI_HEAD = [
    ("conv", 256, 64, 3, 1),
    bn(64),
    ("lrelu", 0.2),
    ("conv", 64, 64, 1, 1),
    bn(64),
    ("lrelu", 0.1),
    ("flatten",),
    ("linear", 1024, 1024),
]


def trunk(widths):
    rows, prev = [], 3
    for i, w in enumerate(widths):
        k = 3 if i == len(widths) - 1 else 5
        rows.append([("conv", prev, w, k, 1), ("maxpool", 2), ("relu",), ("Torch7Dropout",)])
        prev = w
    return rows


def test_crvae_gan_encoder_decoder_and_mi_head(crvae_gan):
    assert layers(crvae_gan.encoder.net) == ENCODER
    assert layers(crvae_gan.decoder.net) == CR_DECODER
    assert layers(crvae_gan.losses["mi"].head.net) == MI_HEAD
    assert crvae_gan.losses["mi"].head.bias.shape == (64, 4, 4)


def test_vae_gan_encoder_and_decoder(vae_gan):
    assert layers(vae_gan.encoder.net) == ENCODER
    assert layers(vae_gan.decoder.net) == DECODER_UPSAMPLING  # the fc latent gives 256x4x4: no input conv
    tr = vae_gan.transform
    assert (tr.to_params.in_features, tr.to_params.out_features) == (4096, 2 * 1024)
    assert (tr.from_z.in_features, tr.from_z.out_features) == (1024, 4096)
    assert isinstance(tr.act, nn.Identity)  # Linear 1024 -> 4096 straight into the deconvolutions


def test_output_is_tanh_of_the_decoder(crvae_gan):
    crvae_gan.eval()
    with torch.no_grad():
        fwd = crvae_gan(torch.zeros(2, 3, 64, 64))
    assert torch.equal(fwd.x_hat, torch.tanh(fwd.decoder_output))


def test_channel_recurrent_latent(crvae_gan):
    tr = crvae_gan.transform
    assert (tr.mean_conv.in_channels, tr.mean_conv.out_channels, tr.mean_conv.kernel_size) == (256, 64, (3, 3))
    assert tr.mean_bias.shape == (64, 4, 4) and tr.gen.bias.shape == (64, 4, 4)
    for lstm, inputs in ((tr.var.lstm, 512), (tr.gen.lstm, 128)):
        assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.batch_first) == (inputs, 512, 2, True)
        for layer in range(2):
            forget = getattr(lstm, f"bias_ih_l{layer}")[512:1024] + getattr(lstm, f"bias_hh_l{layer}")[512:1024]
            assert torch.equal(forget, torch.ones(512)), "forget-gate bias must start at 1"
            others = torch.cat([getattr(lstm, f"bias_ih_l{layer}")[:512], getattr(lstm, f"bias_ih_l{layer}")[1024:]])
            assert others.abs().max() < 1  # only the forget gates start at 1
    # the variance path's BatchNorm1d keeps Torch's defaults in the authors' code (no eps/mom passed)
    assert (tr.var.norm.num_features, tr.var.norm.eps, tr.var.norm.momentum) == (512, 1e-5, 0.1)
    assert (tr.var.linear.in_features, tr.var.linear.out_features) == (512, 128)
    assert (tr.gen.linear.in_features, tr.gen.linear.out_features) == (512, 128)


@pytest.mark.parametrize("which, widths", [("crvae_gan", [64, 128, 256, 256]), ("vae_gan", [32, 64, 128, 256])])
def test_discriminator(which, widths, request):
    adv = request.getfixturevalue(which).losses["adv"]
    assert [layers(block) for block in adv.trunk.blocks] == trunk(widths)
    assert all(block[3].p == 0.5 and block[3].spatial for block in adv.trunk.blocks)
    head = adv.head
    assert (head.linear.in_features, head.linear.out_features) == (4096, 1024)
    assert head.dropout.p == 0.5 and not head.dropout.spatial
    assert (head.minibatch.T.shape, head.minibatch.kernels, head.minibatch.dims) == ((1024, 500), 100, 5)
    assert (head.out.in_features, head.out.out_features) == (1124, 1)


def test_batch_norm_momentum_weights_the_new_batch():
    """Torch7: running = (1 - momentum) * running + momentum * batch statistic; the option means the same here."""
    spec = compose_spec(
        preset="crvae",
        sets=[
            "image_size=16",
            "encoder.width=4",
            "encoder.max_width=16",
            "decoder.width=4",
            "decoder.max_width=16",
            "transform.latent_channels=8",
            "transform.hidden=16",
            "transform.layers=1",
        ],
    )
    model = build_model(spec)
    first = model.encoder.net[2]
    assert isinstance(first, nn.BatchNorm2d) and (first.eps, first.momentum) == (1e-6, 0.9)
    assert first.running_mean is not None  # track_running_stats
    with torch.no_grad():
        first.running_mean.fill_(1.0)
        x = torch.rand(4, 3, 16, 16) * 2 - 1
        pre = model.encoder.net[1](model.encoder.net[0](x))
        model.train()
        model.encoder(x)
    assert torch.allclose(first.running_mean, 0.1 * 1.0 + 0.9 * pre.mean((0, 2, 3)), atol=1e-6)


def test_crelu_by_hand():
    """CReLU(x) = concat(relu(x), relu(-x)) along channels: the negative part is kept, in the second half."""
    from genvae.plugins.cr_lstm.components import CReLU

    x = torch.tensor([[[[1.5, -2.0]], [[0.0, -0.25]]]])  # (1, 2, 1, 2)
    expected = torch.tensor([[[[1.5, 0.0]], [[0.0, 0.0]], [[0.0, 2.0]], [[0.0, 0.25]]]])
    assert torch.equal(CReLU()(x), expected)
