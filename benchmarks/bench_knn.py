"""Exact k-NN: reportgen.knn (chunked matrix products + top-k on the device) vs scikit-learn.

Leave-one-out neighbours of every point among N points (the neighbours analysis' agreement
metric), k = 5, Euclidean, on Gaussian-mixture features. scikit-learn's ``NearestNeighbors``
(auto algorithm, all cores) is the reference; both must return the same indices.

Run: ``python -m benchmarks.bench_knn [--device cuda] [--quick]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from benchmarks.common import gaussian_mixture, standalone_main, table, timed
from reportgen.methods.knn import knn


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    dev = torch.device(device)
    cases = [(2000, 512), (10000, 512)] if quick else [(10000, 512), (50000, 512), (50000, 2048)]
    k = 5
    rows = []
    for n, d in cases:
        x = gaussian_mixture(n, d, seed=n + d)
        xt = torch.from_numpy(x).to(dev)
        own = torch.arange(n, device=dev)
        knn(xt[:64], xt, k)  # warm-up
        t_ours, (_, idx) = timed(
            lambda xt=xt, own=own: knn(xt, xt, k, exclude=own, chunk=4096), dev
        )
        nn = NearestNeighbors(n_neighbors=k, n_jobs=-1).fit(x)
        t_sk, ref = timed(lambda nn=nn: nn.kneighbors(return_distance=False))
        same = float((np.sort(idx.cpu().numpy(), 1) == np.sort(ref, 1)).mean())
        rows.append(
            {
                "n": n,
                "dims": d,
                "reportgen_s": t_ours,
                "sklearn_s": t_sk,
                "speedup": t_sk / t_ours,
                "same_neighbours": same,
            }
        )
    return {"benchmark": "knn", "device": device, "k": k, "rows": rows}


def markdown(r: dict[str, Any]) -> str:
    return f"Leave-one-out {r['k']}-NN of all N points, {r['device']}.\n\n" + table(
        ["N", "dims", "reportgen.knn s", "scikit-learn s", "speed-up", "same neighbours"],
        [
            [
                x["n"],
                x["dims"],
                x["reportgen_s"],
                x["sklearn_s"],
                x["speedup"],
                x["same_neighbours"],
            ]
            for x in r["rows"]
        ],
    )


def main() -> None:
    standalone_main(__doc__, run, markdown)


if __name__ == "__main__":
    main()
