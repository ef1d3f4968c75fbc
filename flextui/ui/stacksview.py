"""`d`: every running rank's Python stack, grouped (the odd one out first).

The job asks every node's launcher at once (py-spy on each rank and its children) and
groups the answers (flextui/stacks.py); this screen only draws the dump: one line per
group, then each group's stack with the frames that set it apart from the closest other
group highlighted (`>>`), what kept stacks away (which nodes lack py-spy and how to
install it), and where the whole dump was written (stacks-HHMMSS.txt).
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from flextui.stacks import StackDump, StackGroup
from flextui.ui.theming import Palette

#: Frames of one group's stack shown on screen (innermost first); the file has them all.
FRAMES_SHOWN = 14


def dump_renderable(dump: StackDump, palette: Palette, asked_at: str = "") -> Text:
    """The dump as the screen shows it (also what tests read)."""
    text = Text()
    text.append(dump.headline(), palette.bold)
    if asked_at:
        text.append(f"  (at {asked_at})", palette.muted)
    text.append("\n")
    for line in dump.problem_lines():
        text.append(line + "\n", palette.warning)
    if dump.groups:
        text.append("\n")
    for group in dump.groups:
        _group_line(text, group, palette)
    for group in dump.groups:
        text.append("\n")
        _group_frames(text, group, dump, palette)
    if dump.path:
        text.append(f"\nevery rank's every process and thread: {dump.path}", palette.muted)
    return text


def _group_line(text: Text, group: StackGroup, palette: Palette) -> None:
    odd = len(group.ranks) == 1 or group.differs
    text.append(group.label(), (palette.warning if odd and not group.error else palette.accent) + palette.bold)
    text.append(": ")
    text.append(group.summary() + "\n", palette.error if group.error else None)


def _group_frames(text: Text, group: StackGroup, dump: StackDump, palette: Palette) -> None:
    hosts = list(dict.fromkeys(s.host for s in dump.ranks if s.rank in set(group.ranks)))
    text.append(f"── {group.label()}", palette.bold)
    text.append(f" on {', '.join(hosts[:4])}{f' +{len(hosts) - 4} hosts' if len(hosts) > 4 else ''}\n",
                palette.muted)
    if group.error:
        text.append(f"   {group.error}\n", palette.error)
        return
    frames = group.stack.frames
    for index, frame in enumerate(frames[:FRAMES_SHOWN]):
        if index in group.differs:
            text.append(f">> {frame.text()}\n", palette.warning + palette.bold)
        else:
            text.append(f"   {frame.text()}\n", palette.muted if frame.library else None)
    if len(frames) > FRAMES_SHOWN:
        text.append(f"   … {len(frames) - FRAMES_SHOWN} more frames (in the file)\n", palette.muted)
    children = len(group.stack.children)
    if children:
        text.append(f"   + {children} child process{'es' if children != 1 else ''} of rank "
                    f"{group.ranks[0]} (dataloader workers): in the file\n", palette.muted)


class StacksScreen(ModalScreen[None]):
    """Asks the job for a dump when shown (and on r); Esc closes."""

    BINDINGS = [
        Binding("escape,d,q", "close", "Close"),
        Binding("r", "again", "Dump again"),
    ]
    DEFAULT_CSS = """
    StacksScreen { align: center middle; background: $background 60%; }
    StacksScreen #dialog {
        width: 95%; max-width: 160; height: auto; max-height: 95%; overflow-y: auto;
        padding: 0 1; border: round $primary; background: $surface;
    }
    StacksScreen #dialog #hint { margin-top: 1; }
    """

    def __init__(self, job, palette: Palette) -> None:
        super().__init__()
        self.job, self.palette = job, palette
        self.dump: StackDump | None = None
        self.asking = False

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Static(id="stacks")
            yield Static(Text("Esc: back   r: dump again", style=self.palette.muted), id="hint")

    def on_mount(self) -> None:
        for static in self.query(Static):  # wrap at the dialog's width (the app's "#dialog Static" is auto)
            static.styles.width = "100%"
        self.action_again()

    def action_again(self) -> None:
        if self.asking:
            return
        self.asking = True
        self.query_one("#stacks", Static).update(
            Text("asking every node for its ranks' stacks (py-spy)…", style=self.palette.muted))
        self.run_worker(self._dump(), exclusive=True)

    async def _dump(self) -> None:
        try:
            dump = await self.job.dump_stacks()
        finally:
            self.asking = False
        self.dump = dump
        self.query_one("#stacks", Static).update(
            dump_renderable(dump, self.palette, time.strftime("%H:%M:%S", time.localtime(dump.t))))

    def action_close(self) -> None:
        self.dismiss(None)
