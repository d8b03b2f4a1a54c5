"""Capacity testing: sweep offered load to the knee and say what breaks first.

:mod:`pgtraffic.capacity.model` holds the records and the pure judgements (a step
sustained or not, the knee, what grew most); :mod:`pgtraffic.capacity.sweep` runs the
steps (reset, replay, sample the server); :mod:`pgtraffic.capacity.scale` (session
scale-up) and :mod:`pgtraffic.capacity.order` (the causal order a step keeps) turn
the workload into each step's workload; :mod:`pgtraffic.capacity.statements` reads
pg_stat_statements, :mod:`pgtraffic.capacity.progress` estimates the time left;
:mod:`pgtraffic.capacity.render` turns sweeps into HTML (one, or several side by
side). docs/capacity.md explains the choices.
"""
