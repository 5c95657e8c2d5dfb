"""PDF output with WeasyPrint, from the same HTML, with a fetcher that allows ``data:`` URIs only.

WeasyPrint's default fetcher follows ``file://`` and ``http(s)://`` (local file reads, SSRF). The
report embeds everything as ``data:`` URIs, so any other URL is a bug or an attack: it stops the
rendering with :class:`ForbiddenURL` instead of being fetched.

Relative references (``src="logo.png"``) are not even handed to a fetcher when there is no base
URL: WeasyPrint logs them and drops them. To make them an error as well, the document gets a base
URL under a scheme no fetcher serves, so every relative reference turns into an absolute URL that
reaches our fetcher and is refused.
"""

from __future__ import annotations

import logging
from typing import Any

# Relative references resolve against this and reach the fetcher as ``file:///…`` URLs, which it
# refuses before anything is opened. The folder does not exist; nothing is ever read from it.
_REFUSING_BASE = "file:///reportgen-refuses-relative-urls/"


class ForbiddenURL(Exception):
    """The report tried to load something that is not an embedded data: URI."""


def _message(url: str) -> str:
    shown = url.removeprefix(_REFUSING_BASE)
    kind = "relative URL" if shown != url else "URL"
    return f"refused to fetch {kind} {shown[:80]!r}: a report may only embed data: URIs"


def is_data_uri(url: str) -> bool:
    return url[:5].lower() == "data:"


def _make_fetcher(refused: list[str]) -> Any:
    from weasyprint import urls

    base = getattr(urls, "URLFetcher", None)
    if base is None:  # WeasyPrint < 67: fetchers are plain functions; errors become warnings.

        def fetch_fn(url: str, *args: Any, **kwargs: Any) -> Any:
            if not is_data_uri(url):
                refused.append(url)
                raise ForbiddenURL(_message(url))
            return urls.default_url_fetcher(url, *args, **kwargs)

        return fetch_fn

    # WeasyPrint swallows every fetch error (a missing image is a warning) except this kind.
    class Refused(urls.FatalURLFetchingError):
        pass

    class DataOnlyFetcher(base):  # type: ignore[misc,valid-type]
        """Serves data: URIs; refuses everything else before any handler sees it."""

        def __init__(self) -> None:
            # Belt and braces: even the parent class would only open data: URLs.
            super().__init__(
                allowed_protocols=("data",), allow_redirects=False, fail_on_errors=True
            )

        def fetch(self, url: str, headers: Any = None) -> Any:
            if not is_data_uri(url):
                refused.append(url)
                raise Refused(_message(url))
            return super().fetch(url, headers)

    return DataOnlyFetcher()


def html_to_pdf(html: str) -> bytes:
    """Render ``html`` to PDF bytes.

    Deterministic: WeasyPrint writes dates only when the HTML carries ``dcterms.created`` /
    ``dcterms.modified`` meta tags (the report has none), and the trailer's /ID is derived from
    the content (an MD5 of the PDF objects) rather than left out or made random.

    Raises :class:`ForbiddenURL` when the HTML references anything but a data: URI.
    """
    import weasyprint

    # WeasyPrint logs every screen-only CSS property it ignores; only real errors matter here.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    refused: list[str] = []
    try:
        doc = weasyprint.HTML(
            string=html, base_url=_REFUSING_BASE, url_fetcher=_make_fetcher(refused)
        )
        pdf = doc.write_pdf(pdf_identifier=True)
    except BaseException as exc:
        # WeasyPrint's fatal fetch error is a BaseException: report the refusal as ours, but let
        # Ctrl-C and friends through untouched.
        if refused and not isinstance(exc, KeyboardInterrupt | SystemExit):
            raise ForbiddenURL(_message(refused[0])) from None
        raise
    # Older WeasyPrint turns fetch errors into warnings and carries on: still an error here.
    if refused:
        raise ForbiddenURL(_message(refused[0]))
    assert pdf is not None
    return bytes(pdf)
