"""File names as the file system gives them, shown in a form that is safe and reversible.

POSIX names are bytes: a modality or an SMB share can write names that are not UTF-8 (Python
sees them as lone surrogates, PEP 383), names with newlines, leading dashes, or 255 bytes.
Such a name must be judged like any other, yet it cannot go as is into a log line (a newline
forges a second line), an SQLite TEXT column or a UTF-8 MQTT payload (a surrogate cannot be
encoded).  :func:`printable` maps every name to text that can, and :func:`original` maps it
back to the exact bytes:

* each character of valid UTF-8 stays, except control characters (C0, DEL, C1) and ``%``;
* every other byte is written ``%XX`` (upper-case hex), ``%`` itself as ``%25``.

So ordinary names (``1.2.840.5.dcm``, ``Röntgen 01.dcm``) are shown unchanged, and
``b"\\xff\\xfe.dcm"`` becomes ``%FF%FE.dcm``; ``urllib.parse.unquote_to_bytes`` reverses it too.
"""

from __future__ import annotations

import os
import unicodedata
import urllib.parse


def _escape(text: str) -> str:
    out = []
    for ch in text:
        if ch == "%" or unicodedata.category(ch) == "Cc":
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def printable(name: str | bytes | os.PathLike[str]) -> str:
    """The safe, reversible text of a file name or path (see the module docstring).

    ``name`` may be bytes, or text from :func:`os.fsdecode` (non-UTF-8 bytes as surrogates).
    The result is valid UTF-8 without control characters; :func:`original` undoes it.
    """
    raw = name if isinstance(name, bytes) else os.fsencode(name)
    out = []
    at = 0
    while at < len(raw):
        try:
            # Decode the longest valid run, escape the byte that stops it, go on after it.
            out.append(_escape(raw[at:].decode("utf-8")))
            break
        except UnicodeDecodeError as exc:
            out.append(_escape(raw[at : at + exc.start].decode("utf-8")))
            out.append(f"%{raw[at + exc.start]:02X}")
            at += exc.start + 1
    return "".join(out)


def original(shown: str) -> bytes:
    """The exact bytes of the name that :func:`printable` showed as ``shown``."""
    return urllib.parse.unquote_to_bytes(shown)


def original_path(shown: str) -> str:
    """The name :func:`printable` showed as ``shown``, as a path string for ``open``."""
    return os.fsdecode(original(shown))
