"""``classifier``: a small image classifier trained offline, the feature network of genvae's sample-quality scores.

No Inception or ImageNet weights can be downloaded where genvae runs, so, as the crVAE paper scored samples in a
VGG11 fine-tuned on its own data, genvae trains a classifier on a labelled dataset and computes FID, KID, the
Inception-Score-style score and precision/recall in its feature space:

    genvae train-classifier --data fashion-mnist -o clf
    genvae evaluate MODEL --data fashion-mnist --metrics fid,kid,is,pr --classifier clf

The network: three blocks of (conv3x3-BN-ReLU) x 2 + 2x2 max-pool, channels width, 2 width, 4 width; global average
pooling; Linear -> ReLU to ``features`` values (the feature space); Linear to the class logits. Saved as a folder
like a model's: ``config.json`` (``"feature_network": "genvae-classifier"``, classes, sizes, the data it saw and its
test accuracy) + ``model.safetensors``, written atomically. Scores in it are labelled "<data> classifier features".

The ``inception`` feature network reads torchvision's Inception-v3 ImageNet weights from a local ``.safetensors``
file where one exists (its 2048 pool features, 1000 logits), labelled as such; genvae never downloads it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genvae.api import FeatureNetworkLoader, GenvaeError, RegisterNamed, hookimpl

FEATURE_NETWORK = "genvae-classifier"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


class Classifier(nn.Module):
    """Conv classifier for (channels, size, size) images in [-1, 1]: features (B, F) and logits (B, K)."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        classes: int,
        width: int = 32,
        features: int = 128,
        label: str = "classifier features",
    ) -> None:
        super().__init__()
        if image_size % 8:
            raise GenvaeError(f"the classifier needs an image size divisible by 8, got {image_size}")
        blocks: list[nn.Module] = []
        prev = channels
        for w in (width, 2 * width, 4 * width):
            blocks += [
                nn.Conv2d(prev, w, 3, 1, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, 1, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev = w
        self.trunk = nn.Sequential(*blocks)
        self.embed = nn.Linear(prev, features)
        self.head = nn.Linear(features, classes)
        self.label = label
        self.image_shape = (channels, image_size, image_size)
        self.num_features = features

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.embed(self.trunk(x).mean((2, 3))))

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)


def save_classifier(net: Classifier, folder: Path, config: dict) -> None:
    """``config.json`` + ``model.safetensors`` into ``folder``, atomically, recorded as genvae's files."""
    from genvae.api import ModelFolder, json_text, tensors_writer

    folder.mkdir(parents=True, exist_ok=True)
    mf = ModelFolder(folder)
    mf.check_outputs([CONFIG, WEIGHTS])
    mf.write_text(CONFIG, json_text(config))
    mf.write(WEIGHTS, tensors_writer(net.state_dict()))


def load_classifier(folder: str | Path) -> Classifier:
    """A classifier folder written by ``genvae train-classifier``; never unpickles anything."""
    from genvae.api import read_json, read_tensors

    folder = Path(folder)
    config = read_json(folder / CONFIG)
    if not isinstance(config, dict) or config.get("feature_network") != FEATURE_NETWORK:
        raise GenvaeError(
            f'{folder} is not a genvae classifier folder (config.json has no "feature_network": "{FEATURE_NETWORK}")'
        )
    try:
        net = Classifier(
            int(config["channels"]),
            int(config["image_size"]),
            len(config["classes"]),
            int(config["width"]),
            int(config["features"]),
            f"{config['data_name']} classifier features",
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GenvaeError(f"{folder / CONFIG} is incomplete ({type(exc).__name__}: {exc})") from None
    try:
        net.load_state_dict(read_tensors(folder / WEIGHTS))
    except RuntimeError as exc:
        raise GenvaeError(f"{folder / WEIGHTS} does not fit its config.json: {str(exc).splitlines()[0]}") from None
    return net.eval()


class InceptionFeatures(nn.Module):
    """torchvision's Inception-v3 with ImageNet weights from a local file: 2048 pool features, 1000 logits."""

    label = "Inception-v3 features (torchvision ImageNet weights)"
    image_shape = (3, 299, 299)
    num_features = 2048
    mean: Tensor
    std: Tensor

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        from safetensors.torch import load_file
        from torchvision.models import inception_v3

        self.net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        try:
            weights = load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError
            raise GenvaeError(f"cannot read Inception weights {path}: {str(exc).splitlines()[0]}") from None
        missing, unexpected = self.net.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if not k.startswith("AuxLogits.")]:
            raise GenvaeError(
                f"{path} is not torchvision Inception-v3 weights ({len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors)"
            )
        self.net.eval()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def _pool(self, x: Tensor) -> Tensor:
        n = self.net
        x = ((x + 1) / 2 - self.mean) / self.std
        for name in (
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "maxpool1",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
            "maxpool2",
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
            "Mixed_7a",
            "Mixed_7b",
            "Mixed_7c",
            "avgpool",
        ):
            x = getattr(n, name)(x)
        return x.flatten(1)

    def features(self, x: Tensor) -> Tensor:
        return self._pool(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.net.fc(self._pool(x))


# -- training -----------------------------------------------------------------------------------------------


def train_classifier(
    images: Tensor,
    labels: Tensor,
    classes: int,
    *,
    width: int = 32,
    features: int = 128,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    label: str = "classifier features",
    log: Callable[[str], object] | None = None,
) -> Classifier:
    """Train a :class:`Classifier` on uint8 images (N, C, S, S) and int labels (N,) with Adam and cross-entropy;
    random horizontal flips are not used (classes such as shoes are not flip-symmetric in every dataset)."""
    torch.manual_seed(seed)
    c, s = images.shape[1], images.shape[-1]
    net = Classifier(c, s, classes, width, features, label).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    step = 0
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = order[i : i + batch_size]
            x = images[idx].to(device).float() / 127.5 - 1.0
            loss = F.cross_entropy(net(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if log is not None and step % 100 == 0:
                log(f"epoch {epoch + 1}/{epochs} step {step}: loss {loss.item():.4f}")
    return net.eval()


@torch.no_grad()
def accuracy(
    net: Classifier, images: Tensor, labels: Tensor, device: torch.device | str = "cpu", batch_size: int = 512
) -> float:
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float() / 127.5 - 1.0
        correct += int((net(x).argmax(1).cpu() == labels[i : i + batch_size]).sum())
    return correct / max(1, len(images))


# -- registration -------------------------------------------------------------------------------------------


@hookimpl
def genvae_register_feature_networks(register: RegisterNamed[FeatureNetworkLoader]) -> None:
    register(FEATURE_NETWORK, load_classifier, help="a classifier folder written by genvae train-classifier")
    register(
        "inception",
        InceptionFeatures,
        help="torchvision Inception-v3 ImageNet weights, a local .safetensors file (never downloaded)",
        suffixes=(".safetensors",),
    )


@hookimpl
def genvae_register_commands(cli: click.Group) -> None:
    from genvae.api import FiniteFloat, console, data_options, device_option, seed_option

    @cli.command("train-classifier")
    @data_options
    @click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder to write.")
    @click.option("--image-size", default=32, show_default=True, type=click.IntRange(8), help="Image size (÷8).")
    @click.option("--channels", default=1, show_default=True, type=click.Choice(["1", "3"]), help="1 grey, 3 RGB.")
    @click.option("--epochs", default=3, show_default=True, type=click.IntRange(1))
    @click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1))
    @click.option("--lr", default=1e-3, show_default=True, type=FiniteFloat(positive=True))
    @click.option("--width", default=32, show_default=True, type=click.IntRange(1), help="Channels of the first block.")
    @click.option(
        "--features",
        "n_features",
        default=128,
        show_default=True,
        type=click.IntRange(2),
        help="Size of the feature space the metrics use.",
    )
    @click.option("--limit", type=click.IntRange(1), help="Train on the first N images only.")
    @click.option("--force", is_flag=True, help="Replace a classifier folder genvae wrote.")
    @seed_option
    @device_option
    def train_classifier_command(
        data: str | None,
        data_root: str | None,
        download: bool,
        output: str,
        image_size: int,
        channels: str,
        epochs: int,
        batch_size: int,
        lr: float,
        width: int,
        n_features: int,
        limit: int | None,
        force: bool,
        seed: int,
        device: str,
    ) -> None:
        """Train the feature network of genvae evaluate's FID/KID/IS/PR on a labelled dataset (e.g. fashion-mnist)."""
        from genvae.api import ModelFolder, __version__, load_data, load_labels, registry, resolve_device

        out = Path(output)
        folder = ModelFolder(out)
        if out.exists() and any(out.iterdir()):
            folder.check_can_build_into()  # only genvae's files may be replaced
            if not force:
                raise GenvaeError(f"{out} already holds a classifier; pass --force to replace it")
        dev = resolve_device(device)
        n_channels = int(channels)
        reg = registry()
        name = data or "fashion-mnist"
        train_labels, classes = load_labels(name, split="train", root=data_root, registry=reg)
        test_labels, _ = load_labels(name, split="test", root=data_root, registry=reg)
        train = load_data(
            name,
            image_size=image_size,
            channels=n_channels,
            split="train",
            root=data_root,
            download=download,
            registry=reg,
        )
        test = load_data(
            name,
            image_size=image_size,
            channels=n_channels,
            split="test",
            root=data_root,
            download=download,
            registry=reg,
        )
        if len(train_labels) != len(train) or len(test_labels) != len(test):
            raise GenvaeError(f"'{name}': {len(train)} images but {len(train_labels)} labels")
        x, y = train.images, train_labels
        if limit is not None:
            x, y = x[:limit], y[:limit]
        began = time.time()
        net = train_classifier(
            x,
            y,
            len(classes),
            width=width,
            features=n_features,
            epochs=epochs,
            batch_size=min(batch_size, len(x)),
            lr=lr,
            seed=seed,
            device=dev,
            label=f"{name} classifier features",
            log=console.print,
        )
        acc = accuracy(net, test.images, test_labels, dev)
        config = {
            "feature_network": FEATURE_NETWORK,
            "genvae_version": __version__,
            "data_name": name,
            "data": train.source,
            "classes": list(classes),
            "image_size": image_size,
            "channels": n_channels,
            "width": width,
            "features": n_features,
            "train": {"images": len(x), "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed},
            "test_accuracy": acc,
            "test_images": len(test),
        }
        save_classifier(net.cpu(), out, config)
        console.print(
            f"trained on {len(x)} images in {time.time() - began:.0f} s; test accuracy {acc:.4f} on "
            f"{len(test)} images; wrote {out}",
            highlight=False,
        )
        console.print(json.dumps({"test_accuracy": acc}), highlight=False)
