"""The selection-bias audit: ``report.json`` + a self-contained ``report.html`` with guardrails.

Public API
- :class:`AuditConfig`, :class:`Thresholds`, :func:`run_audit` -> :class:`AuditResult`
- :func:`build_report` (the report as a dict, no files written)
"""

from __future__ import annotations

from propensity.audit.report import AuditConfig, AuditResult, Thresholds, build_report, run_audit

__all__ = ["AuditConfig", "AuditResult", "Thresholds", "build_report", "run_audit"]
