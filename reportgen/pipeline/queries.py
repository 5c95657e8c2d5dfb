"""Query images: the few images every per-image section explains, chosen once per run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reportgen.contract import PassResult
from reportgen.errors import ConfigError, did_you_mean
from reportgen.loading.folders import DataFolder


def select_queries(
    result: PassResult, folder: DataFolder, spec: int | list[str], seed: int
) -> list[int]:
    """Query images (positions among readable images), deterministic for a seed.

    A count picks round-robin across classes (a seeded shuffle within each class); unlabelled data
    gets evenly spaced images. A list names images by their path relative to the data root.
    """
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
    return usable[np.linspace(0, len(usable) - 1, count).round().astype(int)].tolist()
