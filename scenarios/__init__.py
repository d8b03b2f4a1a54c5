"""Bundled, realistic workloads (schema, data generator, pgbench client scripts).

Each scenario is a directory of plain files (``schema.sql``, ``data.sql``,
``*.pgbench``) shipped as package data; :mod:`pgtraffic.scenario` is the typed API
that finds, loads and runs them.
"""
