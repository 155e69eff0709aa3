"""The tensorboard and mlflow loggers, against real local stores read back with each tool's own reader."""

from __future__ import annotations

import json

import pytest
from helpers import SETS

from genvae.testing import invoke_cli

TINY = ["--preset", "cvae", *SETS]


@pytest.fixture
def trained(tmp_path):
    """A tiny model trained 6 steps (2 epochs of 3 batches) with the given loggers; returns (folder, metrics)."""

    def train(loggers: str):
        folder = tmp_path / "m"
        assert invoke_cli(["build", *TINY, "-o", folder]).exit_code == 0
        data = tmp_path / "imgs"
        if not data.exists():
            from PIL import Image

            data.mkdir()
            for i in range(24):
                Image.new("RGB", (16, 16), (i * 10, 255 - i * 10, 128)).save(data / f"{i}.png")
        result = invoke_cli(
            [
                "train",
                folder,
                "--data",
                data,
                "--batch-size",
                "8",
                "--epochs",
                "2",
                "--log-every",
                "2",
                "--logger",
                loggers,
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        assert result.exit_code == 0, result.output
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return folder, metrics

    return train


def test_tensorboard_event_files_hold_every_term_and_the_grids(trained):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, metrics = trained("tensorboard")
    events = EventAccumulator(str(folder / "logs" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for term in ("mse", "kl", "model/total", "lr", "images_per_s"):
        assert term in tags["scalars"], term
        logged = [(e.step, e.value) for e in events.Scalars(term)]
        assert logged == [(m["step"], pytest.approx(m[term], rel=1e-6)) for m in metrics]
    assert [e.step for e in events.Images("samples")] == [3, 6]  # one grid per epoch, at its last step
    assert "config/text_summary" in tags["tensors"]
    # genvae owns what the logger wrote: it is in the folder's manifest
    manifest = json.loads((folder / ".genvae-manifest.json").read_text())
    written = [p for p in (folder / "logs" / "tensorboard").rglob("*") if p.is_file()]
    assert written and all(p.relative_to(folder).as_posix() in json.dumps(manifest) for p in written)


def test_mlflow_file_store_holds_the_run(trained):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    folder, metrics = trained("mlflow")
    client = MlflowClient(tracking_uri=(folder / "logs" / "mlflow").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "cvae"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["encoder"] == "conv" and run.data.params["train.batch_size"] == "8"
    history = client.get_metric_history(run.info.run_id, "model/total")
    assert [(h.step, h.value) for h in history] == [(m["step"], pytest.approx(m["model/total"])) for m in metrics]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "samples"} <= artifacts
    grids = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert grids == {"samples/epoch-0001.png", "samples/epoch-0002.png"}


def test_unknown_logger_is_refused_before_training(tmp_path):
    assert invoke_cli(["build", *TINY, "-o", tmp_path / "m"]).exit_code == 0
    result = invoke_cli(["train", tmp_path / "m", "--logger", "tensorbored", "--max-steps", "1"])
    assert result.exit_code != 0
    assert "unknown logger 'tensorbored'" in result.output and "tensorboard" in result.output
    assert not (tmp_path / "m" / "metrics.jsonl").exists()
