"""User-facing errors: one line that names the file, key or layer and says what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReportgenError(Exception):
    """An input problem the user can fix. The message is shown as one line, without a traceback."""

    exit_code = 2
    """The command's exit status for this error (2: bad input, before any work)."""


class ConfigError(ReportgenError):
    """A bad configuration key or value."""


class CheckpointError(ReportgenError):
    """A checkpoint that cannot be loaded safely or does not fit the architecture."""


class DataError(ReportgenError):
    """An unusable data folder (missing, empty, nothing readable)."""


class LayerError(ReportgenError):
    """A layer name that is not in the model."""


class OutputWriteError(ReportgenError):
    """The outputs could not be written (disk full, a file-size limit, an I/O error): the work
    was done, the previous report is unchanged, and nothing of the new one replaced it."""

    exit_code = 4


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to ``name`` (for "did you mean" hints).

    Only names nearly as close as the best one are kept, so that ``htm`` suggests ``html`` and
    not also ``md``.
    """
    pool = list(dict.fromkeys(candidates))
    scored = sorted(
        ((difflib.SequenceMatcher(None, name, c).ratio(), c) for c in pool),
        key=lambda sc: -sc[0],
    )
    if scored and scored[0][0] >= 0.4:
        best = scored[0][0]
        return [c for r, c in scored if r >= max(0.4, 0.75 * best)][:n]
    return [c for c in pool if name and (name in c or c in name)][:n]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = nearest(name, candidates)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
