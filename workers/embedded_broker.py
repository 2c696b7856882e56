"""The embedded broker as the workers use it: kombu's SQL transport polled ten times a second, which jobs its
messages name (waiting, or taken by a worker), and taken messages purged an hour after they were taken.

kombu's SQL transport sleeps ``polling_interval`` (1 s) each time it finds its queues empty, so work queued on an
idle worker (a job, a live map tile) waited up to a second, half a second on average, before it started. Its
transport options go to SQLAlchemy's ``create_engine``, which refuses a ``polling_interval``: the interval is set
on this subclass instead, which the workers name as their transport (``GEOADAPT_BROKER_POLL_S`` sets another: each
look costs a few SQLite reads, about 2 % of a core per idle consumer at 0.1 s). Producers (the API) never poll, so
they keep the stock transport; both read and write the same tables.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from kombu.transport.sqlalchemy import Channel as SQLChannel
from kombu.transport.sqlalchemy import Transport as SQLTransport
from sqlalchemy import Connection, create_engine, inspect, text

from core.task_names import EMBEDDED_BROKER_POLL_S, RUN_JOB

#: the transport option kombu's virtual transports read their polling interval from
POLLING_OPTION = "polling_interval"
#: the URL prefix that names kombu's SQL transport (``sqla+sqlite:///...``)
SQL_PREFIX = "sqla+"
#: kombu's table of messages (its default name; the service sets no other)
MESSAGE_TABLE = "kombu_message"
#: seconds a taken message is kept: kombu's SQL transport keeps every one for good (live tiles add one each)
TAKEN_KEPT_S = 3600.0


class _EmbeddedBrokerChannel(SQLChannel):
    def _engine_from_config(self):
        # kombu hands create_engine every transport option but its own, and create_engine refuses polling_interval
        # (which the transport reads): hidden for the call
        client = self.connection.client
        options = client.transport_options
        client.transport_options = {k: v for k, v in options.items() if k != POLLING_OPTION}
        try:
            return super()._engine_from_config()
        finally:
            client.transport_options = options


class EmbeddedBrokerTransport(SQLTransport):
    """The SQL transport polled every EMBEDDED_BROKER_POLL_S, or every ``broker_transport_options['polling_interval']``
    seconds where given (``GEOADAPT_BROKER_POLL_S``)."""

    Channel = _EmbeddedBrokerChannel
    polling_interval = EMBEDDED_BROKER_POLL_S


def worker_polling(broker_url: str, seconds: float) -> dict:
    """The broker transport options that make a worker look at the embedded broker's empty queues every ``seconds``
    (none for another broker: Redis blocks on its queues instead of polling)."""
    return {POLLING_OPTION: seconds} if broker_url.startswith(SQL_PREFIX) else {}


def worker_broker(broker_url: str) -> dict:
    """Celery settings that make a worker consume ``broker_url`` through :class:`EmbeddedBrokerTransport` where it
    names the SQL transport (a URL's ``sqla+`` prefix would override the transport setting, so it goes); any other
    broker as it is."""
    if not broker_url.startswith(SQL_PREFIX):
        return {"broker_url": broker_url}
    return {"broker_url": broker_url[len(SQL_PREFIX):],
            "broker_transport": f"{__name__}:{EmbeddedBrokerTransport.__name__}"}


@contextmanager
def _messages_table(broker_url: str) -> Iterator[Connection | None]:
    """A transaction on the SQL broker's database, committed on leaving; None where kombu has not yet made its
    message table (no message sent so far)."""
    engine = create_engine(broker_url[len(SQL_PREFIX):], connect_args={"timeout": 30})
    try:
        with engine.begin() as conn:
            yield conn if inspect(conn).has_table(MESSAGE_TABLE) else None
    finally:
        engine.dispose()


@dataclass(frozen=True)
class TaskMessages:
    """The first arguments (a job's or a dataset's id) of one task's messages in the embedded broker, by what became
    of the message."""
    waiting: frozenset[str]  # still in a queue: a worker will take it
    taken: frozenset[str]  # taken by a worker, acknowledged or not (the SQL transport keeps both, invisible)


def task_messages(broker_url: str, task: str = RUN_JOB) -> TaskMessages | None:
    """Read every message of ``task`` (run_job by default) in the embedded broker (None for any other broker).

    A message the SQL transport has handed to a worker stays invisible whatever becomes of it: a worker killed
    after taking a job's message and before claiming the job (a few milliseconds in which Celery's main process
    holds the message and a pool process has not yet started it) leaves a queued job that no message will ever
    start. Redis gives such a message back after its visibility timeout; here the orphan sweep sends it again
    (workers.tasks.sweep_orphans), and these sets are what tells such a job from one still waiting its turn."""
    if not broker_url.startswith(SQL_PREFIX):
        return None
    with _messages_table(broker_url) as conn:
        rows = conn.execute(text(f"SELECT visible, payload FROM {MESSAGE_TABLE}")).all() if conn else []
    waiting, taken = set(), set()
    for visible, payload in rows:
        first = _first_argument(payload, task)
        if first is not None:
            (waiting if visible else taken).add(first)
    return TaskMessages(frozenset(waiting), frozenset(taken))


def _first_argument(payload: str, task: str) -> str | None:
    """The first argument of a Celery message (protocol 2, JSON body) of ``task``; None for any other message."""
    try:
        message = json.loads(payload)
        if message.get("headers", {}).get("task") != task:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None  # not a message this project sent


def purge_taken(broker_url: str, kept_s: float = TAKEN_KEPT_S) -> int:
    """Delete the messages the SQL transport handed to a worker more than ``kept_s`` ago; returns how many.

    The transport never deletes a message: it marks it taken and stamps the time (its ``timestamp`` column is
    empty until then: kombu sets it on update only), and what the worker does with it afterwards lives in the
    worker's memory alone: a rejected or requeued message is written again as a new one. So the taken rows only
    grow the file (every job, shard and live tile leaves one) and the scans of :func:`task_messages`. The orphan
    sweep reads them before it purges, so a job whose message died with its worker is found first."""
    if not broker_url.startswith(SQL_PREFIX):
        return 0
    cutoff = datetime.now() - timedelta(seconds=kept_s)  # the transport stamps local time
    with _messages_table(broker_url) as conn:
        if conn is None:
            return 0
        return conn.execute(text(f"DELETE FROM {MESSAGE_TABLE} WHERE visible = :taken AND timestamp < :cutoff"),
                            {"taken": False, "cutoff": cutoff.isoformat(sep=" ")}).rowcount

