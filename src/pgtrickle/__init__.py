"""pgtrickle: stream tables for PostgreSQL, kept fresh from logical replication.

This package is the face: the ``pgtrickle`` command, the declarations file and their
reconciliation with the catalog, status, logging, and ``dev`` (the demo, a private cluster, a
sample workload). The work is done below it: ``scheduler`` (when, in what order, and the
refresh itself), ``walstream`` (change capture and the catalog) and ``dvm`` (the compiler).
"""
