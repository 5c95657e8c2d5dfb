"""PDF output with WeasyPrint, from the same HTML, with a fetcher that allows ``data:`` URIs only.

WeasyPrint's default fetcher follows ``file://`` and ``http(s)://`` (local file reads, SSRF). The
report embeds everything as ``data:`` URIs, so any other URL is a bug or an attack: it stops the
rendering with :class:`ForbiddenURL` instead of being fetched.
"""

from __future__ import annotations

from typing import Any


class ForbiddenURL(Exception):
    """The report tried to load something that is not an embedded data: URI."""


def _message(url: str) -> str:
    return f"refused to fetch {url[:80]!r}: a report may only embed data: URIs"


def _make_fetcher(refused: list[str]) -> Any:
    from weasyprint import urls

    base = getattr(urls, "URLFetcher", None)
    if base is None:  # WeasyPrint < 67: fetchers are plain functions; errors become warnings.

        def fetch_fn(url: str, *args: Any, **kwargs: Any) -> Any:
            if not url.startswith("data:"):
                refused.append(url)
                raise ForbiddenURL(_message(url))
            return urls.default_url_fetcher(url, *args, **kwargs)

        return fetch_fn

    class Fatal(urls.FatalURLFetchingError):
        pass

    class DataOnlyFetcher(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__(
                allowed_protocols=("data",), allow_redirects=False, fail_on_errors=True
            )

        def fetch(self, url: str, headers: Any = None) -> Any:
            if not url.startswith("data:"):
                refused.append(url)
                raise Fatal(_message(url))
            return super().fetch(url, headers)

    return DataOnlyFetcher()


def html_to_pdf(html: str) -> bytes:
    """Render ``html`` to PDF bytes. Deterministic: no dates unless the HTML carries them."""
    import logging

    import weasyprint

    # WeasyPrint logs every screen-only CSS property it ignores; only real errors matter here.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    refused: list[str] = []
    try:
        doc = weasyprint.HTML(string=html, base_url=None, url_fetcher=_make_fetcher(refused))
        pdf = doc.write_pdf()
    except BaseException as exc:
        if refused:
            raise ForbiddenURL(_message(refused[0])) from None
        if isinstance(exc, Exception):
            raise
        raise
    if refused:
        raise ForbiddenURL(_message(refused[0]))
    assert pdf is not None
    return bytes(pdf)
