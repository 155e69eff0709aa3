"""The ``mlflow`` logger: a run's metrics, sample grids and configuration in an MLflow tracking store.

``genvae train DIR --logger mlflow`` logs one MLflow run per training run into a local file store,
``DIR/logs/mlflow/`` (no server needed; browse it with ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui
--backend-store-uri DIR/logs/mlflow``), or to ``MLFLOW_TRACKING_URI`` when that is set (a server, a
database). MLflow 3 keeps the file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; this
logger opts in for its own store (unless the variable is set otherwise).

The experiment is named after the model's preset; the configuration is logged as parameters (the model's
top-level choices and every training setting) and as ``config.json``; sample grids as artifacts under
``samples/``. MLflow's metric names allow no ``@``, so ``mi@prior/total`` is logged
as ``mi.prior/total``. Needs ``mlflow`` or ``mlflow-skinny`` (``pip install 'genvae[mlflow]'``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genvae.api import LoggerFactory, RegisterNamed, hookimpl

SKIP = ("step", "wall_time")  # MLflow keeps its own timestamps


def metric_name(key: str) -> str:
    return key.replace("@", ".")


def params_of(config: dict) -> dict[str, str]:
    """The run's parameters: the model's components and sizes, and every training setting."""
    params: dict[str, str] = {}
    for key in ("preset", "image_size", "channels"):
        if config.get(key) is not None:
            params[key] = str(config[key])
    for kind in ("encoder", "transform", "decoder", "prior"):
        if isinstance(config.get(kind), dict):
            params[kind] = str(config[kind].get("name"))
    params["losses"] = ",".join(str(loss.get("name")) for loss in config.get("losses", []))
    for key, value in (config.get("train") or {}).items():
        params[f"train.{key}"] = json.dumps(value)[:500]
    return params


class MLflowLogger:
    def __init__(self, folder: Path, config: dict) -> None:
        from mlflow.tracking import MlflowClient  # ImportError without mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI") or folder.resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = str(config.get("preset") or "genvae")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, tags={"genvae.model": name}).info.run_id
        for key, value in params_of(config).items():
            self.client.log_param(self.run_id, key, value)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(config, indent=2), encoding="utf-8")
            self.client.log_artifact(self.run_id, str(path))

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(metric_name(k), float(v), now, step)
            for k, v in record.items()
            if k not in SKIP and isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(tag).parent))

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


@hookimpl
def genvae_register_loggers(register: RegisterNamed[LoggerFactory]) -> None:
    register("mlflow", MLflowLogger, help="an MLflow run in a local file store, DIR/logs/mlflow (needs genvae[mlflow])")
