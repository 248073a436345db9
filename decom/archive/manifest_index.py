"""The verifier's view of manifest.json, read without a Python dict per version.

`json.loads` of a manifest holds every version entry as a dict at once (~1 KB each with its strings:
~100 MB at 100,000 versions, the verifier's only memory that grows with the archive). Here the
top-level object is decoded value by value and the `versions` array is only located; its entries
are then decoded one at a time (`entries`), each let go once checked; what the content checks need is
kept by expected_index.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip(text: str, at: int) -> int:
    match = _SPACE.match(text, at)
    return match.end() if match else at


def entries(text: str, start: int) -> Iterator[tuple[Any, int]]:
    """(entry, position after it) for each entry of the JSON array whose '[' is at `start`, decoded
    one at a time. ValueError when the array is malformed."""
    at = _skip(text, start + 1)
    if text.startswith("]", at):
        return
    while True:
        item, at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        yield item, at
        if text.startswith(",", at):
            at = _skip(text, at + 1)
        elif not text.startswith("]", at):
            raise ValueError(f"expected ',' or ']' at {at}")
        else:
            return


def _array_end(text: str, start: int) -> int:
    """The position after the ']' of the array whose '[' is at `start` (its entries are decoded and dropped)."""
    closing = _skip(text, start + 1)  # where ']' is when the array is empty
    for _, after in entries(text, start):
        closing = after
    return closing + 1


def split_versions(text: str) -> tuple[dict[str, Any], int | None]:
    """The top-level object of `text` without its `versions` array, and the position of that array's
    '[' (None when there is no such array; a `versions` that is not an array stays in the object).
    Duplicate keys: the last one counts, as with json.loads. ValueError when `text` is not exactly
    one JSON object."""
    at = _skip(text, 0)
    if not text.startswith("{", at):
        raise ValueError("not a JSON object")
    top: dict[str, Any] = {}
    versions: int | None = None
    at = _skip(text, at + 1)
    closed = text.startswith("}", at)
    at += 1 if closed else 0
    while not closed:
        key, at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        if not isinstance(key, str) or not text.startswith(":", at):
            raise ValueError(f"expected a key and ':' at {at}")
        at = _skip(text, at + 1)
        if key == "versions" and text.startswith("[", at):
            versions, at = at, _array_end(text, at)
            top.pop("versions", None)
        else:
            top[key], at = _DECODER.raw_decode(text, at)
            versions = None if key == "versions" else versions
        at = _skip(text, at)
        if text.startswith(",", at):
            at = _skip(text, at + 1)
        elif text.startswith("}", at):
            at, closed = at + 1, True
        else:
            raise ValueError(f"expected ',' or '}}' at {at}")
    if _skip(text, at) != len(text):
        raise ValueError("extra data after the object")
    return top, versions
