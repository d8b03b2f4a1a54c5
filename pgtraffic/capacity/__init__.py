"""Capacity testing: sweep offered load to the knee and say what breaks first.

:mod:`pgtraffic.capacity.model` holds the records and the pure judgements (a step
sustained or not, the knee, what grew most); :mod:`pgtraffic.capacity.sweep` runs the
steps (reset, replay, sample the server); :mod:`pgtraffic.capacity.render` turns a
sweep into a table, JSON and HTML.
"""
