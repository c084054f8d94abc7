"""The one error type of the workflows: what a ``kis-release`` command reports and exits with.

Every failure a command can meet and explain — a setting, the tracker, the release record, the
incident ledger, a build — is a :class:`WorkflowError` (their own classes derive from it and keep
their details), and ``kis_estimator.workflows.cli.main`` maps it to ``error: <message>`` and its
:attr:`WorkflowError.exit_code` in one place: no command ends in a traceback for a condition the
operator can fix.

Exit codes of ``kis-release`` (``kis_estimator.workflows.incident.response.ExitCode`` extends them for
watch/rollback):

===  =====================================================================================
0    done (or nothing to do)
1    the work failed or was refused (a check, a build, the tracker for good)
2    configuration or input: fix a setting, an argument or a state file, then run again
===  =====================================================================================
"""

from __future__ import annotations

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "WorkflowError"]

EXIT_FAILED = 1
EXIT_CONFIG = 2


class WorkflowError(Exception):
    """A failure a workflow command reports with a clear message; ``exit_code`` is its exit status."""

    exit_code: int = EXIT_FAILED
