"""The Textual console (imported only for the TUI; the engine never needs it)."""
