"""The run's environment: device, seeds and determinism, library versions."""

from __future__ import annotations

import platform
import random

import numpy as np
import torch

from reportgen.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"run.device: {spec} requested but no CUDA device is available; use --device cpu"
            )
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"run.device: {spec} does not exist ({torch.cuda.device_count()} CUDA device(s))"
            )
        return dev
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("run.device: mps requested but not available; use --device cpu")
    return torch.device(spec)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    # Deterministic kernels where torch offers them; warn (not fail) where it does not.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    # TF32 matmuls/convs on Ampere+ differ from the CPU by ~1e-3 relative: with run.precision fp32
    # the maps must match a CPU run, so keep full fp32 (bf16 is an explicit opt-in).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def library_versions() -> dict[str, str]:
    import matplotlib
    import sklearn
    import torchvision

    from reportgen.version import __version__

    return {
        "reportgen": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
    }
