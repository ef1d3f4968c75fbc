"""Theme files: TOML mapped onto textual.theme.Theme, plus flextui's status colours.

Built-in themes are package data in flextui/ui/themes/ (the repository's top-level
`themes/` is a symlink to it, so the files ship in wheels and are easy to find). User
themes live in $XDG_CONFIG_HOME/flextui/themes (default ~/.config/flextui/themes) or
$FLEXTUI_THEME_DIR, and override a built-in of the same name. `--theme` takes a name
or a path to a .toml file. The format is documented at the top of themes/dark.toml.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

from rich.color import Color as RichColor
from rich.style import Style
from textual.color import Color, ColorParseError
from textual.theme import Theme

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

BUILTIN_DIR = Path(__file__).with_name("themes")
DEFAULT_THEME = "dark"

#: flextui's own theme variables and their fallbacks (the dark theme's values), used
#: when a theme (e.g. one of Textual's own, picked in the command palette) lacks them.
STATUS_VARIABLES = {
    "status-pending": "#7C8596",
    "status-running": "#4F9CF9",
    "status-exited": "#62D196",
    "status-failed": "#F2606E",
    "status-killed": "#F0904A",
    "status-lost": "#C08CF0",
    "status-stopped": "#A88B6A",
    "first-failure": "#FF4757",
    "log-prefix": "#6F7C93",
    "log-match": "#6B4E00",
    "log-cursor": "#2C3647",
    "log-error": "#F2606E",
    "log-live": "#9AA5B8",
    "row-cursor": "#284B78",
}

_THEME_FIELDS = {f.name for f in fields(Theme)} - {"variables", "ansi"}
_COLOR_FIELDS = {"primary", "secondary", "warning", "error", "success", "accent",
                 "foreground", "background", "surface", "panel", "boost"}


class ThemeError(Exception):
    """A theme file that cannot be used; the message names the file."""


def user_theme_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("FLEXTUI_THEME_DIR"):
        dirs.append(Path(os.environ["FLEXTUI_THEME_DIR"]))
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    dirs.append(Path(config) / "flextui" / "themes")
    return dirs


def load_theme_file(path: str | os.PathLike) -> Theme:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ThemeError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ThemeError(f"{path}: {exc}") from None
    variables = data.pop("variables", {})
    if not isinstance(variables, dict):
        raise ThemeError(f"{path}: [variables] must be a table")
    unknown = sorted(set(data) - _THEME_FIELDS)
    if unknown:
        raise ThemeError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_THEME_FIELDS))})")
    data.setdefault("name", path.stem)
    if "primary" not in data:
        raise ThemeError(f"{path}: 'primary' is required")
    for key, value in data.items():
        if key in _COLOR_FIELDS:
            _check_color(path, key, value)
    for key, value in variables.items():
        if not isinstance(value, str):
            raise ThemeError(f"{path}: variable {key!r} must be a string")
        if key in STATUS_VARIABLES:
            _check_color(path, key, value)
    return Theme(**data, variables={**STATUS_VARIABLES, **variables})


def _check_color(path: Path, key: str, value: object) -> None:
    if not isinstance(value, str):
        raise ThemeError(f"{path}: {key} must be a colour string")
    try:
        Color.parse(value)
    except ColorParseError:
        raise ThemeError(f"{path}: {key} = {value!r} is not a colour") from None


def load_themes(extra_dirs: list[Path] | None = None) -> tuple[dict[str, Theme], list[str]]:
    """Built-in then user themes (later wins), and one message per unusable file."""
    themes: dict[str, Theme] = {}
    errors: list[str] = []
    dirs = [BUILTIN_DIR, *(user_theme_dirs() if extra_dirs is None else extra_dirs)]
    for directory in dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                theme = load_theme_file(path)
            except ThemeError as exc:
                errors.append(str(exc))
                continue
            themes[theme.name] = theme
    return themes, errors


def resolve_theme(name: str | None, themes: dict[str, Theme], others: set[str] = frozenset()) -> str:
    """The theme name to use for --theme NAME (a name or a .toml path); may register one."""
    name = name or os.environ.get("FLEXTUI_THEME") or DEFAULT_THEME
    if name.endswith(".toml") or os.sep in name:
        theme = load_theme_file(name)
        themes[theme.name] = theme
        return theme.name
    if name in themes or name in others:
        return name
    known = ", ".join(sorted(themes))
    raise ThemeError(f"unknown theme {name!r} (available: {known}; or a path to a .toml file)")


# -- turning theme variables into Rich styles for the Line-API widgets ----------------


def _rich(value: str | None, background: Color) -> RichColor | None:
    if not value:
        return None
    try:
        color = Color.parse(value.split()[0] if " " in value else value)
    except ColorParseError:
        return None
    if " " in value and value.split()[-1].endswith("%"):  # e.g. "#ffffff 50%"
        try:
            color = color.with_alpha(float(value.split()[-1][:-1]) / 100)
        except ValueError:
            pass
    if color.a < 1:
        color = background + color
    return color.rich_color


class Palette:
    """Rich styles from the current theme's variables, rebuilt on every theme change."""

    def __init__(self, variables: dict[str, str]) -> None:
        get = variables.get
        try:
            background = Color.parse(get("background", "#000000"))
        except ColorParseError:
            background = Color(0, 0, 0)
        self.dark = background.brightness < 0.5

        def color(name: str, fallback: str | None = None) -> RichColor | None:
            return _rich(get(name) or STATUS_VARIABLES.get(name) or fallback, background)

        self.status = {
            key: Style(color=color(f"status-{key}"))
            for key in ("pending", "running", "exited", "failed", "killed", "lost", "stopped")
        }
        self.first_failure = Style(color=color("first-failure"), bold=True)
        self.prefix = Style(color=color("log-prefix"))
        self.match = Style(bgcolor=color("log-match"), bold=True)
        self.cursor = Style(bgcolor=color("log-cursor"))
        self.error = Style(color=color("log-error"))
        self.live = Style(color=color("log-live"), italic=True)
        self.muted = Style(color=color("foreground-muted", "#808080"))
        self.warning = Style(color=color("warning"), bold=True)
        self.accent = Style(color=color("accent"), bold=True)
        self.success = Style(color=color("success"), bold=True)
        self.bold = Style(bold=True)
        # Background only, so status colours stay readable on the selected row.
        self.row_cursor = Style(bgcolor=color("row-cursor"))
        self.row_cursor_blurred = Style(bgcolor=color("log-cursor"))
        self.tab_active = Style(bgcolor=color("row-cursor"), bold=True, underline=True)
        self.header = Style(color=color("foreground-muted", "#808080"), bold=True)
