"""The feature network (genvae train-classifier), dataset labels, and genvae evaluate with every metric."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from genvae.api import build_model, save_model
from genvae.core.data import load_labels
from genvae.core.errors import GenvaeError
from genvae.plugins.classifier import (
    Classifier,
    InceptionFeatures,
    accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from genvae.testing import invoke_cli, tiny_spec


def write_idx(root, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    n, h, w = images.shape
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    with open(root / f"{prefix}-labels-idx1-ubyte", "wb") as f:  # one gzipped, one raw
        f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


def bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 28x28 images: a bright vertical (0) or horizontal (1) bar at a random place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, label in enumerate(labels):
        p = rng.integers(4, 20)
        if label == 0:
            images[i, :, p : p + 5] = 230
        else:
            images[i, p : p + 5, :] = 230
    return images, labels


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    write_idx(root, "train", *bars(256, 0))
    write_idx(root, "t10k", *bars(64, 1))
    return root


def test_labels_come_from_the_idx_files_in_image_order(mnist_root):
    labels, classes = load_labels("mnist", split="test", root=mnist_root)
    assert labels.tolist() == bars(64, 1)[1].tolist() and classes == tuple("0123456789")
    with pytest.raises(GenvaeError, match="'shapes' has no class labels; datasets with labels: fashion-mnist, mnist"):
        load_labels("shapes")


def test_a_classifier_learns_the_bars_and_round_trips_through_its_folder(mnist_root, tmp_path, one_thread):
    from genvae.core.data import load_data

    train = load_data("mnist", image_size=16, channels=1, split="train", root=mnist_root)
    labels, _ = load_labels("mnist", split="train", root=mnist_root)
    net = train_classifier(train.images, labels, 2, width=4, features=8, epochs=4, batch_size=32, lr=3e-3)
    test = load_data("mnist", image_size=16, channels=1, split="test", root=mnist_root)
    test_labels, _ = load_labels("mnist", split="test", root=mnist_root)
    assert accuracy(net, test.images, test_labels) >= 0.9
    save_classifier(
        net,
        tmp_path / "clf",
        {
            "feature_network": "genvae-classifier",
            "data_name": "bars",
            "classes": ["v", "h"],
            "image_size": 16,
            "channels": 1,
            "width": 4,
            "features": 8,
        },
    )
    back = load_classifier(tmp_path / "clf")
    x = test.images[:5].float() / 127.5 - 1
    assert torch.equal(back.logits(x), net.logits(x)) and back.features(x).shape == (5, 8)
    assert back.label == "bars classifier features" and back.image_shape == (1, 16, 16)
    assert torch.allclose(back.logits(x), back.head(back.features(x)))  # logits are read off the features
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    with pytest.raises(GenvaeError, match="is not a genvae classifier folder"):
        load_classifier(tmp_path / "other")


def test_the_classifier_refuses_an_image_size_it_cannot_pool():
    with pytest.raises(GenvaeError, match="divisible by 8"):
        Classifier(1, 12, 2)


def tiny_model(tmp_path, name: str, seed: int):
    torch.manual_seed(seed)
    model = build_model(tiny_spec("encoder", "conv", image_size=16, channels=1))
    save_model(model, tmp_path / name)
    return tmp_path / name


@pytest.mark.slow
def test_evaluate_scores_two_models_side_by_side_in_the_classifiers_space(mnist_root, tmp_path):
    result = invoke_cli(
        [
            "train-classifier",
            "--data",
            "mnist",
            "--data-root",
            mnist_root,
            "-o",
            tmp_path / "clf",
            "--image-size",
            "16",
            "--width",
            "4",
            "--features",
            "8",
            "--epochs",
            "2",
            "--batch-size",
            "32",
        ]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["feature_network"] == "genvae-classifier" and 0 <= config["test_accuracy"] <= 1
    a, b = tiny_model(tmp_path, "a", 0), tiny_model(tmp_path, "b", 1)
    result = invoke_cli(
        [
            "evaluate",
            a,
            "--compare",
            b,
            "--data",
            "mnist",
            "--data-root",
            mnist_root,
            "--metrics",
            "rmse,fid,kid,is,pr",
            "--classifier",
            tmp_path / "clf",
            "--samples",
            "40",
            "-o",
            tmp_path / "report.json",
            "--device",
            "cpu",
        ]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["feature_network"] == "mnist classifier features" and report["images"] == 64
    assert report["labels"]["fid"] == "FID (mnist classifier features)" and report["labels"]["rmse"] == "RMSE (0-255)"
    assert [r["model"] for r in report["models"]] == [str(a), str(b)]
    for r in report["models"]:
        assert set(r["metrics"]) == {"rmse", "fid", "kid", "is", "pr"} and r["samples"] == 40
        assert r["metrics"]["fid"]["fid"] > 0 and 0 <= r["metrics"]["pr"]["precision"] <= 1
        assert 1 <= r["metrics"]["is"]["is"] <= 2  # two classes
    assert report["models"][0]["metrics"] != report["models"][1]["metrics"]
    # the same seed gives the same samples and scores
    again = invoke_cli(
        [
            "evaluate",
            a,
            "--data",
            "mnist",
            "--data-root",
            mnist_root,
            "--metrics",
            "fid",
            "--classifier",
            tmp_path / "clf",
            "--samples",
            "40",
            "--device",
            "cpu",
        ]
    )
    assert (
        json.loads(again.output.strip().splitlines()[-1])["models"][0]["metrics"]["fid"]
        == report["models"][0]["metrics"]["fid"]
    )


def test_evaluate_says_what_is_missing(tmp_path, mnist_root):
    a = tiny_model(tmp_path, "a", 0)
    result = invoke_cli(["evaluate", a, "--data", "mnist", "--data-root", mnist_root, "--metrics", "rmse,fid"])
    assert result.exit_code == 1
    assert "fid need a feature network: train one with genvae train-classifier" in result.output
    result = invoke_cli(["evaluate", a, "--metrics", "rmse,fidd"])
    assert result.exit_code == 1
    assert "unknown metric 'fidd'; metrics: coverage, fid, is, kid, pr, rmse, spectrum" in result.output


@pytest.mark.slow
def test_a_local_inception_weights_file_is_a_labelled_feature_network(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    from genvae.core.evaluation import open_feature_network
    from genvae.core.registry import get_registry

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "inception.safetensors"))
    features = open_feature_network(tmp_path / "inception.safetensors", get_registry())
    assert isinstance(features, InceptionFeatures)
    assert features.label == "Inception-v3 features (torchvision ImageNet weights)"
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    from genvae.core.evaluation import fit_to

    x = fit_to(x, features.image_shape)
    with torch.no_grad():
        f, logits = features.features(x), features.logits(x)
        net.eval()
        expect = net(((x + 1) / 2 - features.mean) / features.std)
    assert f.shape == (2, 2048) and torch.allclose(logits, expect, atol=1e-4)
    (tmp_path / "other.safetensors").write_bytes(b"not a file")
    with pytest.raises(GenvaeError, match="cannot read Inception weights"):
        open_feature_network(tmp_path / "other.safetensors", get_registry())
    with pytest.raises(GenvaeError, match="no feature network reads x.bin"):
        (tmp_path / "x.bin").write_bytes(b"")
        open_feature_network(tmp_path / "x.bin", get_registry())
