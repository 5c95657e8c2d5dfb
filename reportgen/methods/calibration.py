"""Calibration: equal-width confidence bins, expected calibration error (ECE).

Shared by the audit section and the model comparison, so both report the same ECE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Calibration:
    ece: float
    bin_edges: np.ndarray
    bin_accuracy: np.ndarray
    """NaN for empty bins."""
    bin_confidence: np.ndarray
    bin_count: np.ndarray


def calibration(confidence: torch.Tensor, correct: torch.Tensor, bins: int) -> Calibration:
    """Equal-width confidence bins (right-closed, first bin includes 0); ECE = Σ |acc - conf| · n_b / N."""
    conf = confidence.double().cpu()
    ok = correct.double().cpu()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf, edges[1:-1], right=False)  # bin b holds (edges[b], edges[b+1]]
    count = torch.bincount(which, minlength=bins).double()
    acc_sum = torch.bincount(which, weights=ok, minlength=bins)
    conf_sum = torch.bincount(which, weights=conf, minlength=bins)
    nz = count > 0
    acc = torch.full((bins,), float("nan"), dtype=torch.float64)
    mean_conf = torch.full((bins,), float("nan"), dtype=torch.float64)
    acc[nz] = acc_sum[nz] / count[nz]
    mean_conf[nz] = conf_sum[nz] / count[nz]
    ece = float(((acc[nz] - mean_conf[nz]).abs() * count[nz]).sum() / max(1.0, float(count.sum())))
    return Calibration(
        ece, edges.numpy(), acc.numpy(), mean_conf.numpy(), count.numpy().astype(int)
    )
