"""Device names from outside made safe to print: what PortAudio and PulseAudio/PipeWire call a device (and their
error texts) comes from drivers, USB descriptors and other programs, so it may hold terminal escape sequences,
newlines or invisible characters. Printed raw, such a name could recolour or rewrite the terminal, or split the
one-line `error:` into several.

`shown(text)` is what the user sees - and so also what a typed `--audio-in`/`--audio-out` name is matched against;
the device itself is still opened by its PortAudio index or its PulseAudio name.
"""
from __future__ import annotations

import re

NAME_LIMIT = 120  # characters: a device name longer than a terminal line is not a name

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and any other two-character ESC sequence
_ESCAPE_SEQUENCES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?")


def shown(text, limit: int = NAME_LIMIT) -> str:
    """`text` as one printable line: escape sequences dropped, control and format characters (newlines, tabs, C1
    controls, bidirectional overrides) turned into spaces, runs of spaces folded, at most `limit` characters."""
    text = _ESCAPE_SEQUENCES.sub("", str(text))
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
