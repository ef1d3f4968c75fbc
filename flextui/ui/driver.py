"""The terminal driver: Textual's LinuxDriver, safe when the terminal goes away.

When the console's terminal closes (a window closed, `tmux kill-session`, a dropped SSH
login) the kernel hangs it up: the console gets SIGHUP and SIGCONT, reads of the
terminal return end-of-file at once and writes fail with EIO. Two things in Textual's
LinuxDriver (8.2) then keep the process alive forever after the job has stopped:

- its SIGCONT handler, meant for coming back from a Ctrl+Z suspend, starts application
  mode again although it never left it: a second writer thread, whose first write fails;
- a writer thread whose write raises dies silently, and its queue holds 30 writes: the
  next write after that (the app repaints ten times a second; shutdown itself writes to
  reset the terminal) blocks the event loop in Queue.put for good.

This driver resumes only after a suspend of its own, and once the terminal fails (a
write raises, or the app's SIGHUP finds it hung up) it gives the terminal up: output is
dropped (fds 1 and 2 now lead to /dev/null, so a later print or the interpreter's final
flush cannot fail either), the input thread ends (it would spin on end-of-file) and the
app gets a TerminalLost message — it stops the job as for SIGHUP and exits when stopped.
"""

from __future__ import annotations

import errno
import os
import termios
from typing import IO

from textual.drivers.linux_driver import LinuxDriver
from textual.message import Message


class _TerminalOutput:
    """The writer thread's file: passes writes to the terminal until one fails."""

    def __init__(self, file: IO[str], on_failure) -> None:
        self._file = file
        self._on_failure = on_failure
        self.failed = False

    def write(self, text: str) -> None:
        if not self.failed:
            try:
                self._file.write(text)
            except OSError:
                self._fail()

    def flush(self) -> None:
        if not self.failed:
            try:
                self._file.flush()
            except OSError:
                self._fail()

    def fileno(self) -> int:
        return self._file.fileno()

    def _fail(self) -> None:
        self.failed = True
        self._on_failure()


class ConsoleDriver(LinuxDriver):
    class TerminalLost(Message):
        """The terminal is gone: nothing can be shown or typed any more."""

    def __init__(self, app, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._output = _TerminalOutput(self._file, self.give_up_terminal)
        self._file = self._output  # what start_application_mode hands its writer thread
        self.terminal_lost = False

    def _sigcont_application(self, *_) -> None:
        # Set by the SIGTSTP handler when it left application mode: only then is there
        # anything to resume. Any other SIGCONT (a hangup, `kill -STOP` + `kill -CONT`)
        # comes while application mode is still on.
        if self._must_signal_resume:
            super()._sigcont_application()

    def check_terminal(self) -> bool:
        """Whether the terminal is still there; gives it up if it was hung up."""
        if not self.terminal_lost:
            try:
                termios.tcgetattr(self.fileno)
            except termios.error as exc:
                if exc.args[0] == errno.EIO:  # what every call on a hung-up terminal gets
                    self.give_up_terminal()
        return not self.terminal_lost

    def give_up_terminal(self) -> None:
        """Called from the writer thread (a failed write) or the app (check_terminal)."""
        if self.terminal_lost:
            return
        self.terminal_lost = True
        self._output.failed = True
        out = self._output.fileno()
        terminal_fds = [fd for fd in {1, 2} - {out} if _same_file(fd, out)] + [out]
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in terminal_fds:
                os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        self.exit_event.set()  # the input thread ends its loop
        self._app.post_message(self.TerminalLost())  # thread-safe


def _same_file(fd: int, other: int) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.fstat(other))
    except OSError:
        return False
