"""Query images: the few images every per-image section explains, chosen once per run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reportgen.config import DataConfig
from reportgen.contract import PassResult
from reportgen.errors import ConfigError, did_you_mean
from reportgen.loading.folders import DataFolder


def select_queries(
    result: PassResult, folder: DataFolder, data: DataConfig, seed: int
) -> list[int]:
    """Query images (positions among readable images), deterministic for a seed.

    ``data.queries`` as a count picks round-robin across classes (a seeded shuffle within each
    class) — for label sets, across labels (an image is picked once, for the first label it
    comes up for; images with none of the labels form one more group), until the images'
    explained labels (at most ``data.max_labels_per_query`` each) fill that many rows;
    unlabelled data gets evenly spaced images. A list names images by their path relative to
    the data root.
    """
    spec, labels_per_query = data.queries, data.max_labels_per_query
    if isinstance(spec, list):
        by_path = {folder.items[i].relpath: pos for pos, i in enumerate(result.item_index)}
        skipped = {p for p, _ in result.skipped}
        out = []
        for rel in spec:
            rel_norm = Path(rel).as_posix()
            if rel_norm in skipped:
                raise ConfigError(
                    f"data.queries: {rel} could not be read (see skipped files); choose another image"
                )
            if rel_norm not in by_path:
                raise ConfigError(
                    f"data.queries: {rel} is not an image under {folder.root}{did_you_mean(rel_norm, by_path)}"
                )
            out.append(by_path[rel_norm])
        return out
    # An image whose outputs are not finite has nothing to explain: never picked.
    finite = result.finite.cpu().numpy()
    count = min(spec, int(finite.sum()))
    if count == 0:
        return []
    rng = np.random.default_rng(seed)
    labels = result.labels.numpy()
    sets = result.label_sets
    if sets is not None and folder.labelled:
        has = (sets > 0).numpy() & finite[:, None]
        known = (sets >= 0).all(dim=1).numpy() & finite
        members = [np.flatnonzero(has[:, k]) for k in range(has.shape[1])]
        members.append(np.flatnonzero(known & ~has.any(axis=1)))  # none of the labels
        order = _round_robin([rng.permutation(m).tolist() for m in members if m.size], count)
        return _fill_rows(result, order, count, labels_per_query)
    if folder.labelled:
        groups = {
            c: rng.permutation(np.flatnonzero((labels == c) & finite)).tolist()
            for c in sorted(set(labels[finite].tolist()))
        }
        picks: list[int] = []
        depth = 0
        while len(picks) < count:
            for c in sorted(groups):
                if depth < len(groups[c]) and len(picks) < count:
                    picks.append(groups[c][depth])
            depth += 1
        return picks
    usable = np.flatnonzero(finite)
    spaced = usable[np.linspace(0, len(usable) - 1, count).round().astype(int)].tolist()
    if not result.head.single_label:
        return _fill_rows(result, spaced, count, labels_per_query)
    return spaced


def _fill_rows(result: PassResult, order: list[int], count: int, per_image: int) -> list[int]:
    """The first images of ``order`` whose explained labels fill ``count`` rows (multi-label:
    ``data.queries`` counts explained rows, so the per-image sections cost what they cost for a
    single-label model)."""
    chosen: list[int] = []
    rows = 0
    for p in order:
        if rows >= count:
            break
        chosen.append(p)
        rows += len(result.explained_labels(p, per_image))
    return chosen


def _round_robin(groups: list[list[int]], count: int) -> list[int]:
    """Up to ``count`` positions, one from each group in turn (each position once)."""
    picks: list[int] = []
    taken: set[int] = set()
    cursors = [0] * len(groups)
    while len(picks) < count and any(c < len(g) for c, g in zip(cursors, groups, strict=True)):
        for i, group in enumerate(groups):
            while cursors[i] < len(group) and group[cursors[i]] in taken:
                cursors[i] += 1
            if cursors[i] < len(group) and len(picks) < count:
                picks.append(group[cursors[i]])
                taken.add(group[cursors[i]])
                cursors[i] += 1
    return picks
