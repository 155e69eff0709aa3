"""Write the format-1 fixtures: tiny model folders and their outputs, with genvae as of commit 2f051ae.

Run with that commit's packages first on the path (a checkout whose core/, plugins/, cli/, testing/ are
linked as genvae/core, ...), e.g.::

    git worktree add /tmp/old 2f051ae && mkdir -p /tmp/oldroot/genvae
    for p in core plugins cli testing; do ln -s /tmp/old/$p /tmp/oldroot/genvae/$p; done
    PYTHONPATH=/tmp/oldroot python tests/data/format1/make_fixtures.py tests/data/format1
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import genvae.core
from genvae.api import ModelSpec, save_model
from genvae.testing import build_tiny, random_images, tiny_spec

print(genvae.core.__file__, file=sys.stderr)
out = Path(sys.argv[1])
TRAIN = {"batch_size": 4}
cases = {
    "cvae": tiny_spec("encoder", "conv", {"width": 4, "depth": 2, "max_width": 8}),
    "fc-vae": tiny_spec("encoder", "fc", {"hidden": [16]}),
    "crvae-gan": ModelSpec.from_dict(
        {
            "image_size": 16,
            "channels": 1,
            "encoder": {"name": "cr-lstm", "options": {"width": 4, "max_width": 16}},
            "transform": {"name": "cr-lstm", "options": {"latent_channels": 8, "steps": 4, "hidden": 16, "layers": 2}},
            "decoder": {"name": "cr-lstm", "options": {"width": 4, "max_width": 16}},
            "losses": [
                {"name": "mse"},
                {"name": "kl"},
                {
                    "name": "adv",
                    "options": {"widths": [4, 8], "head_hidden": 16, "minibatch_kernels": 4, "minibatch_dims": 2},
                },
                {"name": "mi", "options": {"hidden": 8}},
            ],
            "train": TRAIN,
        }
    ),
    "lapcvae-m-net": ModelSpec.from_dict(
        {
            "image_size": 16,
            "channels": 3,
            "encoder": {"name": "laplacian", "options": {"levels": 3, "widths": [4], "max_width": 8}},
            "transform": {"name": "laplacian", "options": {"latent_sizes": [4]}},
            "decoder": {"name": "laplacian", "options": {"widths": [4], "max_width": 8}},
            "prior": {"name": "m-net", "options": {"hidden": [8]}},
            "losses": [{"name": "pyramid-mse"}, {"name": "kl"}],
            "train": TRAIN,
        }
    ),
    "vamp": tiny_spec("prior", "vamp", {"components": 4}),
}
for name, spec in cases.items():
    model = build_tiny(spec, seed=1)
    # move batch-norm statistics off their initial values so the fixture checks they load
    model.train()
    with torch.no_grad():
        torch.manual_seed(5)
        model(random_images(spec, seed=4))
    model.eval()
    save_model(model, out / name)
    x = random_images(spec, batch=2, seed=0)
    torch.manual_seed(3)
    z = torch.randn(2, *model.layout.shape)
    with torch.no_grad():
        state = model(x, sample=False)
        u, gen = model.generate(z)
        torch.manual_seed(11)
        sampled = model.prior.sample(2, model, "cpu")
    tensors = {
        "x": x,
        "mean": state.posterior.mean,
        "logvar": state.posterior.logvar,
        "x_hat": state.x_hat,
        "z": z,
        "generated": gen,
        "prior_sample": sampled,
    }
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(out / f"{name}.expected.safetensors"))
    print(name, sum(p.numel() for p in model.parameters()), file=sys.stderr)
