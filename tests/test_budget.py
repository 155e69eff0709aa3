"""The memory budget: specs are sized on the meta device and refused, in one line, before any real allocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import one_line, registry_with_module

from genvae.core.budget import (
    BudgetError,
    available_memory,
    check_budget,
    estimate,
    format_size,
    memory_limit,
    parse_limit,
    parse_size,
)
from genvae.core.checkpoint import load_model
from genvae.core.compose import compose_spec
from genvae.core.errors import BuildError, GenvaeError
from genvae.core.model import build_model
from genvae.core.registry import get_registry
from genvae.core.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)

SMALL_PRESETS = ["vae", "cvae", "crvae-gan-small", "lapcvae-small", "vae-gan-small"]

# (preset, --set overrides): each asks for far more memory than any machine has, in a few bytes of config
HOSTILE = [
    ("cvae", ["encoder.width=1000000", "encoder.max_width=1000000"]),
    ("cvae", ["image_size=100000"]),
    ("vae", ["encoder.hidden=[1000000000]"]),
    ("vae", ["train.batch_size=100000000"]),
    ("vae", ["transform.latent_dim=1000000000000"]),
    ("cvae", ["transform.latent_channels=100000000"]),
    ("cvae", ["image_size=4096"]),
    ("vae", ["image_size=1000000000000000000"]),
    ("crvae-gan-small", ["transform.hidden=10000000"]),
    ("crvae-gan-small", ["loss.adv.head_hidden=1000000000"]),
    ("lapcvae-small", ["transform.latent_sizes=[1000000000]"]),
    ("lapcvae-small", ["prior.hidden=[1000000000]"]),
    ("vae-gan-small", ["loss.adv.widths=[1000000,1000000]"]),
]
# sizes past 64 bits: no allocation is even attempted, the refusal is still one line
OVERFLOWING = [
    ("cvae", [f"encoder.width={10**30}", f"encoder.max_width={10**30}"]),
    ("vae", [f"encoder.hidden=[{10**30}]"]),
    ("vae", [f"train.batch_size={10**30}"]),
]


@pytest.fixture
def limit_4g(monkeypatch):
    """A fixed limit, so that what is refused does not depend on this machine's free memory."""
    monkeypatch.setenv("GENVAE_MAX_MEMORY", "4G")


# -- the estimate ----------------------------------------------------------------------------------


def test_the_small_presets_exist():
    assert set(SMALL_PRESETS) <= set(get_registry().names("preset"))


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_the_estimate_counts_the_real_models_parameters(preset):
    spec = compose_spec(preset=preset)
    est = estimate(spec)
    model = build_model(spec, check=False)
    assert est.parameters == sum(p.numel() for p in model.parameters())
    assert est.parameter_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert est.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())
    assert est.measured, est.note
    assert est.batch_size == spec.train.batch_size
    image_batch = spec.train.batch_size * spec.channels * spec.image_size**2 * 4
    assert est.activation_bytes > image_batch  # the forward's outputs are counted, not just the input
    assert est.training_bytes >= 4 * est.parameter_bytes + 2 * est.activation_bytes


def test_activations_grow_with_the_batch():
    spec = compose_spec(preset="cvae")
    small, large = estimate(spec, batch_size=8), estimate(spec, batch_size=64)
    assert small.parameters == large.parameters
    assert small.batch_size == 8 and large.batch_size == 64
    assert large.activation_bytes == pytest.approx(8 * small.activation_bytes, rel=0.01)


@pytest.mark.slow
def test_every_preset_is_sized_on_meta_and_fits_8g():
    registry = get_registry()
    for name in registry.names("preset"):
        if registry.get("preset", name).extra.get("builds_on"):
            continue  # needs a trained model to build on (stage2: --stage1 DIR); sized in its own tests
        spec = compose_spec(preset=name)
        est = check_budget(spec, limit="8G")
        assert est is not None and est.measured, (name, est)
        assert est.training_bytes < 8 * 2**30, (name, format_size(est.training_bytes))


def test_sizing_does_not_touch_the_random_streams():
    import torch

    torch.manual_seed(0)
    before = torch.get_rng_state()
    estimate(compose_spec(preset="crvae-gan-small"))
    assert torch.equal(before, torch.get_rng_state())


# -- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "sets"), HOSTILE, ids=[" ".join(s) for _, s in HOSTILE])
def test_hostile_specs_are_refused_in_one_line_at_once(limit_4g, preset, sets):
    spec = compose_spec(preset=preset, sets=sets)
    start = time.perf_counter()
    with pytest.raises(BudgetError) as info:
        build_model(spec)
    assert time.perf_counter() - start < 2.0
    message = one_line(info.value)
    assert message.startswith("model spec needs ")
    assert "over the limit of 4.0 GB (GENVAE_MAX_MEMORY)" in message
    assert "--max-memory / GENVAE_MAX_MEMORY" in message


@pytest.mark.parametrize(("preset", "sets"), OVERFLOWING, ids=["width", "hidden", "batch"])
def test_overflowing_sizes_are_one_line_errors(limit_4g, preset, sets):
    spec = compose_spec(preset=preset, sets=sets)
    start = time.perf_counter()
    with pytest.raises(GenvaeError) as info:
        build_model(spec)
    assert time.perf_counter() - start < 2.0
    message = one_line(info.value)
    assert "too large" in message or "over the limit" in message


def test_estimate_alone_never_crashes_on_overflow():
    with pytest.raises(BuildError) as info:
        estimate(compose_spec(preset="vae", sets=[f"encoder.hidden=[{10**30}]"]))
    assert "overflows a 64-bit integer" in one_line(info.value)
    # an image batch past a tensor's element count: sized without the forward, not a crash
    est = estimate(compose_spec(preset="cvae", sets=[f"image_size={2**40}"]))
    assert not est.measured and est.activation_bytes == 64 * 3 * 2**80 * 4


def test_the_report_names_the_sizes(limit_4g):
    spec = compose_spec(preset="cvae", sets=["train.batch_size=8192"])  # small weights, large activations
    message = one_line(pytest.raises(BudgetError, build_model, spec).value)
    est = estimate(spec)
    assert f"needs about {format_size(est.training_bytes)} to train" in message
    assert f"activations at batch {spec.train.batch_size}: " in message
    assert "parameters" in message


def test_a_hostile_model_folder_is_refused_before_its_weights_are_read(tmp_path, limit_4g):
    folder = tmp_path / "m"
    folder.mkdir()
    data = compose_spec(preset="vae", sets=["encoder.hidden=[1000000000]"]).to_dict()
    (folder / "config.json").write_text(json.dumps(data))  # no model.safetensors: never reached
    with pytest.raises(BudgetError) as info:
        load_model(folder)
    assert "over the limit" in one_line(info.value)


# -- the limit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8G", 8 * 2**30),
        ("512M", 512 * 2**20),
        ("1.5GB", 3 * 2**29),
        ("2GiB", 2 * 2**30),
        ("100k", 102400),
        ("1048576", 2**20),
        (" 3 gb ", 3 * 2**30),
        ("1e9", 10**9),
        ("64B", 64),
        (4096, 4096),
    ],
)
def test_sizes_parse(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["abc", "", "-1G", "0", "G", "1.5XB", "1e400", "9" * 400, "8 G B"])
def test_junk_sizes_are_one_line_errors(text):
    with pytest.raises(BudgetError) as info:
        parse_size(text)
    assert "GENVAE_MAX_MEMORY=" in one_line(info.value)


def test_off_switches_the_limit_off(monkeypatch):
    assert parse_limit("off") is None and parse_limit("8G") == 8 * 2**30
    monkeypatch.setenv("GENVAE_MAX_MEMORY", "off")
    assert check_budget(compose_spec(preset="vae", sets=["encoder.hidden=[1000000000]"])) is None


def test_the_default_limit_is_half_the_available_memory(monkeypatch):
    monkeypatch.delenv("GENVAE_MAX_MEMORY", raising=False)
    half = available_memory() // 2
    assert 0 < memory_limit() and abs(memory_limit() - half) < 256 * 2**20  # free memory moves a little
    monkeypatch.setenv("GENVAE_MAX_MEMORY", "3G")
    assert memory_limit() == 3 * 2**30


def test_a_tiny_limit_refuses_a_small_model(monkeypatch):
    monkeypatch.setenv("GENVAE_MAX_MEMORY", "1M")
    with pytest.raises(BudgetError) as info:
        build_model(compose_spec(preset="cvae"))
    message = one_line(info.value)
    assert "over the limit of 1.0 MB (GENVAE_MAX_MEMORY)" in message
    monkeypatch.setenv("GENVAE_MAX_MEMORY", "1G")
    build_model(compose_spec(preset="cvae"))


def test_a_junk_limit_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GENVAE_MAX_MEMORY", "abc")
    with pytest.raises(BudgetError) as info:
        build_model(compose_spec(preset="vae"))
    message = one_line(info.value)
    assert "GENVAE_MAX_MEMORY='abc' is not a size" in message and "8G" in message


def test_the_command_line_limit(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from genvae.cli.main import cli

    monkeypatch.setenv("GENVAE_MAX_MEMORY", "8G")  # --max-memory sets it for the process: restored after
    result = CliRunner().invoke(cli, ["--max-memory", "1M", "build", "--preset", "vae", "-o", str(tmp_path / "m")])
    assert result.exit_code != 0
    assert "over the limit of 1.0 MB" in result.output
    assert not (tmp_path / "m" / "model.safetensors").exists()


# -- plugins that do not run on meta ---------------------------------------------------------------

PLUGIN = '''
import torch

from genvae.core.components import Loss
from genvae.core.hookspecs import hookimpl


class ValueReader(Loss):
    """Reads a value in its forward (a host sync): fine on real tensors, impossible on meta."""
    name = "value-reader"

    def forward(self, fwd, phase):
        scale = 1.0 if float(fwd.x_hat.abs().max()) < 10 else 0.5
        return {"value-reader": scale * fwd.x_hat.pow(2).mean()}


class ValueAtBuild(Loss):
    """Reads a value of a tensor it creates while being built."""
    name = "value-at-build"

    def __init__(self, options, ctx, weight=1.0):
        super().__init__(options, ctx, weight)
        self.register_buffer("scale", torch.ones(()))
        self.factor = float(self.scale)

    def forward(self, fwd, phase):
        return {"value-at-build": self.factor * fwd.x_hat.pow(2).mean()}


@hookimpl
def genvae_register_losses(register):
    register(ValueReader)
    register(ValueAtBuild)
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    core = [f"genvae.plugins.{n}" for n in ("fc", "conv", "normal", "mse", "kl")]
    with registry_with_module(folder, "genvae_test_budget_plugin", PLUGIN, core) as registry:
        yield registry


def small_spec(*losses: str) -> ModelSpec:
    return ModelSpec.from_dict(
        {
            "encoder": {"name": "fc", "options": {"hidden": [16]}},
            "transform": {"name": "fc", "options": {"latent_dim": 4}},
            "decoder": {"name": "fc", "options": {"hidden": [16]}},
            "losses": ["mse", "kl", *losses],
            "image_size": 16,
        }
    )


def test_a_forward_that_cannot_run_on_meta_falls_back_to_the_parameters(registry, limit_4g):
    spec = small_spec("value-reader")
    est = estimate(spec, registry)
    assert not est.measured and "meta" in est.note
    assert est.activation_bytes == spec.train.batch_size * 3 * 16 * 16 * 4  # the image batch
    model = build_model(spec, registry)  # the check passes on what it could size, the real build works
    assert est.parameters == sum(p.numel() for p in model.parameters())


def test_a_program_that_cannot_run_on_meta_is_sized_by_its_images(registry, limit_4g):
    from genvae.core.budget import FALLBACK_IMAGE_COPIES, inference_batch, inference_estimate

    spec = small_spec("value-reader")
    assert inference_estimate(spec, "reconstruct", registry=registry).measured  # the loss is not part of it
    est = inference_estimate(spec, "check", registry=registry)  # the dry run's losses are
    assert not est.measured and "meta" in est.note
    assert (est.fixed_bytes, est.per_image_bytes) == (0, FALLBACK_IMAGE_COPIES * 3 * 16 * 16 * 4)
    room = 4 * 2**30 - est.batch_bytes(0)
    assert inference_batch(spec, 10**6, what="check", registry=registry) == min(room // est.image_bytes, 1024)


def test_a_plugin_that_cannot_be_built_on_meta_is_named_with_the_way_out(registry, monkeypatch):
    monkeypatch.setenv("GENVAE_MAX_MEMORY", "4G")
    with pytest.raises(BuildError) as info:
        build_model(small_spec("value-at-build"), registry)
    message = one_line(info.value)
    assert "loss 'value-at-build'" in message and "GENVAE_MAX_MEMORY=off" in message
    monkeypatch.setenv("GENVAE_MAX_MEMORY", "off")
    build_model(small_spec("value-at-build"), registry)


# -- peak memory -------------------------------------------------------------------------------------

PEAK = r"""
import json, resource, sys
from genvae.core.budget import estimate
from genvae.core.compose import compose_spec
from genvae.core.errors import GenvaeError
from genvae.core.model import build_model

cases = json.loads(sys.argv[1])
specs = [compose_spec(preset=p, sets=s) for p, s in cases]
estimate(compose_spec(preset="vae"))  # one-off imports of the meta kernels, before the baseline
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
base = rss()
refused = 0
for spec in specs:
    try:
        build_model(spec)
    except GenvaeError:
        refused += 1
for spec in specs:  # the estimate alone, with no limit to stop early, sizes each one in full on meta
    try:
        estimate(spec)
    except GenvaeError:
        pass
print(json.dumps({"base": base, "peak": rss(), "refused": refused}))
"""


@pytest.mark.slow
def test_hostile_builds_allocate_nothing_large():
    cases = HOSTILE + OVERFLOWING
    env = {**os.environ, "GENVAE_MAX_MEMORY": "4G", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PEAK, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["refused"] == len(cases)
    growth = result["peak"] - result["base"]
    assert growth < 200 * 2**20, f"peak grew by {format_size(growth)} over {format_size(result['base'])}"
    assert result["peak"] < 1.5 * 2**30, format_size(result["peak"])
