"""Statements sent straight on the wire, run back to back.

asyncpg opens each replay connection (authentication, TLS, start-up). Its query
paths then cost more client CPU than replaying a statement needs (a future, a
task wake-up and a Python frame per result), hold the rows of an
extended-protocol statement until it completes, and name prepared statements
their own way. :class:`WireChannel` takes the connection's transport over
(``transport.set_protocol``) and sends each statement as the original client
did: a simple-protocol ``Query``, or libpq's Parse/Bind/Execute/Sync with text
parameters (:func:`extended_messages`). From the replies it keeps only the
command tag and the SQLSTATE; result rows are dropped as they arrive, never
held. When a statement completes (``ReadyForQuery``), the caller's *step*
callback records it and hands over the next one at once, so a run of
statements costs no coroutine switch at all.

The transport goes back to asyncpg (:meth:`WireChannel.release`) before
asyncpg sends anything, and only between statements. The server's
``ParameterStatus`` messages are passed on to asyncpg, so it keeps track of
settings such as ``client_encoding``; a lost connection is reported to asyncpg
too, so ``Connection.is_closed()`` stays right.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from struct import Struct
from typing import Any

from replay.sqlstates import CONNECTION_LOST

Step = Callable[[bytes | None, str | None], bytes | None]
"""Called when a statement completes, with its command tag (None when it has none
or failed) and SQLSTATE (None on success); returns the next statement's messages
(:func:`query_message` or :func:`extended_messages`), or None to end the run."""

_LENGTH = Struct("!I")
_unpack_length = _LENGTH.unpack_from

_COMMAND_COMPLETE = ord("C")
_READY = ord("Z")
IDLE = ord("I")
"""ReadyForQuery's status outside a transaction block ("T": in one, "E": in a failed one)."""
_ERROR = ord("E")
_DATA_ROW = ord("D")
_PARAMETER_STATUS = ord("S")
_COPY_IN = ord("G")
_COPY_BOTH = ord("W")
_COPY_DATA = ord("d")
_SQLSTATE_FIELD = ord("C")

_NOT_REPLAYABLE = b"COPY FROM STDIN data is not in the log\0"
_COPY_FAIL = b"f" + _LENGTH.pack(4 + len(_NOT_REPLAYABLE)) + _NOT_REPLAYABLE


class ChannelLost(ConnectionError):
    """The connection ended; ``sqlstate`` is what the server said last, if anything."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"connection lost ({sqlstate})")
        self.sqlstate = sqlstate


def query_message(sql: str) -> bytes:
    """A simple-protocol ``Query`` message (the connection's encoding is UTF-8)."""
    body = sql.encode("utf-8", "surrogateescape")
    return b"Q" + _LENGTH.pack(len(body) + 5) + body + b"\0"


_INT16 = Struct("!h")
_COUNT = Struct("!H")  # the server reads parameter counts as unsigned: up to 65,535
_INT32 = Struct("!i")
_NO_PARAMETER_TYPES = _INT16.pack(0)
_EXECUTE_ALL = b"E" + _LENGTH.pack(9) + b"\0" + _INT32.pack(0)
_SYNC = b"S" + _LENGTH.pack(4)


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _LENGTH.pack(len(body) + 4) + body


def _cstring(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\0"


def extended_messages(
    sql: str, params: Sequence[str | None], name: str, *, parse: bool, close: bool
) -> bytes:
    """One extended-protocol statement, as libpq sends it: [Close] [Parse] Bind
    Execute Sync.

    Parse gives no parameter types, so the server infers them from the SQL as it
    did for the original client; parameters and results travel as text, the
    parameters exactly as the server logged them. ``close`` first drops a
    prepared statement of that name (not an error when there is none).
    """
    out = []
    encoded_name = _cstring(name)
    if close:
        out.append(_message(b"C", b"S" + encoded_name))
    if parse:
        out.append(_message(b"P", encoded_name + _cstring(sql) + _NO_PARAMETER_TYPES))
    values = [_INT16.pack(0), _COUNT.pack(len(params))]  # text format for all parameters
    for value in params:
        if value is None:
            values.append(_INT32.pack(-1))
        else:
            data = value.encode("utf-8", "surrogateescape")
            values.append(_INT32.pack(len(data)) + data)
    values.append(_INT16.pack(0))  # results in text
    out.append(_message(b"B", b"\0" + encoded_name + b"".join(values)))
    out.append(_EXECUTE_ALL)
    out.append(_SYNC)
    return b"".join(out)


def error_sqlstate(body: bytes) -> str:
    """The SQLSTATE field of an ErrorResponse body."""
    pos, size = 0, len(body)
    while pos < size and body[pos]:
        end = body.find(b"\0", pos + 1)
        if end < 0:
            break
        if body[pos] == _SQLSTATE_FIELD:
            return body[pos + 1 : end].decode("ascii", "replace")
        pos = end + 1
    return "XX000"


class WireChannel(asyncio.Protocol):
    """PostgreSQL's frontend protocol, for replaying statements, over the transport
    of an open asyncpg connection."""

    def __init__(self, transport: Any, owner: Any) -> None:
        self._transport = transport
        self._owner = owner
        """asyncpg's protocol for this connection: it gets the transport back."""
        self._loop = asyncio.get_running_loop()
        self._pending = bytearray()
        """The start of a message whose end has not arrived yet."""
        self._wanted = 0
        """Bytes ``_pending`` must hold before it is worth parsing again."""
        self._skip = 0
        """Bytes still to drop of a result row (rows are never held)."""
        self._tag: bytes | None = None
        self._error: str | None = None
        self._step: Step | None = None
        self._done: asyncio.Future[None] | None = None
        self.installed = False
        self.lost = False
        self.lost_sqlstate = CONNECTION_LOST
        self.abandoned = False
        self.transaction_status = IDLE
        """The last ReadyForQuery's status: :data:`IDLE`, else in a transaction block."""
        """A statement may still be running: the connection can only be terminated."""

    @classmethod
    def for_connection(cls, conn: Any) -> WireChannel | None:
        """A channel for an asyncpg connection, or None if its transport cannot be
        handed over (then asyncpg sends everything)."""
        transport = getattr(conn, "_transport", None)
        owner = getattr(conn, "_protocol", None)
        if (
            transport is None
            or owner is None
            or not hasattr(transport, "set_protocol")
            or transport.get_protocol() is not owner
        ):
            return None
        return cls(transport, owner)

    @property
    def busy(self) -> bool:
        """A statement is in flight."""
        return self._done is not None

    def run(self, message: bytes, step: Step) -> asyncio.Future[None]:
        """Send ``message``; at each completion call ``step`` and send what it returns.

        The future is done when ``step`` returns None; it fails with
        :class:`ChannelLost` if the connection ends first (the statement then in
        flight is the caller's to record).
        """
        if self.lost or self._transport.is_closing():
            # lost while installed, or while asyncpg had the transport
            self.lost = True
            raise ChannelLost(self.lost_sqlstate)
        if self.abandoned:
            raise RuntimeError("this channel was abandoned; terminate the connection")
        if self._done is not None:
            raise RuntimeError("a statement is already in flight on this connection")
        if not self.installed:
            self._transport.set_protocol(self)
            self.installed = True
        done = self._done = self._loop.create_future()
        self._step = step
        self._transport.write(message)
        return done

    def release(self) -> None:
        """Give the transport back to asyncpg (between statements only)."""
        if not self.installed:
            return
        if self._done is not None or self._pending or self._skip or self.abandoned:
            raise RuntimeError("cannot give the connection back in the middle of a statement")
        self.installed = False
        if not self.lost:
            self._transport.set_protocol(self._owner)

    def abandon(self) -> None:
        """Stop after the statement in flight (the caller was cancelled): send nothing
        more; the connection should be terminated, not closed politely."""
        self._step = None
        self.abandoned = True
        done, self._done = self._done, None
        if done is not None and not done.done():
            done.cancel()

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_sqlstate = self._error or CONNECTION_LOST
        self._step = None
        done, self._done = self._done, None
        if done is not None and not done.done():
            done.set_exception(ChannelLost(self.lost_sqlstate))
        self._owner.connection_lost(exc)

    def eof_received(self) -> bool:
        return False  # let the transport close: connection_lost follows

    def data_received(self, data: bytes) -> None:
        skip = self._skip
        if skip:
            if len(data) <= skip:
                self._skip = skip - len(data)
                return
            data = data[skip:]
            self._skip = 0
        if self._pending:
            self._pending += data
            if len(self._pending) < self._wanted:
                return
            data = bytes(self._pending)
            self._pending.clear()
        size = len(data)
        pos = 0
        while size - pos >= 5:
            kind = data[pos]
            end = pos + 1 + _unpack_length(data, pos + 1)[0]
            if end > size:
                if kind in (_DATA_ROW, _COPY_DATA):
                    self._skip = end - size  # drop the rest of the row as it comes
                    pos = size
                break
            if kind == _READY:
                self.transaction_status = data[pos + 5]
                self._ready()
            elif kind == _COMMAND_COMPLETE:
                self._tag = data[pos + 5 : end - 1]
            elif kind == _ERROR:
                self._error = error_sqlstate(data[pos + 5 : end])
            elif kind == _PARAMETER_STATUS:
                self._owner.data_received(data[pos:end])  # asyncpg tracks settings
            elif kind in (_COPY_IN, _COPY_BOTH):
                self._transport.write(_COPY_FAIL)  # the server answers with an error
            # rows, row descriptions, notices, notifications, copy-out: dropped
            pos = end
        if pos < size:
            rest = data[pos:]
            self._pending += rest
            self._wanted = 1 + _unpack_length(rest, 1)[0] if len(rest) >= 5 else 5

    def _ready(self) -> None:
        tag, error = self._tag, self._error
        self._tag = self._error = None
        step = self._step
        if step is None:
            return  # abandoned, or nothing was asked (a stray ReadyForQuery)
        try:
            message = step(None if error is not None else tag, error)
        except BaseException as exc:  # the caller's bug: fail its future, not the loop
            self._step = None
            done, self._done = self._done, None
            if done is not None and not done.done():
                done.set_exception(exc)
            return
        if message is not None:
            self._transport.write(message)
            return
        self._step = None
        done, self._done = self._done, None
        if done is not None and not done.done():
            done.set_result(None)
