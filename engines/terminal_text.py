"""Text from outside made safe for one terminal line: the one sanitiser for every name or message we print that we
did not write ourselves - a render server's messages, camera names from sysfs and V4L2, the virtual camera's
device name, audio device names.

Such text can carry terminal escape sequences (recolour, move the cursor, retitle the window, rewrite what was
printed), control characters and newlines (a forged extra line that looks like ours), bidirectional overrides, or
simply go on for pages. `printable` drops escape sequences, turns every other non-printable character into a
space, folds whitespace runs and cuts the result to `limit` characters.
"""
from __future__ import annotations

import re

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and any other two-character ESC sequence
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?")


def printable(text, limit: int = 200) -> str:
    """`text` (anything: str() is taken) as one safe line of at most `limit` characters."""
    text = _ESCAPES.sub("", str(text))
    # str.isprintable is False for C0/C1 controls, newlines, tabs and format characters (bidi overrides, zero-width)
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
