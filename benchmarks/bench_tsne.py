"""t-SNE: reportgen's embedding step vs scikit-learn's ``TSNE`` defaults and openTSNE's defaults.

Features: a 20-component Gaussian mixture in 256 dimensions, reduced to 50 by PCA (as the
embedding analysis does). Each method maps the same 50-D points; trustworthiness (k = 5) is computed
on all points against the 256-D features with reportgen's chunked implementation (equal to
scikit-learn's). reportgen's row is whatever backend ``auto`` picks for N and the device.

Run: ``python -m benchmarks.bench_tsne [--device cuda] [--quick]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.manifold import TSNE

from benchmarks.common import gaussian_mixture, standalone_main, table, timed
from reportgen.analyses.embedding import EmbeddingParams, pca_project, run_tsne, tsne_backend
from reportgen.methods.tsne import trustworthiness

TARGET_SPEEDUP_AT_5K = 3.0


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    from openTSNE import TSNE as OpenTSNE

    dev = torch.device(device)
    sizes = [1000, 2000] if quick else [2000, 5000, 10000]
    p = EmbeddingParams()
    rows = []
    for n in sizes:
        feats = gaussian_mixture(n, 256, seed=n)
        x = pca_project(feats.astype(np.float64), 50, 0).astype(np.float32)
        high = torch.from_numpy(feats).to(dev)

        def trust(y: np.ndarray, high: torch.Tensor = high) -> float:
            return trustworthiness(high, torch.from_numpy(np.asarray(y)), 5)

        t_ours, (y_ours, name) = timed(lambda x=x: run_tsne(x, p, 0, dev), dev)
        t_sk, y_sk = timed(
            lambda x=x: TSNE(2, init="pca", learning_rate="auto", random_state=0).fit_transform(x)
        )
        t_ot, y_ot = timed(lambda x=x: np.asarray(OpenTSNE(random_state=0, verbose=False).fit(x)))
        rows.append(
            {
                "n": n,
                "backend": name,
                "auto": tsne_backend(n, p, dev),
                "reportgen_s": t_ours,
                "sklearn_s": t_sk,
                "opentsne_s": t_ot,
                "speedup_vs_sklearn": t_sk / t_ours,
                "speedup_vs_opentsne": t_ot / t_ours,
                "trust_reportgen": trust(y_ours),
                "trust_sklearn": trust(y_sk),
                "trust_opentsne": trust(y_ot),
            }
        )
    at5k = [r for r in rows if r["n"] == 5000]
    meets = (
        bool(at5k)
        and at5k[0]["speedup_vs_sklearn"] >= TARGET_SPEEDUP_AT_5K
        and at5k[0]["trust_sklearn"] - at5k[0]["trust_reportgen"] <= 0.01
    )
    return {
        "benchmark": "tsne",
        "device": device,
        "rows": rows,
        "meets_target": meets if at5k else None,
    }


def markdown(r: dict[str, Any]) -> str:
    return (
        f"t-SNE of a 20-cluster Gaussian mixture (256-D → PCA 50 → 2), {r['device']}; "
        "trustworthiness k = 5 on all points. scikit-learn: `TSNE` defaults (Barnes-Hut, "
        "1000 iterations); openTSNE: defaults.\n\n"
        + table(
            [
                "N",
                "reportgen backend",
                "reportgen s",
                "scikit-learn s",
                "openTSNE s",
                "× vs sklearn",
                "× vs openTSNE",
                "trust reportgen",
                "trust sklearn",
                "trust openTSNE",
            ],
            [
                [
                    x["n"],
                    x["backend"],
                    x["reportgen_s"],
                    x["sklearn_s"],
                    x["opentsne_s"],
                    x["speedup_vs_sklearn"],
                    x["speedup_vs_opentsne"],
                    x["trust_reportgen"],
                    x["trust_sklearn"],
                    x["trust_opentsne"],
                ]
                for x in r["rows"]
            ],
        )
    )


def main() -> None:
    standalone_main(__doc__, run, markdown)


if __name__ == "__main__":
    main()
