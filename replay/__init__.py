"""pgtraffic replay: re-execute a captured workload against a target server.

The replayer only: the engine and its session runner (:mod:`replay.engine`), the
wire protocol (:mod:`replay.protocol`), connections opened through asyncpg
(:mod:`replay.connection`), the schedule (:mod:`replay.schedule`), the run's
coordination (:mod:`replay.runner`), the results file (:mod:`replay.results`) and
the replay report (:mod:`replay.report`). It imports :mod:`capture`, never the
application (:mod:`pgtraffic`).
"""
