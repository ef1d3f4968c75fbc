"""The errors a user sees as one line (`flextui: error: ...`), never as a traceback.

They live below every layer that raises them (cli, job, backends) so none of those
imports another just for an exception type; the job layer re-exports LaunchError
(`from flextui.job import LaunchError`), which is where the console and UI take it from.
"""

from __future__ import annotations


class LaunchError(Exception):
    """A one-line, user-facing reason why the job cannot run (a node unreachable, a
    preflight failed, an allocation refused). The CLI exits 1."""


class UsageError(Exception):
    """A one-line reason why the command line is wrong. The CLI exits 2."""
