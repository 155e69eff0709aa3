"""What a plugin's command needs: the same options, loaders and consoles the built-in commands use.

These are public through :mod:`genvae.api` (a plugin imports them from there); they live in the command line
package because they are click options and rich consoles, which the engine (``genvae.core``) never imports.

A plugin adds a command through the ``genvae_register_commands`` hook and builds it from these::

    from genvae.api import console, data_options, device_option, hookimpl, load_for_inference, seed_option

    @hookimpl
    def genvae_register_commands(cli):
        @cli.command("my-report")
        @click.argument("folder", type=click.Path())
        @data_options
        @seed_option
        @device_option
        def my_report(folder, data, data_root, download, seed, device):
            model, dev = load_for_inference(folder, device, seed)
            ...

Raise :class:`~genvae.core.errors.GenvaeError` for anything the user got wrong: genvae prints it as one
``Error: ...`` line and exits with status 1.
"""

from __future__ import annotations

import math

import click
from rich.console import Console

from genvae.core.errors import GenvaeError, shorten
from genvae.core.inference import SAMPLE_BATCH as _SAMPLE_BATCH
from genvae.core.options import MAX_SEED
from genvae.core.training.metrics import terms_text as terms_text

__all__ = [
    "COUNT",
    "SAMPLE_BATCH",
    "SEED",
    "FiniteFloat",
    "GenvaeError",
    "console",
    "data_options",
    "device_option",
    "err_console",
    "load_command_data",
    "load_for_inference",
    "load_image",
    "load_mask",
    "registry",
    "require_single_process",
    "seed_option",
    "terms_text",
]

#: standard output (tables, progress) and standard error (warnings); ``genvae`` itself prints through these
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

#: samples are drawn in batches of this many (generated in chunks that fit the memory limit: genvae.core.inference)
SAMPLE_BATCH = _SAMPLE_BATCH
#: a count option: an integer >= 1
COUNT = click.IntRange(min=1)


class FiniteFloat(click.ParamType):
    """A finite number, optionally > 0 (``--lr nan``, ``inf`` and ``0`` are refused)."""

    name = "number"

    def __init__(self, positive: bool = False):
        self.positive = positive

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or (self.positive and number <= 0):
            self.fail(f"{value!r} is not a finite number{' > 0' if self.positive else ''}", param, ctx)
        return number


class SeedType(click.ParamType):
    """A seed: an integer in 0..2**64-1 (torch's generators take 64 bits; a larger seed would equal a smaller one)."""

    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(value)
            except (TypeError, ValueError):
                self.fail(f"{shorten(value)} is not an integer; a seed is an integer in 0..2**64-1", param, ctx)
        if not 0 <= number <= MAX_SEED:
            self.fail(
                f"{shorten(number)} is not a seed; a seed is an integer in 0..2**64-1 (0..{MAX_SEED})", param, ctx
            )
        return number


#: a ``--seed`` option's type: an integer in 0..2**64-1
SEED = SeedType()


def data_options(fn):
    """``--data``, ``--data-root`` and ``--download``: the command receives ``data, data_root, download``."""
    fn = click.option("--download", is_flag=True, help="Allow a torchvision dataset to download (needs network).")(fn)
    fn = click.option("--data-root", type=click.Path(), help="Where a named dataset's files are.")(fn)
    fn = click.option("--data", help="A folder of images or a dataset name (default: the built-in 'shapes').")(fn)
    return fn


def seed_option(fn):
    """``--seed`` (default 0): the command receives ``seed``."""
    return click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of every random stream.")(fn)


def device_option(fn):
    """``--device`` (auto, cpu, cuda or cuda:N): the command receives ``device``."""
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(fn)


def registry():
    """The registry of installed components (built-ins and entry-point plugins), loaded once per process."""
    from genvae.core.registry import get_registry

    return get_registry()


def load_for_inference(folder, device: str = "auto", seed: int = 0, amp: str = "config"):
    """(model in eval mode, torch device) from a model folder, with every random stream seeded; its networks run
    in the precision of its ``train.amp`` (``amp``: another mode, see genvae.core.checkpoint.load_model)."""
    from genvae.core.checkpoint import load_model
    from genvae.core.training.run import resolve_device, seed_everything

    dev = resolve_device(device)
    seed_everything(seed)
    model = load_model(folder, device=dev, registry=registry(), amp=amp)
    model.eval()
    return model, dev


def load_image(path, model):
    """One image file as a (1, C, H, W) tensor in [-1, 1], fitted to the model's image size and channels."""
    from genvae.core.decode import read_image, to_model_range

    pixels = read_image(path, model.spec.image_size, model.spec.channels)
    return to_model_range(pixels.unsqueeze(0)).to(model.device)


def load_mask(path, size: int):
    """A black/white image file as a (1, 1, size, size) float mask: 1 where it is white (above mid-grey), 0 elsewhere;
    an unreadable file is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    from genvae.core.decode import fit_image

    try:
        with Image.open(path) as img:
            img.load()
            pixels = fit_image(img, size, 1)
    except (OSError, UnidentifiedImageError) as exc:
        raise GenvaeError(f"cannot read mask {path}: {exc}") from None
    return (pixels.float() / 255.0 > 0.5).float().unsqueeze(0)


def load_command_data(model, data, data_root=None, download: bool = False, split: str = "train"):
    """The images of ``--data`` (as :func:`data_options` gives them) at the model's size and channels, uint8."""
    from genvae.core.data import load_data

    spec = model.spec
    return load_data(
        data,
        image_size=spec.image_size,
        channels=spec.channels,
        split=split,
        root=data_root,
        download=download,
        registry=registry(),
    )


def require_single_process(command: str) -> None:
    """Refuse to run ``command`` under a torchrun launch of several processes (each would write the same files).

    For commands that train outside :class:`~genvae.core.Trainer`'s own data-parallel support."""
    from genvae.core.distributed import launched_world_size

    world = launched_world_size()
    if world > 1:
        raise GenvaeError(
            f"{command} runs in one process, not under torchrun ({world} processes); launch it with "
            "plain python, or train with genvae train, which supports torchrun"
        )
