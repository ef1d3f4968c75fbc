"""One Job protocol: the real Job and the UI's test double offer the console the same surface,
so a path the UI takes with one (say, abort(SIGTERM) from a signal) works with the other."""

from __future__ import annotations

import inspect
import signal

import pytest

from flextui.client import ClientJob
from flextui.job import Job, JobProtocol
from flextui.runs import RecordedJob
from flextui.ui.app import FlexApp
from flextui.ui.testing import FakeJob

MEMBERS = [name for name in dir(JobProtocol) if not name.startswith("_")]


def protocol_members() -> dict[str, object]:
    return {name: inspect.getattr_static(JobProtocol, name) for name in MEMBERS}


@pytest.mark.parametrize("implementation", [Job, FakeJob, ClientJob, RecordedJob],
                         ids=["Job", "FakeJob", "ClientJob", "RecordedJob"])
def test_both_implement_every_member_with_the_protocols_signature(implementation):
    annotations = inspect.get_annotations(JobProtocol)
    assert {"world", "run_id", "model"} <= set(annotations)
    for name, member in protocol_members().items():
        ours = inspect.getattr_static(implementation, name, None)
        if isinstance(member, property):  # a read-only attribute: a property or set in __init__
            assert isinstance(ours, property) or implementation is FakeJob and hasattr(FakeJob(), name), \
                f"{implementation.__name__} has no {name}"
        else:
            assert ours is not None, f"{implementation.__name__} has no {name}"
        if callable(member) and not isinstance(member, property):
            expected = inspect.signature(member)
            actual = inspect.signature(ours)
            assert [(p.name, p.default) for p in actual.parameters.values()] == \
                [(p.name, p.default) for p in expected.parameters.values()], f"{implementation.__name__}.{name}"
            assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(member), name


def test_a_fake_job_is_a_job_protocol_at_runtime():
    assert isinstance(FakeJob(), JobProtocol)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
async def test_a_signal_to_the_ui_aborts_the_job_with_that_signal(sig, code):
    """The app calls job.abort(sig) when the console gets SIGTERM/SIGHUP: the job stops, is
    said to be aborted by that signal, and the app exits with 128 + its number."""
    job = FakeJob()
    job.start_all()
    app = FlexApp(job, theme="dark")
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        app._on_signal(sig)
        await pilot.pause(0.3)
        assert job.calls[0] == ("abort", sig)
        assert job.model.stop_reason == f"aborted by user ({signal.Signals(sig).name})"
    assert app.return_value == code
    assert job.model.exit_code == code
