"""The answer cache: the summary half of JSON answers, serialized, per process.

An answer is its summary rows UNION ALL its tail (shared.queries). The summary half
changes only when the summary version does (shared.answer_version: the rollup's
progress and generation; ticks run once a minute), so it is kept, serialized row by
row, under the request and that version (`Key`), and each request reads only:

- the version and its tail's signature (which it reads for its ETag anyway);
- when the tail holds rows of this answer: the answer's rows at the keys the tail
  touches, whole (summary and tail rows folded in SQL: shared.queries.patch_rows),
  which take their keys' places in the kept rows (a new key is inserted in order).

Never stale: the key holds the summary version read in the request's own snapshot, and
the patch is read in that snapshot too; an entry of an older version is never looked
up again (and ages out). The bytes are those the uncached answer would have: each row
serialized as orjson serializes it in the answer, the envelope as `success` writes it.

Only answers ordered by their keys (queries.cacheable), in JSON, and without key or
channel names (those are live names from the gateway's tables, looked up per answer)
are kept. Memory is bounded by the serialized bytes kept (least recently used first
out); an answer larger than a quarter of the bound is not kept.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from shared import queries

from .jsonprovider import dumps_bytes

if TYPE_CHECKING:
    from .etag import Request, Tagged

# Per process (gunicorn worker): 2,160 hourly rows of /self are about 400 kB.
MAX_BYTES = 64 * 1024 * 1024
ENVELOPE = (b'{"success":true,"message":"","data":[', b"]}")


def keeps(shape: queries.Shape, csv: bool) -> bool:
    """Whether answers of `shape` are kept (see the module's docstring)."""
    named = "token_id" in shape.columns or "channel_id" in shape.columns
    return not csv and not named and queries.cacheable(shape)


@dataclass(frozen=True)
class Key:
    asked: Request  # who asks, what, in which format
    summary_version: tuple[Any, ...]
    settings: str


@dataclass
class Half:
    """A summary half: its rows' keys in the answer's order, and each row serialized."""

    keys: list[tuple[Any, ...]]
    parts: list[bytes]
    index: dict[tuple[Any, ...], int]
    size: int


class AnswerCache:
    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, Half] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _get(self, key: Key) -> Half | None:
        with self._lock:
            half = self._entries.get(key)
            if half is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return half

    def _put(self, key: Key, half: Half) -> None:
        if half.size > self.max_bytes // 4:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = half
            self._bytes += half.size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.size

    def body(self, conn: Connection, asked: Request, tagged: Tagged) -> bytes:
        """The JSON body of the answer `asked`, read on `conn`, the snapshot `tagged`'s
        version and tail signature were read in."""
        shape, view, start, end, values = asked.shape, asked.view, asked.start, asked.end, dict(asked.values)
        version = tagged.version
        assert version is not None
        key = Key(asked, version.summary, tagged.settings)
        names = shape.sort_keys  # rows are in this order of their keys
        half = self._get(key)
        if half is None:
            rows = queries.summary_half(conn, shape, view, start, end, values, version.progress)
            half = _half(rows, lambda row: tuple(row[k] for k in names))
            if half is None:  # not in key order (it always is): answered whole, not kept
                whole = queries.usage(conn, shape, view, start, end, values, version.progress)
                return _body(dumps_bytes(r) for r in whole)
            self._put(key, half)
        if tagged.tail is None or tagged.tail[0] == 0:  # no tail, or none of its rows in this answer
            return _body(half.parts)
        parts = list(half.parts)
        new: list[tuple[tuple[Any, ...], bytes]] = []
        for row in queries.patch_rows(conn, shape, view, start, end, values, version.progress):
            k = tuple(row[n] for n in names)
            at = half.index.get(k)
            if at is None:
                new.append((k, dumps_bytes(row)))  # a key the summary rows lack
            else:
                parts[at] = dumps_bytes(row)
        return _body(_merge(half.keys, parts, new) if new else parts)


def _merge(keys: list[tuple[Any, ...]], parts: list[bytes], new: list[tuple[tuple[Any, ...], bytes]]) -> list[bytes]:
    """`parts` (in the order of `keys`) with the `new` rows (in order, keys not among
    `keys`) each in its place."""
    out: list[bytes] = []
    i = 0
    for k, part in new:
        j = bisect_left(keys, k, lo=i)
        out.extend(parts[i:j])
        out.append(part)
        i = j
    out.extend(parts[i:])
    return out


def _body(parts: Iterable[bytes]) -> bytes:
    # One join makes the body: the envelope goes into the first and last rows' copies,
    # not around the joined rows (each `+` would copy 400 kB again; glibc serves such a
    # block by mmap, so every copy is fresh pages to fault in: a tenth of the answer's CPU).
    rows = parts if isinstance(parts, list) else list(parts)
    if not rows:
        return ENVELOPE[0] + ENVELOPE[1]
    if len(rows) == 1:
        return ENVELOPE[0] + rows[0] + ENVELOPE[1]
    return b",".join([ENVELOPE[0] + rows[0], *rows[1:-1], rows[-1] + ENVELOPE[1]])


def _half(rows: Sequence[dict[str, Any]], key_of: Callable[[dict[str, Any]], tuple[Any, ...]]) -> Half | None:
    keys = [key_of(r) for r in rows]
    try:
        if any(a >= b for a, b in pairwise(keys)):
            return None
    except TypeError:  # a NULL among the keys (none is): not comparable, not kept
        return None
    parts = [dumps_bytes(r) for r in rows]
    size = sum(map(len, parts)) + 200 * len(parts)  # the bytes and about what each row's key and index entry hold
    return Half(keys, parts, {k: i for i, k in enumerate(keys)}, size)
