"""The data contracts: one pandera ``DataFrameModel`` per table, and the package's error types.

- ``schemas.raw_event``: the raw-event contract a user's logs follow (``causalrm ingest``)
- ``schemas.staged_event``, ``schemas.rejects``: the warehouse's events and rejects tables
- ``schemas.feedback``: one row per exposure, the table every later step reads
- ``schemas.weighted_dataset``, ``schemas.pairs``: the handoff to trainers (``weights export``)
- ``schemas.errors``: ``CausalRMError`` and its typed subclasses, reject reasons
- ``schemas.validation``: ``validate_table``, the one place tables are checked

Nothing is re-exported here: importing a table's module is cheap, importing all of them pulls in pandera.
"""

import warnings

# Every table module imports pandera, and pandera imports pyspark.pandas when the [spark] extra is
# installed, which warns about pandas 3 on every start; nothing here uses pyspark.pandas. Filtered
# here, the one place every pandera import passes through, and only for that module and message.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning, module="pyspark")
