"""t-SNE's native code runs in a child process: the same map as in-process, and a crash there
costs the embedding section, never the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_config, write_image_folder

from reportgen.api import run_report
from reportgen.methods.native_tsne import NativeCrash, _fit, fit_isolated


def test_child_map_equals_the_in_process_fit() -> None:
    x = np.random.default_rng(0).normal(size=(60, 6)).astype(np.float32)
    np.testing.assert_array_equal(
        fit_isolated(x, "sklearn", 8.0, 3), _fit(x, "sklearn", 8.0, 3, None, None)
    )


def test_a_native_crash_is_an_exception_not_the_end_of_the_process() -> None:
    # scikit-learn segfaults on equal points (see test_degenerate_inputs); here unguarded on purpose.
    x = np.tile(np.arange(8, dtype=np.float32), (12, 1))
    with pytest.raises(NativeCrash, match="crashed in native code \\(SIGSEGV\\)"):
        fit_isolated(x, "sklearn", 3.0, 0)


def test_the_report_survives_a_crash_in_t_sne(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reportgen.analyses.embedding as embedding

    def crash(*_a: object, **_k: object) -> np.ndarray:
        raise NativeCrash("the sklearn t-SNE crashed in native code (SIGSEGV)")

    monkeypatch.setattr(embedding, "fit_isolated", crash)
    write_image_folder(tmp_path / "images")
    cfg = make_config(
        tmp_path, {"model.weights": str(tiny_weights)}, analyses=["embedding", "audit"]
    )
    result = run_report(cfg)
    status = {s.name: (s.status, s.reason) for s in result.sections}
    assert status["embedding"][0] == "skipped" and "SIGSEGV" in (status["embedding"][1] or "")
    assert status["audit"] == ("ok", None)
    assert result.exit_code == 0 and (tmp_path / "out" / "report.html").is_file()
