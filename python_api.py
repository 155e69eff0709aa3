"""genvae from Python: build, load, train, sample, reconstruct and evaluate models in a script or a notebook.

The names here are re-exported at the top of the package (``genvae.build``, ``genvae.train``, ...; the user
guide is docs/python-api.md). Each call runs the same core service as the command of the same name, so a run
started here and one started with ``genvae train`` on the same model and seed write the same
``model.safetensors``, bit for bit; errors are the same one-line :class:`~genvae.core.errors.GenvaeError`.

Images cross this API as float tensors in [0, 1], shaped (N, C, H, W), on the CPU (the model's own range,
[-1, 1], stays inside); uint8 tensors (0..255) are accepted wherever images are given.

One module, over the usual 500 lines: it is the whole user-facing surface (its docstrings are the reference of
docs/python-api.md), and each part is a thin layer over a core service: models, training, data, evaluation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from genvae import _PYTHON_API
from genvae.core.errors import GenvaeError, OneLineInIPython
from genvae.display import Figure, ImageGrid, Report, TrainProgress, engine_progress, html_table

if TYPE_CHECKING:
    from genvae.core.data import ImageData
    from genvae.core.model import GenerativeModel
    from genvae.core.spec import ModelSpec

#: what ``data=`` accepts: a folder or a dataset name (as ``--data``), None for the built-in shapes, an image tensor
#: (uint8, or float in [0, 1]), a map-style ``torch.utils.data.Dataset``, or images from :func:`datasets`
Data = Any


class TrainingInterrupted(OneLineInIPython, KeyboardInterrupt):
    """Ctrl-C (a notebook's interrupt) or SIGTERM stopped :func:`train` at a step boundary, after a consistent
    checkpoint was written: ``train(..., resume=True)`` continues exactly where it stopped. A KeyboardInterrupt,
    so that code which stops on Ctrl-C stops on it; a notebook shows it as its one line."""

    def __init__(self, message: str, step: int, folder: Path):
        super().__init__(message)
        self.step, self.folder = step, folder

    def __str__(self) -> str:
        return str(self.args[0])


def _call_text(name: str, *args: Any, **kwargs: Any) -> dict:
    """A Python call as a record for a model folder's ``commands.jsonl`` (what ``genvae report`` lists)."""

    def short(value: Any) -> str:
        if isinstance(value, Model):
            return f"<model {value.folder}>" if value.folder else "<model>"
        if isinstance(value, torch.Tensor):
            return f"<tensor {tuple(value.shape)}>"
        text = repr(str(value) if isinstance(value, Path) else value)
        return text if len(text) <= 80 else f"<{type(value).__name__}>"

    parts = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items() if v not in (None, (), [], {})]
    return {"command": f"python: genvae.{name}({', '.join(parts)})", "time": round(time.time(), 3)}


# -- models ---------------------------------------------------------------------------------------


class Model:
    """A model in Python: the engine's :class:`~genvae.core.model.GenerativeModel` (``module``, a torch module) and
    the model folder it lives in (``folder``; None until it is built into one or trained).

    Images go in and come out as float tensors in [0, 1] shaped (N, C, H, W) on the CPU; uint8 images are
    accepted too. Every call runs in eval mode without gradients, in chunks that fit genvae's memory limit."""

    def __init__(self, module: GenerativeModel, folder: str | Path | None = None):
        self.module = module
        self.folder = Path(folder) if folder is not None else None
        self.origin: dict | None = None  # the genvae.build call that made it, for commands.jsonl once it is saved

    # -- what it is
    @property
    def spec(self) -> ModelSpec:
        """The model's spec (what ``config.json`` holds): components, options, image size, training settings."""
        return self.module.spec

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of its images."""
        return tuple(self.module.spec.image_shape)  # type: ignore[return-value]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one image's latent: what :meth:`encode` returns per image and :meth:`decode` takes."""
        return tuple(self.module.layout.shape)

    @property
    def device(self) -> torch.device:
        """The device its weights are on (``cpu`` unless moved: :meth:`to`)."""
        return self.module.device

    def to(self, device: str | torch.device) -> Model:
        """Move the model to ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), to run in the precision its
        ``train.amp`` gives there; returns itself."""
        from genvae.core.precision import run_precision
        from genvae.core.training.run import resolve_device

        dev = resolve_device(str(device))
        self.module.to(dev)
        self.module.precision = run_precision("config", self.module.spec.train.amp, dev)
        return self

    def parameters_count(self) -> int:
        """The number of parameters, every component's (losses' networks included)."""
        return sum(p.numel() for p in self.module.parameters())

    def __repr__(self) -> str:
        spec = self.spec
        parts = [spec.preset or spec.encoder.name, f"{'x'.join(map(str, self.image_shape))}"]
        parts.append(f"latent {list(self.latent_shape)}")
        parts.append(f"{self.parameters_count():,} parameters")
        where = f" in {self.folder}" if self.folder else " (not saved)"
        return f"<genvae Model {' | '.join(parts)}{where}>"

    # -- images in, images out
    def _images(self, x: torch.Tensor, what: str) -> torch.Tensor:
        """x as float in [-1, 1] on the model's device, (N, C, H, W) of the model's shape; a one-line error else."""
        if not isinstance(x, torch.Tensor):
            raise GenvaeError(f"{what}: expected an image tensor, got {type(x).__name__}")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise GenvaeError(
                f"{what}: expected images shaped (N, {', '.join(map(str, self.image_shape))}) for this model, got "
                f"{tuple(x.shape)} (genvae.datasets(..., model=model) fits data to a model)"
            )
        if x.dtype == torch.uint8:
            return x.to(self.device).float() / 127.5 - 1.0
        if not x.is_floating_point():
            raise GenvaeError(f"{what}: expected float images in [0, 1] or uint8, got {x.dtype}")
        low, high = float(x.min()), float(x.max())
        if not (low >= 0.0 and high <= 1.0):
            raise GenvaeError(f"{what}: float images are expected in [0, 1], these span {low:.3g}..{high:.3g}")
        return x.detach().to(self.device, torch.float32) * 2.0 - 1.0

    def sample(self, n: int = 64, *, seed: int = 0) -> torch.Tensor:
        """``n`` images drawn from the prior: float (n, C, H, W) in [0, 1] on the CPU. The same ``seed`` gives the
        same images; the caller's random streams are left as they were."""
        from genvae.core.inference import draw_samples
        from genvae.core.training.run import seed_everything

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise GenvaeError(f"sample: n must be a positive integer, got {n!r}")
        self.module.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed_everything(seed)
            images = draw_samples(self.module, n, self.device, dtype=torch.float32, command="sample")
        return images * 0.5 + 0.5

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions of images ``x`` (float in [0, 1] or uint8, (N, C, H, W) or one (C, H, W)) through the
        posterior mean: float (N, C, H, W) in [0, 1] on the CPU."""
        from genvae.core.inference import reconstruct_images

        self.module.eval()
        x = self._images(x, "reconstruct")
        return reconstruct_images(self.module, x, self.device) * 0.5 + 0.5

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """The posterior mean of images ``x`` (float in [0, 1] or uint8): float (N, *latent_shape) on the CPU (with a
        flow, the flow of the base mean). ``decode(encode(x))`` is ``reconstruct(x)``."""
        self.module.eval()
        x = self._images(x, "encode")
        return torch.cat([self.module.encode(part).mean.float().cpu() for part in x.split(batch_size)])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The images of latents ``z`` (N, *latent_shape) (from :meth:`encode`, or drawn): float (N, C, H, W) in
        [0, 1] on the CPU."""
        from genvae.core.inference import generate_images

        if not isinstance(z, torch.Tensor) or tuple(z.shape[1:]) != self.latent_shape:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise GenvaeError(
                f"decode: expected latents shaped (N, {', '.join(map(str, self.latent_shape))}), got {got}"
            )
        self.module.eval()
        return generate_images(self.module, z.to(self.device, torch.float32), dtype=torch.float32) * 0.5 + 0.5

    # -- showing it
    def show_samples(self, n: int = 64, *, seed: int = 0, nrow: int | None = None) -> ImageGrid:
        """A grid of ``n`` samples, displayed inline in a notebook."""
        return ImageGrid(self.sample(n, seed=seed), nrow, f"{n} samples")

    def show_reconstructions(self, data: Data = None, n: int = 32, *, split: str = "test") -> ImageGrid:
        """Rows of 8 originals from ``data``, each above its reconstructions (as ``genvae reconstruct``)."""
        from genvae.core.report import paired_rows

        images = datasets(data, model=self, split=split).images[:n]
        return ImageGrid(paired_rows(images.float() / 255.0, self.reconstruct(images)), 8, "reconstructions")

    def _need_folder(self, what: str) -> Path:
        if self.folder is None:
            raise GenvaeError(f"{what} reads the model folder: this model has none yet (genvae.train it, or .save it)")
        return self.folder

    def history(self) -> list[dict[str, Any]]:
        """The metrics lines of its training (``metrics.jsonl``): one dict per logged step."""
        from genvae.core.report import read_metrics

        return read_metrics(self._need_folder("history"))

    def curves(self, terms: Sequence[str] | None = None, *, x: str = "step") -> Figure:
        """The loss curves of its training (every logged term, or ``terms``), over steps or wall-clock minutes."""
        from genvae.core.report import curves_png, is_health, terms_of

        records = self.history()
        names = list(terms) if terms is not None else [t for t in terms_of(records) if not is_health(t)]
        png = curves_png({self.folder.name if self.folder else "run": records}, names, x) if records else None
        if png is None:
            raise GenvaeError(f"{self.folder} has no logged metrics yet (train it first)")
        return Figure(png, "loss curves")

    def report(self, data: Data = None) -> Report:
        """Its report page (as ``genvae report``), displayed inline; ``.save(path)`` writes it."""
        return report(self, data=data)

    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """Write the model into a new model folder (``config.json`` + ``model.safetensors``), as ``genvae build -o``
        does; ``force`` replaces a model already there. The model lives in that folder from then on."""
        from genvae.core.checkpoint import create_model_folder

        create_model_folder(
            self.module,
            folder,
            force=force,
            command=self.origin or _call_text("Model.save", folder, force=force or None),
            hint="choose another folder or pass force=True",
        )
        self.folder = Path(folder)
        return self.folder


def _sets(options: Mapping[str, Any], sets: Iterable[str]) -> list[str]:
    """Keyword options (``encoder__width=32``, ``loss__kl__weight=0.5``, ``train__lr=3e-4``) and ``--set``-style
    strings, as the strings :func:`~genvae.core.compose.apply_sets` reads."""
    out = [str(s) for s in sets]
    for key, value in options.items():
        out.append(f"{key.replace('__', '.')}={json.dumps(value) if not isinstance(value, str) else value}")
    return out


def build(
    preset: str | None = None,
    *,
    encoder: str | None = None,
    decoder: str | None = None,
    transform: str | None = None,
    prior: str | None = None,
    loss: str | Sequence[str] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    sets: Sequence[str] = (),
    folder: str | Path | None = None,
    force: bool = False,
    **options: Any,
) -> Model:
    """A freshly initialised model, composed as ``genvae build`` composes it: a ``preset``, or components
    (``encoder`` alone brings its counterpart decoder and latent transform), ``loss`` a list of ``NAME`` or
    ``NAME:WEIGHT`` (mse and kl are added when no reconstruction or divergence loss is named), and options as
    keywords with ``__`` for the dot of ``--set`` (``encoder__width=32``, ``loss__kl__weight=0.5``,
    ``train__seed=3``) or as ``sets=["encoder.width=32"]``. The weights are drawn from ``train.seed``, so the same
    choices give the same model as the command.

    With ``folder`` the model is written there (as ``genvae build -o FOLDER``; ``force`` replaces a model already
    there); otherwise it lives in memory until :func:`train` or :meth:`Model.save` gives it a folder."""
    from genvae.core.compose import compose_spec
    from genvae.core.model import new_model

    if isinstance(loss, list | tuple):
        loss = ",".join(str(x) for x in loss)
    spec = compose_spec(
        preset=preset,
        encoder=encoder,
        transform=transform,
        decoder=decoder,
        prior=prior,
        losses=loss,
        image_size=image_size,
        channels=channels,
        sets=_sets(options, sets),
    )
    model = Model(new_model(spec)).to("cpu")  # in the precision its train.amp gives, as genvae.load would
    call: dict[str, Any] = dict(encoder=encoder, decoder=decoder, transform=transform, prior=prior, loss=loss)
    call |= dict(image_size=image_size, channels=channels, sets=tuple(sets), **options)
    model.origin = _call_text("build", *([preset] if preset else []), **call, folder=folder, force=force or None)
    if folder is not None:
        from genvae.core.checkpoint import create_model_folder

        create_model_folder(
            model.module, folder, force=force, command=model.origin, hint="choose another folder or pass force=True"
        )
        model.folder = Path(folder)
    return model


def load(folder: str | Path, *, device: str = "cpu", amp: str = "config") -> Model:
    """The model of a model folder (``config.json`` + ``model.safetensors``: the trained weights once trained), on
    ``device``, its networks in the precision of its ``train.amp`` (``amp``: auto, bf16, fp16, off). Nothing is
    unpickled."""
    from genvae.core.checkpoint import load_model
    from genvae.core.training.run import resolve_device

    return Model(load_model(folder, device=resolve_device(device), amp=amp), folder)


# -- training -------------------------------------------------------------------------------------


@attrs.frozen
class TrainResult:
    """How :func:`train` ended: the model folder, the step the run started from and reached, its last metrics line
    (``metrics``: the loss terms, ``step``, ``epoch``, ``lr``, ...) and the trained :class:`Model`."""

    folder: Path
    start: int
    step: int
    metrics: dict[str, Any]
    model: Model

    def _repr_html_(self) -> str:
        from genvae.core.training.metrics import is_term

        rows = [(k, v) for k, v in self.metrics.items() if is_term(k)]
        return html_table(rows, ("term", "value"), f"{self.folder}: steps {self.start} -> {self.step}")


def _as_callback(callback: Any) -> tuple[Callable[[Any], None] | None, Callable[[dict], None] | None]:
    """(on_start, on_log) of a callback: a function of each metrics line, or an object with ``on_log(record)``
    and/or ``on_start(run)`` methods."""
    if hasattr(callback, "on_log") or hasattr(callback, "on_start"):
        return getattr(callback, "on_start", None), getattr(callback, "on_log", None)
    if callable(callback):
        return None, callback
    raise GenvaeError(f"callbacks: {type(callback).__name__} is neither a function nor has on_log/on_start")


def train(
    model: Model | str | Path,
    *,
    data: Data = None,
    steps: int | None = None,
    epochs: int | None = None,
    folder: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    resume: bool = False,
    restart: bool = False,
    seed: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    max_time: float | None = None,
    log_every: int | None = None,
    checkpoint_every: int | None = None,
    loggers: Sequence[str] | None = None,
    sets: Sequence[str] = (),
    device: str = "auto",
    data_root: str | None = None,
    download: bool = False,
    progress: bool | str = True,
    report: bool = False,
) -> TrainResult:
    """Train a model, as ``genvae train`` does, through the same core service (``train_run``): the folder locked
    while it trains, checkpoints, ``metrics.jsonl``, a sample grid per epoch, the loggers, exact ``resume``.

    ``model``: a :class:`Model` (built in memory: written into ``folder`` first; one with a folder: trained there)
    or a model folder. ``data``: a folder, a dataset name, an image tensor, a ``torch.utils.data.Dataset``, or
    None for the built-in shapes. ``steps`` stops at that step in all (``--max-steps``), ``epochs`` after that many
    passes; the other settings are ``genvae train``'s options, and ``sets`` its ``--set train.OPTION=VALUE``.
    ``callbacks``: functions called with each metrics line (a dict), or objects with ``on_log(record)`` and/or
    ``on_start(run)``. ``progress``: True (a bar in a notebook or terminal, lines elsewhere), False, or one of
    ``"notebook"``, ``"terminal"``, ``"text"``. ``report`` writes the folder's ``report.html`` at the end
    (``--report``).

    Returns a :class:`TrainResult`; ``model`` (when a :class:`Model`) holds the trained weights afterwards.
    Ctrl-C (a notebook's interrupt) stops at the next step with a checkpoint and raises
    :class:`TrainingInterrupted`; ``train(..., resume=True)`` continues it. Anything wrong is a one-line
    :class:`~genvae.core.errors.GenvaeError`, raised before training writes anything (an in-memory model is
    written into its new folder first, as ``genvae build`` would)."""
    from genvae.core.checkpoint import CONFIG, create_model_folder, latest_checkpoint, load_model
    from genvae.core.report import REPORT
    from genvae.core.training import TrainingStopped, train_run
    from genvae.core.training.run import resolve_device

    wrapper = model if isinstance(model, Model) else None
    if wrapper is None:
        if not isinstance(model, str | Path):
            raise GenvaeError(f"train: expected a genvae Model or a model folder, got {type(model).__name__}")
        target = Path(folder) if folder is not None else Path(model)
        if folder is not None and Path(folder) != Path(model):
            raise GenvaeError("train: give the model folder once (as the model, or as folder=)")
    else:
        target = Path(folder) if folder is not None else wrapper.folder  # type: ignore[assignment]
        if target is None:
            raise GenvaeError("train: this model has no folder yet; pass folder=PATH (a new folder to train it in)")
    overrides: dict[str, Any] = dict(  # None: not given, the model's setting stays
        epochs=epochs,
        max_steps=steps,
        max_time=max_time,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
    )
    if loggers is not None:
        overrides["loggers"] = tuple(loggers)
    dev = resolve_device(device)  # checked before a folder is written
    last = latest_checkpoint(target) if (target / CONFIG).exists() else None
    if last is not None and not (resume or restart):  # train_run says so too, in the command line's words
        raise GenvaeError(
            f"{target} has a checkpoint at {last.name}; pass resume=True to continue it or restart=True to discard "
            "checkpoints and metrics"
        )
    if wrapper is not None and (wrapper.folder is None or target != wrapper.folder):
        if (target / CONFIG).exists() and not (resume or restart):
            raise GenvaeError(
                f"{target} already holds a model; train it with genvae.train({str(target)!r}) or choose another folder"
            )
        if not (target / CONFIG).exists():
            create_model_folder(wrapper.module, target, command=wrapper.origin or _call_text("Model.save", target))
            wrapper.folder = target
    starts, logs = zip(*(_as_callback(c) for c in callbacks), strict=True) if callbacks else ((), ())
    display = TrainProgress(progress)

    def on_start(run: Any) -> None:
        display.start(run)
        for hook in starts:
            if hook is not None:
                hook(run)

    def on_log(record: dict) -> None:
        display.log(record)
        for hook in logs:
            if hook is not None:
                hook(record)

    call = dict(data=data, steps=steps, resume=resume or None, restart=restart or None, **overrides, sets=tuple(sets))
    call.pop("max_steps", None)
    try:
        with engine_progress(progress):
            result = train_run(
                target,
                data=data,
                data_root=data_root,
                download=download,
                overrides=overrides,
                sets=sets,
                device=device,
                resume=resume,
                restart=restart,
                command=_call_text("train", target, **call, report=report or None),
                extra_outputs=(REPORT,) if report else (),
                on_start=on_start,
                on_log=on_log,
            )
    except TrainingStopped as stopped:
        if wrapper is not None:  # the checkpoint's weights, as they are in the folder
            wrapper.module = load_model(target, device=dev, amp="config")
        message = str(stopped).replace("(continue with --resume)", "(continue with genvae.train(..., resume=True))")
        raise TrainingInterrupted(message, stopped.step, target) from None
    finally:
        display.close()
    if report and result.is_main and result.step > result.start:  # as genvae train --report
        from genvae.core.folder import ModelFolder
        from genvae.core.report import build_report

        with engine_progress(progress):
            page = build_report([target], data=data, data_root=data_root, download=download)
        ModelFolder(target).write_text(REPORT, page)
    trained = load_model(target, device=dev, amp="config")
    if wrapper is not None:
        wrapper.module, wrapper.folder = trained, target
    else:
        wrapper = Model(trained, target)
    return TrainResult(target, result.start, result.step, dict(result.metrics), wrapper)


# -- data -----------------------------------------------------------------------------------------


def datasets(
    data: Data = None,
    *,
    model: Model | None = None,
    image_size: int = 32,
    channels: int = 3,
    split: str = "train",
    root: str | None = None,
    download: bool = False,
) -> ImageData:
    """The images of a data source, as ``--data`` reads them: a folder, a dataset name (``genvae.dataset_names()``
    lists them), None for the built-in shapes, or images in memory (a tensor, a ``torch.utils.data.Dataset``).
    Returned as an :class:`~genvae.core.data.ImageData`: ``.images`` uint8 (N, C, H, W), ``.source``, ``.skipped``;
    fitted to ``model``'s size and channels when given, else to ``image_size`` and ``channels``. It is accepted
    wherever ``data=`` is, and ``genvae.show(it)`` displays its first images."""
    from genvae.core.data import load_data

    if model is not None:
        image_size, channels = model.spec.image_size, model.spec.channels
    with engine_progress(True):
        return load_data(data, image_size=image_size, channels=channels, split=split, root=root, download=download)


def dataset_names() -> list[str]:
    """The names ``data=`` (and ``--data``) accepts besides folders: every installed dataset plugin's."""
    from genvae.core.registry import get_registry

    return list(get_registry().names("dataset"))


# -- evaluation -----------------------------------------------------------------------------------


@attrs.frozen
class ModelScores:
    """One model's scores: ``metrics`` maps each metric to its named values (``{"rmse": {"rmse": 9.1, "std": 2.0}}``);
    ``samples`` is how many samples the sample metrics drew (0 when none did)."""

    model: str
    metrics: dict[str, dict[str, float]]
    samples: int


@attrs.frozen
class Evaluation:
    """What :func:`evaluate` measured (the JSON of ``genvae evaluate``, typed): the data (``data``, ``split``,
    ``images``), the ``seed`` of the samples, the feature network's label, each metric's label, and one
    :class:`ModelScores` per model in the order given. ``to_pandas()`` is the table as a DataFrame, ``to_dict()``
    the JSON report; in a notebook it displays as a table."""

    data: str
    split: str
    images: int
    seed: int
    feature_network: str | None
    labels: dict[str, str]
    scores: tuple[ModelScores, ...]
    report: dict[str, Any] = attrs.field(repr=False)

    def __getitem__(self, model: str) -> dict[str, dict[str, float]]:
        """One model's metrics by its label."""
        for s in self.scores:
            if s.model == model:
                return s.metrics
        raise KeyError(f"no model {model!r}; models: {', '.join(s.model for s in self.scores)}")

    def rows(self) -> list[tuple[str, str, list[float]]]:
        """(metric, value name, one value per model), the rows of the table ``genvae evaluate`` prints."""
        out = []
        first = self.scores[0].metrics
        for name in first:
            for key in first[name]:
                out.append((name, key, [float(s.metrics[name][key]) for s in self.scores]))
        return out

    def _row_label(self, name: str, key: str) -> str:
        return self.labels.get(name, name) if key == name else f"{self.labels.get(name, name)}: {key}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON report, as ``genvae evaluate -o`` writes it."""
        return json.loads(json.dumps(self.report))

    def to_pandas(self) -> Any:
        """The table as a ``pandas.DataFrame``: one row per metric value, one column per model (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise GenvaeError("to_pandas needs pandas: pip install pandas (or use .rows() / .to_dict())") from None
        rows = self.rows()
        return pd.DataFrame(
            [values for _, _, values in rows],
            index=[self._row_label(name, key) for name, key, _ in rows],
            columns=[s.model for s in self.scores],
        )

    def _repr_html_(self) -> str:
        rows = [(self._row_label(name, key), *values) for name, key, values in self.rows()]
        caption = f"{self.data}, {self.images} images" + (
            f"; features: {self.feature_network}" if self.feature_network else ""
        )
        return html_table(rows, ("metric", *(s.model for s in self.scores)), caption)

    def __str__(self) -> str:
        lines = [f"{self.data}, {self.images} images"]
        for name, key, values in self.rows():
            lines.append(f"{self._row_label(name, key)}: " + ", ".join(f"{v:.4g}" for v in values))
        return "\n".join(lines)


def _labelled(models: Any) -> list[tuple[str, Any]]:
    """(label, folder or engine model) pairs: a Model or folder, a list of them, or a dict label -> model."""
    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        seq = [models] if isinstance(models, Model | str | Path) else list(models)
        items = []
        for i, m in enumerate(seq, 1):
            label = (
                str(m.folder) if isinstance(m, Model) and m.folder else str(m) if isinstance(m, str | Path) else None
            )
            items.append((label or f"model {i}", m))
    out: list[tuple[str, Any]] = []
    for label, m in items:
        if isinstance(m, Model):
            out.append((str(label), m.module))
        elif isinstance(m, str | Path):
            out.append((str(label), str(m)))
        else:
            raise GenvaeError(f"evaluate: {type(m).__name__} is not a genvae Model or a model folder")
    if not out:
        raise GenvaeError("evaluate: give at least one model")
    return out


def evaluate(
    models: Model | str | Path | Sequence[Model | str | Path] | Mapping[str, Model | str | Path],
    *,
    data: Data = None,
    metrics: Sequence[str] = ("rmse",),
    classifier: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    samples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "auto",
    data_root: str | None = None,
    download: bool = False,
) -> Evaluation:
    """Score one model or several side by side on the same images, as ``genvae evaluate`` does (the same core
    driver, the same numbers for the same folders and seed): reconstruction RMSE, and with a feature network
    (``classifier``: a folder from ``genvae train-classifier``) sample quality (fid, kid, is, pr, ...).

    ``models``: a :class:`Model`, a model folder, a list of them (labelled by their folders), or a dict
    ``{label: model}``. Returns an :class:`Evaluation` (``.to_pandas()`` for a DataFrame)."""
    from genvae.core.evaluation import evaluate_models

    names = [metrics] if isinstance(metrics, str) else list(metrics)
    with engine_progress(True):
        report = evaluate_models(
            _labelled(models),
            names,
            data=data,
            data_root=data_root,
            download=download,
            classifier=classifier,
            split=split,
            limit=limit,
            n_samples=samples,
            batch_size=batch_size,
            seed=seed,
            device=device,
        )
    return Evaluation(
        data=str(report["data"]),
        split=report["split"],
        images=report["images"],
        seed=report["seed"],
        feature_network=report["feature_network"],
        labels=dict(report["labels"]),
        scores=tuple(ModelScores(r["model"], r["metrics"], r["samples"]) for r in report["models"]),
        report=report,
    )


# -- reports --------------------------------------------------------------------------------------


def report(*models: Model | str | Path, data: Data = None) -> Report:
    """The report page of one or several trained models (as ``genvae report DIR [DIR2 ...]``): loss curves
    (overlaid), training health, every epoch's samples, reconstructions of ``data``, evaluation scores, commands
    and config; displayed inline in a notebook, ``.save(path)`` writes it."""
    from genvae.core.report import build_report

    folders: list[Path] = []
    for m in models:
        if isinstance(m, Model):
            folders.append(m._need_folder("report"))
        elif isinstance(m, str | Path):
            folders.append(Path(m))
        else:
            raise GenvaeError(f"report: {type(m).__name__} is not a genvae Model or a model folder")
    if not folders:
        raise GenvaeError("report: give at least one model")
    return Report(build_report(folders, data=data), folders)


__all__ = ["Data", *_PYTHON_API]  # the names genvae itself exports lazily from here, and the Data alias
