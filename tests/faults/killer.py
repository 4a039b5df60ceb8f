"""A Celery app module that kills its own process in the middle of a rollup tick.

    KILLER_DIR=/tmp/x celery -A tests.faults.killer worker ...

It is the project's worker app (`worker.celery`, tasks and signals included) plus
SQLAlchemy event listeners on every Engine. During a rollup task each event is numbered:
`before <statement>` and `after <statement>` around every statement the tick sends,
`commit` when a transaction commits (fired before the COMMIT reaches the server), and
`postrun` once the task has returned (before Celery acknowledges it). Control files in
KILLER_DIR:

- plan.json {"id": k, "event": n}: the next rollup task to start takes the plan (renames
  it, so that exactly one task does) and, at its n-th event, writes killed-<k>.json
  {"pid", "event", "what"} and SIGKILLs its own process -- the prefork child, or the
  whole worker with --pool solo. "event": 0 never kills: the task only records.
- done-<task id>.json {"plan": k or null, "events": [...]}: written when a rollup task
  has finished (after its last event), so that a test can wait for each tick it sent.
- tick-pid: the pid of the process running the current rollup task (for kills from
  outside, e.g. while one of the tick's statements waits for a lock).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import sqlalchemy as sa
from celery.signals import task_postrun, task_prerun

from worker import celery  # noqa: F401  (the project's app, with its tasks and signals)
from worker.app import ROLLUP_TASK

CONTROL = Path(os.environ.get("KILLER_DIR", "."))

_state: dict = {"active": False, "armed": None, "events": []}


def _write(name: str, payload) -> None:
    tmp = CONTROL / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, CONTROL / name)  # atomic: readers never see half a file


def _event(what: str) -> None:
    if not _state["active"]:
        return
    _state["events"].append(what)
    armed = _state["armed"]
    if armed is not None and armed["event"] == len(_state["events"]):
        _write(f"killed-{armed['id']}.json", {"pid": os.getpid(), "event": armed["event"], "what": what})
        os.kill(os.getpid(), signal.SIGKILL)


def _short(statement: str) -> str:
    return " ".join(statement.split())[:70]


@sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
def _before(conn, cursor, statement, parameters, context, executemany):
    _event(f"before {_short(statement)}")


@sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
def _after(conn, cursor, statement, parameters, context, executemany):
    _event(f"after {_short(statement)}")


@sa.event.listens_for(sa.engine.Engine, "commit")
def _commit(conn):
    _event("commit")


@task_prerun.connect
def _prerun(sender=None, **_):
    if getattr(sender, "name", None) != ROLLUP_TASK:
        return
    (CONTROL / "tick-pid").write_text(str(os.getpid()))
    armed = None
    mine = CONTROL / f"armed-{os.getpid()}.json"
    try:
        os.rename(CONTROL / "plan.json", mine)  # only one task takes a plan
        armed = json.loads(mine.read_text())
    except FileNotFoundError:
        pass
    _state.update(active=True, armed=armed, events=[])


@task_postrun.connect
def _postrun(sender=None, task_id=None, **_):
    if getattr(sender, "name", None) != ROLLUP_TASK or not _state["active"]:
        return
    _event("postrun")
    _state["active"] = False
    armed = _state["armed"]
    _write(f"done-{task_id}.json", {"plan": armed["id"] if armed else None, "events": _state["events"]})
