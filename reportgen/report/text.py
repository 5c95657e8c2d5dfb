"""Strings from the real world made safe to show: file names that are not UTF-8, lone surrogates.

On POSIX a file name is bytes. Python hands names that are not valid UTF-8 over as ``str`` with
the undecodable bytes mapped to lone surrogates (U+DC80..U+DCFF, the ``surrogateescape`` error
handler), so ``os.fsencode(name)`` gives the exact bytes back. Such a string is a fine identifier
(open, stat and hash it through ``os.fsencode``) but cannot be encoded as UTF-8, so writing it
into HTML, JSON, a PDF or a matplotlib title fails. Two views, therefore:

* the exact ``str`` (surrogate-escaped) for opening files, matching and hashing;
* a display string from :func:`safe_text` / :func:`display_name` for everything a person reads.

The display string is plain valid Unicode: each undecodable byte is shown as ``\\xNN`` and any
other lone surrogate (one that did not come from a file name, e.g. from a config title) as
``\\uXXXX``.
"""

from __future__ import annotations

import unicodedata
from typing import Any

_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # surrogateescape maps byte 0xNN (>= 0x80) to U+DCNN


def _is_surrogate(ch: str) -> bool:
    return 0xD800 <= ord(ch) <= 0xDFFF


def _escape_surrogate(ch: str) -> str:
    code = ord(ch)
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def safe_text(s: object) -> str:
    """``s`` as a string that encodes as UTF-8: lone surrogates escaped, everything else kept.

    Undecodable file-name bytes (``\\udc80``..``\\udcff``) become ``\\x80``..``\\xff``; other
    lone surrogates become ``\\uXXXX``. Newlines and other characters are left alone (titles and
    captions use them), so this is the function for any user string about to be rendered.
    """
    text = s if isinstance(s, str) else str(s)
    if not any(_is_surrogate(ch) for ch in text):
        return text
    return "".join(_escape_surrogate(ch) if _is_surrogate(ch) else ch for ch in text)


def display_name(relpath: str) -> str:
    """A path or file name as shown to people: one printable line, valid UTF-8.

    On top of :func:`safe_text`, control characters (a newline or a tab in a file name, which
    would break tables, one-line messages and logs) are shown as ``\\xNN``. The result is for
    reading only; keep the original string as the identifier.
    """
    out = []
    for ch in safe_text(relpath):
        if unicodedata.category(ch) == "Cc":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def safe_data(obj: Any) -> Any:
    """``obj`` with :func:`safe_text` applied to every string in it, keys included.

    For plain data (dicts, lists, tuples, strings, numbers) about to be serialised, e.g.
    ``to_json(safe_data(summary))``: a lone surrogate becomes ``\\xNN``/``\\uXXXX`` text, which
    JSON then escapes properly, instead of failing to encode (or, with ``ensure_ascii``, being
    written as an unpaired ``\\udcff`` escape that strict JSON parsers reject).
    """
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, dict):
        return {safe_data(k): safe_data(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [safe_data(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(safe_data(v) for v in obj)
    return obj
