"""Model folders written before the plugin API 1.0 (format 1, genvae at 2f051ae) still load, with the same outputs.

``tests/data/format1`` holds five tiny model folders written by that version (``make_fixtures.py`` there, run
with that commit's packages on the path) and, beside each, the outputs it gave for a fixed input: the posterior,
the reconstruction, images generated from a fixed z and a prior sample. Since then the conv stacks, the
Laplacian levels and the crVAE recurrent paths became modules of their own and the Laplacian decoder declares
an ``image`` output space instead of undoing tanh; the weights keep their names, so no migration is needed, and
these tests prove it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genvae.api import load_model

FIXTURES = Path(__file__).parent / "data" / "format1"
NAMES = ["cvae", "fc-vae", "crvae-gan", "lapcvae-m-net", "vamp"]


@pytest.mark.parametrize("name", NAMES)
def test_a_format_1_folder_loads_and_gives_the_same_outputs(name, one_thread):
    model = load_model(FIXTURES / name, device="cpu")
    model.eval()
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    with torch.no_grad():
        fwd = model(expected["x"], sample=False)
        _, generated = model.generate(expected["z"])
        torch.manual_seed(11)
        sampled = model.prior.sample(2, model, "cpu")
    assert torch.allclose(fwd.posterior.mean, expected["mean"], atol=1e-6)
    assert torch.allclose(fwd.posterior.logvar, expected["logvar"], atol=1e-6)
    # the Laplacian decoder's clamp used to be tanh(atanh(clamp(x, +-(1 - 1e-5)))): equal to within 1e-5
    assert torch.allclose(fwd.x_hat, expected["x_hat"], atol=2e-5)
    assert torch.allclose(generated, expected["generated"], atol=2e-5)
    assert torch.allclose(sampled, expected["prior_sample"], atol=1e-5)


def test_the_fixtures_cover_the_reorganised_modules():
    """The folders hold the weights whose modules moved: conv stacks, pyramid levels, the LSTM paths, adv/mi."""
    keys = {name: set(load_file(str(FIXTURES / name / "model.safetensors"))) for name in NAMES}
    assert "encoder.net.0.weight" in keys["cvae"]
    assert {"encoder.levels.0.net.0.weight", "decoder.levels.2.net.0.weight", "prior.levels.0.R.0.weight"} <= keys[
        "lapcvae-m-net"
    ]
    assert {
        "transform.var.lstm.weight_ih_l0",
        "transform.var.norm.running_mean",
        "transform.gen.bias",
        "losses.adv.trunk.blocks.0.0.weight",
        "losses.mi.head.bias",
    } <= keys["crvae-gan"]
