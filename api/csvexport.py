"""CSV answers (`format=csv`, or `Accept: text/csv`): the same rows as the JSON, as
RFC 4180 text with a header row, streamed.

A text cell that a spreadsheet would read as a formula (starting with =, +, -, @, or a
tab or carriage return, which some read past) gets a leading apostrophe: a model, key
or user name chosen by a gateway user must not run in an operator's spreadsheet.
Numbers are written as they are.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from flask import Request

MIMETYPE = "text/csv"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def prefers_csv(request: Request) -> bool:
    """The Accept header ranks text/csv above JSON (absent or */*: JSON)."""
    # On a tie best_match keeps the first: JSON.
    return request.accept_mimetypes.best_match(["application/json", MIMETYPE]) == MIMETYPE


def neutralize(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def lines(header: Sequence[str], chunks: Iterable[Sequence[dict[str, Any]]]) -> Iterator[str]:
    """The header, then the rows of each chunk (dicts keyed by the header's names), one
    string per chunk so that memory holds one chunk at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    yield buffer.getvalue()
    for chunk in chunks:
        buffer.seek(0)
        buffer.truncate()
        writer.writerows([neutralize(row[name]) for name in header] for row in chunk)
        yield buffer.getvalue()
