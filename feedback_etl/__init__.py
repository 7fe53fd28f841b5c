"""Raw interaction logs -> validated warehouse tables (issue 3), plus the log simulator.

Public surface of the ETL: ``feedback_etl.ingest.IngestConfig`` and ``feedback_etl.ingest.ingest``
(``causalrm ingest``); the table readers live in :mod:`feedback_etl.io` (``read_feedback``,
``read_events``, ``read_rejects``, ``feedback_dataset``, ``table_version``), the Delta Lake tables,
manifest commit, lock, history, vacuum and migration in :mod:`feedback_etl.warehouse`, literal
paths for the engines in :mod:`feedback_etl.paths`. Nothing is re-exported here: the function
``ingest`` would shadow its own module.
"""
