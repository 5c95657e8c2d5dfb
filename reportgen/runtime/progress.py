"""Progress bars on a terminal; silent with --quiet or when stderr is not a TTY."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.enabled = not quiet and sys.stderr.isatty()

    def __call__(
        self,
        iterable: Iterable[T],
        desc: str,
        total: int | None = None,
        label: Callable[[T], str] | None = None,
    ) -> Iterator[T]:
        """Iterate with a bar; ``label`` names the item being worked on (shown after the bar)."""
        if not self.enabled:
            yield from iterable
            return
        bar = tqdm(
            iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr
        )
        for item in bar:
            if label is not None:
                bar.set_postfix_str(label(item))
            yield item

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)
