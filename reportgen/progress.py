"""Progress bars on a terminal; silent with --quiet or when stderr is not a TTY."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.enabled = not quiet and sys.stderr.isatty()

    def __call__(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        if not self.enabled:
            yield from iterable
            return
        yield from tqdm(
            iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr
        )

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)
