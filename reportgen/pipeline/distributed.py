"""Running one report across several processes (``torchrun``): sharding and gathering.

``torchrun --nproc_per_node=N -m reportgen run ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment. Each rank runs the dataset pass over its
shard, then rank 0 gathers every rank's results, puts them in the order a single process would
have produced, runs the analyses and alone writes the outputs; the other ranks exit after the pass.

Shards are whole batches, dealt out round-robin (rank r gets batches r, r+W, r+2W...). Every batch
therefore holds the same images as in a one-process run, so per-image results are bit-identical
(a convolution's result can depend on the batch it runs in) and so are the metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from reportgen.contract import PassResult
from reportgen.contract.passes import label_set_matrix, mean_of_batches, raise_no_images
from reportgen.errors import ConfigError

if TYPE_CHECKING:
    from reportgen.loading.images import ImageDataset


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = DistContext()


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (no-op for one process).

    ``device`` is this rank's device: gloo serves CPU ranks, nccl CUDA ranks.
    """
    world = env_world_size()
    if world <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # A long timeout: rank 0 may wait on a slow shard of a large dataset pass.
        if device.type == "cuda":
            # device_id binds the communicator to this rank's GPU up front (no lazy guessing).
            dist.init_process_group(
                backend=backend, timeout=datetime.timedelta(hours=2), device_id=device
            )
        else:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    return DistContext(rank, world, local_rank, backend)


def rank_device(spec: str, local_rank: int) -> str:
    """The device spec for a rank: ``cuda`` / ``auto`` mean this node's GPU number LOCAL_RANK."""
    if env_world_size() <= 1:
        return spec
    if spec in ("cuda", "auto") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s); "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        return f"cuda:{local_rank}"
    if spec.startswith("cuda:"):
        raise ConfigError(
            f"run.device: {spec} names one GPU, but torchrun starts {env_world_size()} processes; "
            "use --device cuda (each process takes the GPU numbered by its LOCAL_RANK)"
        )
    return spec


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(
    num_items: int,
    batch_size: int,
    rank: int,
    world_size: int,
    groups: Sequence[int] | None = None,
) -> list[int]:
    """Dataset indices of this rank's shard: whole batches, dealt round-robin.

    ``groups``: the file each item lies in (WebDataset shards, :func:`item_groups`); with at
    least as many files as ranks, whole files are dealt round-robin instead, so that each rank
    reads its own tar files.
    """
    if groups is not None and len(set(groups)) >= world_size:
        order = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        return [i for i, g in enumerate(groups) if order[g] % world_size == rank]
    out: list[int] = []
    for start in range(rank * batch_size, num_items, world_size * batch_size):
        out.extend(range(start, min(start + batch_size, num_items)))
    return out


def item_groups(items: Sequence[Any], source: str) -> list[int] | None:
    """Per item, the index of the tar shard it lies in (None unless the source is shards)."""
    if source != "webdataset":
        return None
    index: dict[Any, int] = {}
    return [index.setdefault(it.path, len(index)) for it in items]


def tensors_to(obj: Any, device: torch.device | str) -> Any:
    """A copy of ``obj`` (tensors inside dicts, lists, tuples, dataclasses) on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {
            f.name: tensors_to(getattr(obj, f.name), device)
            for f in dataclasses.fields(obj)
            if f.init
        }
        return dataclasses.replace(obj, **fields)
    if isinstance(obj, dict):
        return {k: tensors_to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [tensors_to(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(tensors_to(v, device) for v in obj)
    return obj


def gather_to_main(ctx: DistContext, payload: Any) -> list[Any] | None:
    """Every rank's ``payload`` (tensors moved to the CPU) on rank 0, by rank; None elsewhere."""
    cpu_payload = tensors_to(payload, "cpu")
    if not ctx.enabled:
        return [cpu_payload]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(cpu_payload, out, dst=0)
    return out


def collector_state(collector: Any) -> dict[str, Any]:
    """What a collector carries between ranks: its attributes, tensors on the CPU."""
    return tensors_to(dict(vars(collector)), "cpu")


def restore_collector(template: Any, state: Mapping[str, Any], device: torch.device) -> Any:
    """Another rank's collector, rebuilt from ``state`` on this rank's ``device``."""
    other = copy.copy(template)
    vars(other).update(tensors_to(dict(state), device))
    return other


def merge_order(item_indices: Sequence[Sequence[int]]) -> tuple[list[int], list[torch.Tensor]]:
    """Merge per-rank readable-image lists into the one-process order.

    ``item_indices[r]`` lists rank r's readable images (dataset indices) in its pass order.
    Returns ``perm``, which reorders the ranks' concatenated rows into ascending dataset order
    (the order one process produces), and for each rank the global position of each of its
    local positions (what collectors need to re-key their state).
    """
    flat = [
        (int(item), r, j) for r, items in enumerate(item_indices) for j, item in enumerate(items)
    ]
    offsets = [0]
    for items in item_indices:
        offsets.append(offsets[-1] + len(items))
    flat.sort()
    perm = [offsets[r] + j for _, r, j in flat]
    global_of = [torch.empty(len(items), dtype=torch.long) for items in item_indices]
    for pos, (_, r, j) in enumerate(flat):
        global_of[r][j] = pos
    return perm, global_of


def can_merge(collector: Any) -> bool:
    """Whether a collector implements the cross-rank step ``merge(shards, positions)`` of
    :class:`reportgen.contract.MergeableCollector` (a ``merge(other)`` that assumes global
    positions does not qualify: shards only know their local positions)."""
    merge = getattr(collector, "merge", None)
    if not callable(merge):
        return False
    try:
        params = inspect.signature(merge).parameters
    except (TypeError, ValueError):
        return False
    return len(params) == 2


def gather_pass(
    ctx: DistContext,
    result: PassResult,
    collectors: Mapping[str, Any],
    dataset: ImageDataset,
    batch_size: int,
    device: torch.device,
) -> PassResult | None:
    """Rank 0: every rank's shard merged into the one-process result; other ranks: None.

    Collectors on rank 0 end up holding the merged state (their ``merge`` is called with every
    rank's state and the global position of each rank's local positions).
    """
    shards = gather_to_main(ctx, shard_payload(result, collectors))
    if shards is None:
        return None
    merged = merge_shards(shards, result.feature_layer, collectors, dataset, batch_size, device)
    return dataclasses.replace(merged, head=result.head, baseline_head=result.baseline_head)


def shard_payload(result: PassResult, collectors: Mapping[str, Any]) -> dict[str, Any]:
    """What one rank sends to rank 0 after its shard of the pass."""
    return {
        "item_index": result.item_index,
        "features": result.features,
        "logits": result.logits,
        "labels": result.labels,
        "pixels": result.pixels,
        "skipped": result.skipped,
        "manifest": result.manifest,
        "batch_sums": result.batch_sums,
        "baseline_logits": result.baseline_logits,
        "baseline_features": result.baseline_features,
        "collectors": {name: collector_state(c) for name, c in collectors.items()},
    }


def merge_shards(
    shards: Sequence[Mapping[str, Any]],
    feature_layer: str | None,
    collectors: Mapping[str, Any],
    dataset: ImageDataset,
    batch_size: int,
    device: torch.device,
) -> PassResult:
    """The one-process :class:`PassResult` from every rank's payload (``shards[r]`` = rank r)."""
    world_size = len(shards)
    items = dataset.folder.items
    n_items = len(dataset)
    perm_list, global_of = merge_order([s["item_index"] for s in shards])
    perm = torch.tensor(perm_list, dtype=torch.long)
    full = [s for s in shards if s["item_index"]]

    def merged(key: str) -> torch.Tensor | None:
        if not full or full[0][key] is None:
            return None
        return torch.cat([s[key] for s in full])[perm].to(device)

    manifest_by_index: list[tuple[int, tuple[str, int, str]]] = []
    groups = item_groups(items, dataset.folder.source)
    for r, s in enumerate(shards):
        shard = shard_indices(n_items, batch_size, r, world_size, groups)
        manifest_by_index.extend(zip(shard, s["manifest"], strict=True))
    where = {item.relpath: i for i, item in enumerate(items)}
    skipped = sorted((x for s in shards for x in s["skipped"]), key=lambda x: where[x[0]])
    order = [int(i) for s in shards for i in s["item_index"]]
    order = [order[p] for p in perm_list]
    if not order:
        raise_no_images(dataset.folder.root, skipped)
    batch_sums = [b for s in shards for b in s["batch_sums"]]
    logits, pixels = merged("logits"), merged("pixels")
    assert logits is not None and pixels is not None
    for name, col in collectors.items():
        others = [restore_collector(col, s["collectors"][name], device) for s in shards[1:]]
        col.merge([col, *others], [g.to(device) for g in global_of])
    return PassResult(
        item_index=order,
        features=merged("features"),
        feature_layer=feature_layer,
        logits=logits,
        labels=torch.tensor([items[i].label for i in order], dtype=torch.long),
        pixels=pixels,
        skipped=skipped,
        manifest=[m for _, m in sorted(manifest_by_index, key=lambda x: x[0])],
        mean_input=mean_of_batches(batch_sums).to(device),
        batch_sums=batch_sums,
        baseline_logits=merged("baseline_logits"),
        baseline_features=merged("baseline_features"),
        label_sets=label_set_matrix([items[i] for i in order], int(logits.shape[1]))
        if dataset.folder.label_sets
        else None,
    )
