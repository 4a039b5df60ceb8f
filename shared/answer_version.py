"""The version of an answer: what must move whenever its rows can change, so that an
ETag built from it (api.etag) is never stale and a cache keyed by it never serves an
old answer.

An answer (shared.queries) is the summary rows of its range UNION ALL the tail, the
logs the rollup has not counted yet, all read in one snapshot. Its rows can change only
when one of these does, and each is read in that snapshot:

1. what the rollup has counted: rollup_state.last_log_id and the rollup_gap ranges. A
   tick that changes summary rows changes them in the same transaction: it moves
   last_log_id over the logs it counts, and cuts the logs it counts inside a gap out of
   that gap (or forgets the gap). Retention's horizon, hours_kept_from, decides which
   hourly rows an answer reads.
2. every other change of summary rows, which moves none of those: a re-aggregation
   that changed rows, retention's compaction and deletion of old hours, the adoption
   of a new STATS_TIMEZONE, an upgrade. Each bumps rollup_state.generation
   (`bump_generation`) in the transaction that changes the rows.
3. the tail: logs only ever commit into it (new ids above last_log_id, or late ones
   inside a gap); retention deletes counted logs only. A signature of exactly the tail
   rows the answer reads (shared.queries.tail_signature: their number, largest and
   summed ids, under the answer's own WHERE) grows with every such commit, and is
   blind to other users' logs where the answer is one user's.

(1) and (2) are the summary version: the summary half of an answer is a function of it
and the request alone, which is what a cache of that half may be keyed by. With (3) it
is the data version. Read in the snapshot the answer is read in, the version describes
exactly that answer; read in an earlier snapshot (a streamed CSV answer reads its rows
in its own), it describes an older state than the rows sent, which is safe: any commit
between the two moves the version, so the ETag then matches nothing current.

Everything else an answer depends on goes into the ETag beside the version: who asks,
the normalized parameters, the format, the settings that shape answers and the code
(`code_version`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import models as m

# The packages whose code makes answers (their source, hashed).
_SOURCES = ("api", "shared")


def bump_generation(conn: Connection) -> None:
    """Move rollup_state.generation, in the caller's transaction (the one changing
    summary rows), under the rollup's lock like every writer of rollup_state."""
    s = m.rollup_state.c
    conn.execute(sa.update(m.rollup_state).where(s.id == 1).values(generation=s.generation + 1))


@lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of the installed code that builds answers: the package's version and
    every source file of api and shared (a fix that changes an answer's rows or their
    serialization changes it, released or not)."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        digest.update(metadata.version("usage-stats").encode())
    except metadata.PackageNotFoundError:
        pass
    root = Path(__file__).resolve().parent.parent
    for package in _SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
