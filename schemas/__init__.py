"""The data contracts: one pandera ``DataFrameModel`` per table, and the package's error types.

- ``schemas.raw_event``: the raw-event contract a user's logs follow (``causalrm ingest``)
- ``schemas.staged_event``, ``schemas.rejects``: the warehouse's events and rejects tables
- ``schemas.feedback``: one row per exposure, the table every later step reads
- ``schemas.weighted_dataset``, ``schemas.pairs``: the handoff to trainers (``weights export``)
- ``schemas.errors``: ``CausalRMError`` and its typed subclasses, reject reasons
- ``schemas.validation``: ``validate_table``, the one place tables are checked

Nothing is re-exported here: importing a table's module is cheap, importing all of them pulls in pandera.
"""
