"""torchrun support: shards, the merge back into one-process order, and a real 2-rank gloo run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_config, write_image_folder

from reportgen.api import run_report
from reportgen.contract import MergeableCollector
from reportgen.loading.folders import scan_folder
from reportgen.loading.images import ImageDataset, Preprocessor
from reportgen.loading.models import load_model
from reportgen.loading.sources import open_source
from reportgen.pipeline import distributed
from reportgen.pipeline.dataset_pass import dataset_pass
from reportgen.runtime.progress import Progress


class TopChannelMeans:
    """A running top-k (per channel of one layer) with the cross-rank merge step."""

    def __init__(self, layer: str, k: int) -> None:
        self.layers = [layer]
        self.k = k
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def update(self, indices: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        act = outputs[self.layers[0]].float().mean(dim=(2, 3)).T  # channels × batch
        pos = indices[None, :].expand_as(act)
        self._keep(act, pos)

    def _keep(self, values: torch.Tensor, positions: torch.Tensor) -> None:
        if self.values is not None and self.positions is not None:
            values = torch.cat([self.values, values], dim=1)
            positions = torch.cat([self.positions, positions], dim=1)
        # Ties broken by the lower position: sort by position first, then a stable sort by value.
        order = positions.argsort(dim=1, stable=True)
        values, positions = values.gather(1, order), positions.gather(1, order)
        order = values.argsort(dim=1, descending=True, stable=True)[:, : self.k]
        self.values, self.positions = values.gather(1, order), positions.gather(1, order)

    def merge(self, shards: Sequence[Any], positions: Sequence[torch.Tensor]) -> None:
        states = [(s.values, s.positions, g) for s, g in zip(shards, positions, strict=True)]
        self.values = self.positions = None
        for values, local, global_of in states:
            if values is not None:
                self._keep(values, global_of[local])


def _setup(tmp_path: Path, weights: Path) -> tuple[Any, Any, ImageDataset, torch.device]:
    root = write_image_folder(tmp_path / "images", {"a": 7, "b": 5, "c": 6})
    (root / "b" / "broken.png").write_bytes(b"not a png")
    cfg = make_config(tmp_path, {"model.weights": str(weights), "run.batch_size": 4})
    model = load_model(cfg.model)
    pre = Preprocessor.from_config(cfg.preprocess, model.in_channels)
    return cfg, model, ImageDataset(scan_folder(cfg.data), pre), torch.device("cpu")


def _unmergeable(cfg: Any, name: str) -> bool:
    from reportgen.analyses import REGISTRY
    from reportgen.contract import SetupContext

    model = load_model(cfg.model)
    setup = SetupContext(model, scan_folder(cfg.data), torch.device("cpu"))
    col = REGISTRY[name]().collector(setup, cfg.analyses[name])
    return col is not None and not distributed.can_merge(col)


def test_shards_are_whole_batches_dealt_round_robin() -> None:
    shards = [distributed.shard_indices(10, 3, r, 2) for r in range(2)]
    assert shards == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]]
    assert distributed.shard_indices(2, 4, 1, 2) == []
    for n, b, w in [(17, 4, 3), (5, 8, 2), (64, 1, 5)]:
        every = sorted(i for r in range(w) for i in distributed.shard_indices(n, b, r, w))
        assert every == list(range(n))


def test_merge_order() -> None:
    perm, global_of = distributed.merge_order([[0, 1, 6], [3, 4], []])
    assert perm == [0, 1, 3, 4, 2]
    assert [g.tolist() for g in global_of] == [[0, 1, 4], [2, 3], []]


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_merged_shards_equal_one_pass(tmp_path: Path, tiny_weights: Path, world_size: int) -> None:
    cfg, model, dataset, device = _setup(tmp_path, tiny_weights)
    single_col = TopChannelMeans("conv2", k=3)
    single = dataset_pass(cfg, model, dataset, device, {"top": single_col}, Progress(quiet=True))

    cols = [TopChannelMeans("conv2", k=3) for _ in range(world_size)]
    assert distributed.can_merge(cols[0])
    _typed: MergeableCollector = cols[0]  # the protocol, checked by mypy
    payloads = []
    for r in range(world_size):
        shard = distributed.shard_indices(len(dataset), cfg.run.batch_size, r, world_size)
        local = dataset_pass(
            cfg, model, dataset, device, {"top": cols[r]}, Progress(quiet=True), shard, True
        )
        payloads.append(distributed.shard_payload(local, {"top": cols[r]}))
    merged = distributed.merge_shards(
        payloads, single.feature_layer, {"top": cols[0]}, dataset, cfg.run.batch_size, device
    )

    assert merged.item_index == single.item_index
    assert merged.features is not None and single.features is not None
    assert torch.equal(merged.features, single.features)
    assert torch.equal(merged.logits, single.logits)
    assert torch.equal(merged.labels, single.labels)
    assert torch.equal(merged.pixels, single.pixels)
    assert merged.mean_input is not None and single.mean_input is not None
    assert torch.equal(merged.mean_input, single.mean_input)
    assert merged.manifest == single.manifest
    assert merged.skipped == single.skipped == [("b/broken.png", single.skipped[0][1])]
    assert single_col.values is not None and cols[0].values is not None
    assert torch.equal(cols[0].values, single_col.values)
    assert torch.equal(cols[0].positions, single_col.positions)  # type: ignore[arg-type]


def test_webdataset_shards_are_dealt_whole_files_per_rank() -> None:
    groups = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    ranks = [distributed.shard_indices(10, 2, r, 2, groups) for r in range(2)]
    assert ranks == [[0, 1, 2, 5, 6, 7, 8], [3, 4, 9]]  # files 0 and 2 / 1 and 3
    # Fewer files than ranks: whole batches again, so that no rank sits idle.
    assert distributed.shard_indices(10, 2, 2, 3, [0] * 5 + [1] * 5) == [4, 5]


def test_merged_webdataset_shards_equal_one_pass(tmp_path: Path, tiny_weights: Path) -> None:
    from data_sources import write_shards

    root = write_image_folder(tmp_path / "images", {"0": 5, "1": 4, "2": 6})
    write_shards(root, tmp_path / "shards", shards=3)
    cfg = make_config(
        tmp_path,
        {
            "model.weights": str(tiny_weights),
            "run.batch_size": 4,
            "data.root": str(tmp_path / "shards"),
        },
    )
    model = load_model(cfg.model)
    pre = Preprocessor.from_config(cfg.preprocess, model.in_channels)
    dataset = ImageDataset(open_source(cfg.data), pre)
    device = torch.device("cpu")
    assert dataset.folder.source == "webdataset"
    single = dataset_pass(cfg, model, dataset, device, {}, Progress(quiet=True))
    groups = distributed.item_groups(dataset.folder.items, "webdataset")
    payloads = []
    for r in range(2):
        shard = distributed.shard_indices(len(dataset), 4, r, 2, groups)
        assert {dataset.folder.items[i].path.name for i in shard} == (
            {"val-000000.tar", "val-000002.tar"} if r == 0 else {"val-000001.tar"}
        )
        local = dataset_pass(cfg, model, dataset, device, {}, Progress(quiet=True), shard, True)
        payloads.append(distributed.shard_payload(local, {}))
    merged = distributed.merge_shards(payloads, single.feature_layer, {}, dataset, 4, device)
    assert merged.item_index == single.item_index
    assert merged.manifest == single.manifest
    assert torch.equal(merged.labels, single.labels)
    # Other batches than one process's: equal up to float rounding.
    torch.testing.assert_close(merged.logits, single.logits)


def test_torchrun_two_cpu_ranks_match_one_process(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images", {"a": 9, "b": 8, "c": 7})
    overrides = {"model.weights": str(tiny_weights), "run.batch_size": 5}
    # Analyses whose collectors lack merge(shards, positions) are skipped under torchrun: compare
    # the two runs on the analyses that run in both.
    cfg = make_config(tmp_path, overrides)
    skip = [n for n, p in cfg.analyses.items() if p.enabled and _unmergeable(cfg, n)]
    analyses = {n: {"enabled": False} for n in skip}
    cfg = make_config(tmp_path, overrides, [n for n in cfg.enabled_analyses() if n not in skip])
    single = run_report(cfg)
    assert single.exit_code == 0

    config = tmp_path / "dist.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "model": {"arch": make_config(tmp_path).model.arch, "weights": str(tiny_weights)},
                "data": {"root": str(tmp_path / "images"), "queries": 3},
                "preprocess": {"resize": 32, "crop": 32, "pixel_size": 16},
                "run": {"device": "cpu", "workers": 0, "batch_size": 5},
                "output": {"dir": str(tmp_path / "dist_out"), "formats": ["html"]},
                "analyses": analyses,
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "reportgen",
            "run",
            "--config",
            str(config),
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist_summary = json.loads((tmp_path / "dist_out" / "summary.json").read_text())
    assert dist_summary["run"]["world_size"] == 2
    assert single.summary["run"]["world_size"] == 1
    assert dist_summary["metrics"] == single.summary["metrics"]
    assert dist_summary["data"] == {**single.summary["data"], "root": dist_summary["data"]["root"]}


def _one_and_merged(tmp_path: Path, weights: Path, make: Any, world_size: int) -> tuple[Any, Any]:
    """A collector filled by one process's pass, and rank 0's after ``world_size`` ranks each
    ran their shard and rank 0 merged them."""
    cfg, model, dataset, device = _setup(tmp_path, weights)
    single_col = make()
    single = dataset_pass(cfg, model, dataset, device, {"c": single_col}, Progress(quiet=True))
    cols = [make() for _ in range(world_size)]
    assert distributed.can_merge(cols[0])
    payloads = []
    for r in range(world_size):
        shard = distributed.shard_indices(len(dataset), cfg.run.batch_size, r, world_size)
        local = dataset_pass(
            cfg, model, dataset, device, {"c": cols[r]}, Progress(quiet=True), shard, True
        )
        payloads.append(distributed.shard_payload(local, {"c": cols[r]}))
    distributed.merge_shards(
        payloads, single.feature_layer, {"c": cols[0]}, dataset, cfg.run.batch_size, device
    )
    return single_col, cols[0]


def _same_top_k(got: Any, want: Any) -> None:
    for layer in ("conv1", "conv2"):
        mine, theirs = got.state[layer], want.state[layer]
        for attr in ("values", "positions", "ys", "xs"):
            assert torch.equal(getattr(mine, attr), getattr(theirs, attr)), (layer, attr)
        assert mine.count == theirs.count
        assert torch.allclose(mine.mean, theirs.mean) and torch.allclose(mine.m2, theirs.m2)


@pytest.mark.parametrize("world_size", [2, 3])
def test_max_patches_collector_merges_across_ranks(
    tmp_path: Path, tiny_weights: Path, world_size: int
) -> None:
    from reportgen.analyses.max_patches import TopKCollector

    single, merged = _one_and_merged(
        tmp_path, tiny_weights, lambda: TopKCollector(["conv1", "conv2"], k=4), world_size
    )
    _same_top_k(merged, single)


@pytest.mark.parametrize("world_size", [2, 3])
def test_feature_viz_collector_merges_across_ranks(
    tmp_path: Path, tiny_weights: Path, world_size: int
) -> None:
    """The data's spectrum and colour moments come out to the byte as one process's (so the
    optimised images do too), the channel statistics as the patches section's."""
    from reportgen.analyses.feature_viz import FeatureVizCollector

    single, merged = _one_and_merged(
        tmp_path, tiny_weights, lambda: FeatureVizCollector(["conv1", "conv2"]), world_size
    )
    assert merged.spectrum.count == single.spectrum.count == 18
    for attr in ("cross", "sums", "products"):
        assert torch.equal(getattr(merged.spectrum, attr), getattr(single.spectrum, attr)), attr
    _same_top_k(merged, single)
