"""t-SNE in native code (scikit-learn, openTSNE), run in a child process.

scikit-learn's Barnes-Hut and openTSNE's FFT t-SNE are C/C++ extensions that have segfaulted on
inputs the checks in :mod:`reportgen.tsne` now reject (equal points, extreme scales). A crash
that no check foresaw must cost the embedding section, not the whole report: the fit runs in a
fresh ``python -m reportgen.native_tsne`` process (arrays in and out through files), which
imports only NumPy and the t-SNE library. Same inputs and seed, so the same map as in-process.

Child protocol: ``python -m reportgen.native_tsne IN.npz OUT.npy``; ``IN.npz`` holds ``x``
(N×D float32), ``method`` (``sklearn`` | ``opentsne``), ``perplexity``, ``seed`` and, for
openTSNE, the precomputed neighbours ``idx``/``dist``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


class NativeCrash(RuntimeError):
    """The child process died (a signal or an error) instead of returning a map."""


def _fit(
    x: np.ndarray,
    method: str,
    perplexity: float,
    seed: int,
    idx: np.ndarray | None,
    dist: np.ndarray | None,
) -> np.ndarray:
    if method == "opentsne":
        from openTSNE import TSNE as OpenTSNE
        from openTSNE.affinity import PerplexityBasedNN
        from openTSNE.nearest_neighbors import PrecomputedNeighbors

        assert idx is not None and dist is not None
        affinities = PerplexityBasedNN(
            perplexity=perplexity,
            knn_index=PrecomputedNeighbors(idx, dist),
            verbose=False,
        )
        emb = OpenTSNE(
            n_components=2,
            perplexity=perplexity,
            initialization="pca",
            random_state=seed,
            n_jobs=1,
            negative_gradient_method="fft",
            verbose=False,
        ).fit(x, affinities=affinities)
        return np.asarray(emb, dtype=np.float64)
    from sklearn.manifold import TSNE

    out = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
        n_jobs=1,
    ).fit_transform(x)
    return np.asarray(out, dtype=np.float64)


def fit_isolated(
    x: np.ndarray,
    method: str,
    perplexity: float,
    seed: int,
    idx: np.ndarray | None = None,
    dist: np.ndarray | None = None,
    timeout: float | None = None,
) -> np.ndarray:
    """The 2-D t-SNE map of ``x``, fitted in a child process. Raises :class:`NativeCrash`."""
    with tempfile.TemporaryDirectory(prefix="reportgen-tsne-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npy"
        arrays: dict[str, np.ndarray] = {
            "x": np.asarray(x),  # memory layout kept: it changes BLAS sums, so the map
            "method": np.array(method),
            "perplexity": np.array(perplexity, dtype=np.float64),
            "seed": np.array(seed, dtype=np.int64),
        }
        if idx is not None and dist is not None:
            arrays["idx"], arrays["dist"] = idx, dist
        np.savez(src, **arrays)  # type: ignore[arg-type]
        done = subprocess.run(
            [sys.executable, "-m", "reportgen.methods.native_tsne", str(src), str(dst)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ),
        )
        if done.returncode != 0 or not dst.is_file():
            if done.returncode < 0:
                name = signal.Signals(-done.returncode).name
                raise NativeCrash(f"the {method} t-SNE crashed in native code ({name})")
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise NativeCrash(f"the {method} t-SNE failed ({last})")
        return np.load(dst, allow_pickle=False)


def main(argv: list[str]) -> int:
    src, dst = argv
    with np.load(src, allow_pickle=False) as data:
        emb = _fit(
            data["x"],
            str(data["method"]),
            float(data["perplexity"]),
            int(data["seed"]),
            data["idx"] if "idx" in data.files else None,
            data["dist"] if "dist" in data.files else None,
        )
    np.save(dst, emb)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
