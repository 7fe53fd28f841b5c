"""Package-wide exceptions and reason codes.

Every error a user can cause derives from :class:`CausalRMError`; the CLI turns it into one
red line and exit code 1. Messages say what was wrong, where (file, row, column) and how to fix it.
"""

from __future__ import annotations

from enum import Enum


class RejectReason(str, Enum):
    """Why an input row ended in ``WH/rejects/`` instead of the warehouse."""

    MISSING_FIELD = "missing_field"
    BAD_TIMESTAMP = "bad_timestamp"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    ORPHAN_FEEDBACK = "orphan_feedback"
    CONFLICTING_IMPRESSION = "conflicting_impression"
    UNPARSEABLE_ROW = "unparseable_row"
    BAD_VALUE = "bad_value"


class CausalRMError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"at {self.where}")
        line = " ".join(parts)
        if self.fix:
            line += f"; fix: {self.fix}"
        return line


class ConfigError(CausalRMError):
    """An option or config value is invalid."""


class InputFileError(CausalRMError):
    """An input file is missing, unreadable, of the wrong format or lacks a required column."""


class EmptyIngestError(InputFileError):
    """An ingest run read input but accepted no event (or left the warehouse without an exposure)."""


class TableValidationError(CausalRMError):
    """A table failed its pandera contract."""

    def __init__(self, table: str, failures: int, sample: str, *, fix: str | None = None) -> None:
        self.table = table
        self.failures = failures
        self.sample = sample
        super().__init__(
            f"table {table!r} failed validation ({failures} failing checks): {sample}",
            fix=fix or "inspect the input rows named above",
        )


class WarehouseError(CausalRMError):
    """The warehouse is missing, empty, locked or inconsistent."""


class ResourceError(CausalRMError):
    """A step needed more memory than its limit gave it."""


class ReconciliationError(WarehouseError):
    """rows read != accepted + rejected + duplicates."""


class EstimationError(CausalRMError):
    """A statistical quantity cannot be estimated from the data given (one class, no overlap...)."""


class IdentifiabilityError(EstimationError):
    """Noise rates are not identified (rho01 + rho10 >= 1, empty anchor set, one-class channel)."""


class GuardrailError(CausalRMError):
    """An audit guardrail was breached under --strict."""
