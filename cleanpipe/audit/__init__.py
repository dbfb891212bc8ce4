"""Data audit beyond label errors: exact and near duplicates, outliers and test-set leaks (``cleanpipe audit``).

Array-level, like :mod:`cleanpipe.detect`: :func:`row_digests` hashes the rows, :func:`find_audit_issues` reads
one feature space with faiss, :func:`issue_table` lays the findings out as ``audit/issues.csv``.
"""

from cleanpipe.audit.hashing import exact_groups, first_copy_in, row_digests
from cleanpipe.audit.issues import (
           COLUMNS,
           ISSUES,
           AuditFindings,
           AuditSettings,
           find_audit_issues,
           issue_table,
)

__all__ = ["COLUMNS", "ISSUES", "AuditFindings", "AuditSettings", "exact_groups", "find_audit_issues", "first_copy_in",
           "issue_table", "row_digests"]
