"""What collectors receive during the dataset pass: layer outputs through hooks, and the model
inputs themselves under MODEL_INPUT (no hook needed, so also for TorchScript models)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_config, write_image_folder
from tiny_models import tiny_net

from reportgen.config import ModelConfig
from reportgen.contract import MODEL_INPUT
from reportgen.errors import ConfigError
from reportgen.loading.folders import scan_folder
from reportgen.loading.images import ImageDataset, Preprocessor
from reportgen.loading.models import load_model
from reportgen.pipeline.dataset_pass import dataset_pass
from reportgen.runtime.progress import Progress


class Inputs:
    def __init__(self, layers: list[str]) -> None:
        self.layers = layers
        self.seen: list[torch.Tensor] = []
        self.positions: list[int] = []

    def update(self, indices: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        assert list(outputs) == self.layers
        self.seen.append(outputs[MODEL_INPUT].clone())
        self.positions += indices.tolist()


@pytest.mark.parametrize("kind", ["state_dict", "torchscript"])
def test_collectors_receive_the_model_inputs(tmp_path: Path, kind: str) -> None:
    write_image_folder(tmp_path / "images")
    (tmp_path / "images" / "circle" / "broken.png").write_bytes(b"not a png")
    if kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(tiny_net(3).eval()).save(str(tmp_path / "ts.pt"))
        model_cfg = ModelConfig(checkpoint=str(tmp_path / "ts.pt"), trust_checkpoint=True)
    else:
        torch.save(tiny_net(3).state_dict(), tmp_path / "w.pt")
        model_cfg = make_config(tmp_path, {"model.weights": str(tmp_path / "w.pt")}).model
    cfg = make_config(tmp_path, {"run.batch_size": 4})
    model = load_model(model_cfg)
    dataset = ImageDataset(scan_folder(cfg.data), Preprocessor.from_config(cfg.preprocess, 3))
    layers = [MODEL_INPUT] if kind == "torchscript" else [MODEL_INPUT, "conv1"]
    col = Inputs(layers)
    result = dataset_pass(cfg, model, dataset, torch.device("cpu"), {"c": col}, Progress(True))
    want = torch.stack([dataset[i].input for i in result.item_index])  # type: ignore[misc]
    assert torch.equal(torch.cat(col.seen), want)
    assert col.positions == list(range(len(result.item_index))) and len(want) == 18
    if kind == "torchscript":  # a layer output needs a hook, which TorchScript has not
        with pytest.raises(ConfigError, match="need a model with hooks"):
            dataset_pass(
                cfg, model, dataset, torch.device("cpu"), {"c": Inputs(["conv1"])}, Progress(True)
            )
