"""Pseudo-SQLSTATEs: failures the server did not report itself, recorded like its own.

Class 08 is PostgreSQL's own "connection exception" class; ``PT`` is pgtraffic's.
Every module that records or reads one of these imports it from here.
"""

from __future__ import annotations

CONNECT_FAILED = "08001"
"""Could not connect (refused, unreachable, timed out)."""
NO_CONNECTION = "08003"
"""Not sent: the session had no connection (lost earlier, reconnect not yet due)."""
CONNECTION_LOST = "08006"
"""The connection broke while the statement ran."""
CLIENT_ERROR = "PT001"
"""pgtraffic could not send the statement (a client-side failure, not the server's)."""
