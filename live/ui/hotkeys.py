"""Hotkeys: one table of bindings, read from the preview window (cv2.waitKeyEx codes) or from the terminal.

Keys are named by the character they type ('c', '+', '1') or by a word for keys without one ('esc', 'up', 'down',
'left', 'right'). Both front ends translate what they read into these names, so one table drives both and `--help`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from enum import Enum


class Action(str, Enum):
    CALIBRATE = "calibrate"
    RESET_CALIBRATION = "reset_calibration"
    BEST_FRAME = "best_frame"
    AVATAR = "avatar"              # arg: 0-based avatar index
    NEXT_AVATAR = "next_avatar"
    PREVIOUS_AVATAR = "previous_avatar"
    PASSTHROUGH = "passthrough"
    ZOOM_IN = "zoom_in"
    ZOOM_OUT = "zoom_out"
    PAN = "pan"                    # arg: (dx, dy) steps
    RESET_CROP = "reset_crop"
    TOGGLE_TRACKING = "toggle_tracking"
    MIRROR = "mirror"
    TOGGLE_HUD = "toggle_hud"
    SNAPSHOT_AVATAR = "snapshot_avatar"
    FRAMING = "framing"
    QUIT = "quit"


@dataclass(frozen=True)
class Binding:
    keys: tuple[str, ...]
    action: Action
    description: str
    arg: object = None


@dataclass(frozen=True)
class KeyEvent:
    """What a key press asks for: the action and its argument (avatar index, pan direction)."""

    action: Action
    arg: object = None


BINDINGS: tuple[Binding, ...] = (
    Binding(("c",), Action.CALIBRATE, "calibrate: take the current face as the neutral pose (look straight, "
                                      "mouth closed)"),
    Binding(("x",), Action.RESET_CALIBRATION, "forget the calibration (also the saved one)"),
    Binding(("b",), Action.BEST_FRAME, "best-frame mode on/off: recalibrate whenever your pose matches the "
                                       "avatar better"),
    *(Binding((str(i),), Action.AVATAR, f"avatar {i}", i - 1) for i in range(1, 10)),
    Binding(("n",), Action.NEXT_AVATAR, "next avatar"),
    Binding(("p",), Action.PREVIOUS_AVATAR, "previous avatar"),
    Binding(("o",), Action.PASSTHROUGH, "passthrough on/off: send your camera instead of the avatar"),
    Binding(("+", "="), Action.ZOOM_IN, "zoom the face crop in"),
    Binding(("-", "_"), Action.ZOOM_OUT, "zoom the face crop out"),
    Binding(("w", "up"), Action.PAN, "move the face crop up", (0, -1)),
    Binding(("s", "down"), Action.PAN, "move the face crop down", (0, 1)),
    Binding(("a", "left"), Action.PAN, "move the face crop left", (-1, 0)),
    Binding(("d", "right"), Action.PAN, "move the face crop right", (1, 0)),
    Binding(("0",), Action.RESET_CROP, "reset zoom/pan of the face crop"),
    Binding(("t",), Action.TOGGLE_TRACKING, "face tracking on/off (off: fixed centre crop + zoom/pan)"),
    Binding(("m",), Action.MIRROR, "mirror the camera image on/off"),
    Binding(("h",), Action.TOGGLE_HUD, "HUD (FPS, latency, timings) on/off in the preview"),
    Binding(("k",), Action.SNAPSHOT_AVATAR, "keep the face crop as a new avatar (snapshot-*.png beside the avatars) "
                                            "and switch to it"),
    Binding(("g",), Action.FRAMING, "framing guide on/off in the preview: the avatar over your crop, with the "
                                    "match score; line up, then press c"),
    Binding(("q", "esc"), Action.QUIT, "quit"),
)

_BY_KEY: dict[str, Binding] = {key: b for b in BINDINGS for key in b.keys}


def event_for(key: str | None) -> KeyEvent | None:
    """The event bound to a key name, or None for unbound keys (ignored, not an error)."""
    binding = _BY_KEY.get(key) if key else None
    return KeyEvent(binding.action, binding.arg) if binding else None


def events_for(keys) -> list[KeyEvent]:
    return [e for e in (event_for(k) for k in keys) if e is not None]


def help_text() -> str:
    """The hotkey table for `--help` and the README; avatar keys 1-9 folded into one line."""
    lines = ["hotkeys (preview window, or the terminal when there is no window):"]
    seen_avatar = False
    for b in BINDINGS:
        if b.action is Action.AVATAR:
            if seen_avatar:
                continue
            seen_avatar = True
            keys, text = "1-9", "switch to avatar 1..9 (files of --avatar FOLDER in name order)"
        else:
            keys, text = " / ".join(_display(k) for k in b.keys), b.description
        lines.append(f"  {keys:<12} {text}")
    return "\n".join(lines)


def _display(key: str) -> str:
    return {"esc": "Esc", "up": "Up", "down": "Down", "left": "Left", "right": "Right"}.get(key, key)


# --- preview window ---------------------------------------------------------------------------------------------
# cv2.waitKeyEx returns platform-specific codes for arrows: GTK/X11 keysyms, Windows virtual-key codes << 16, Cocoa.
_WAITKEY_SPECIAL = {
    27: "esc",
    65362: "up", 65364: "down", 65361: "left", 65363: "right",                       # Linux (GTK/Qt)
    2490368: "up", 2621440: "down", 2424832: "left", 2555904: "right",               # Windows
    63232: "up", 63233: "down", 63234: "left", 63235: "right",                       # macOS
    0xFFAB: "+", 0xFFAD: "-",                                                        # keypad + / - (X11)
}


def key_from_waitkey(code: int) -> str | None:
    """Name of the key for a cv2.waitKeyEx() result; None for 'no key' (-1) or keys we don't name."""
    if code is None or code < 0:
        return None
    if code in _WAITKEY_SPECIAL:
        return _WAITKEY_SPECIAL[code]
    low = code & 0xFFFF  # some GUI backends set modifier flags (Shift, NumLock) in the upper bits
    if low in _WAITKEY_SPECIAL:
        return _WAITKEY_SPECIAL[low]
    return chr(low) if 32 <= low < 127 else None


# --- terminal ---------------------------------------------------------------------------------------------------
_ANSI_ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left"}
_MSVCRT_ARROWS = {"H": "up", "P": "down", "K": "left", "M": "right"}


def parse_terminal_input(text: str) -> list[str]:
    """Key names from a chunk of terminal input: ESC [ A..D (and ESC O A..D) are arrows, a lone ESC is Esc,
    other escape sequences (function keys) are dropped instead of being read as Esc + letters."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            if i + 1 >= len(text):
                keys.append("esc")
                i += 1
                continue
            if text[i + 1] in "[O":
                j = i + 2
                while j < len(text) and not (text[j].isalpha() or text[j] == "~"):
                    j += 1
                final = text[j] if j < len(text) else ""
                if final in _ANSI_ARROWS and j == i + 2:
                    keys.append(_ANSI_ARROWS[final])
                i = j + 1
                continue
            keys.append("esc")
            i += 1
            continue
        if ch == "\x03":  # Ctrl-C arrives as a signal in cbreak mode; if it ever shows up as a byte, quit
            keys.append("q")
        elif ch.isprintable():
            keys.append(ch)
        i += 1
    return keys


class TerminalKeys:
    """Non-blocking key reader for the terminal (headless mode). A context manager: puts a TTY in cbreak mode
    (keys arrive without Enter, Ctrl-C still interrupts) and always restores the previous mode on exit.

    When stdin is not a terminal (piped, CI, pytest) it stays inactive and `read()` returns nothing.
    """

    def __init__(self, stream=None):
        self._stream = stream if stream is not None else sys.stdin
        self._saved = None
        self._fd = None
        self.active = False

    def __enter__(self) -> "TerminalKeys":
        try:
            is_tty = self._stream is not None and self._stream.isatty()
        except (ValueError, AttributeError):  # closed or replaced stdin
            is_tty = False
        if not is_tty:
            return self
        if os.name == "nt":
            self.active = True  # msvcrt reads the console directly; no mode to change
            return self
        import termios
        import tty
        self._fd = self._stream.fileno()
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._saved is not None:
            import termios
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        self.active = False

    def read(self) -> list[str]:
        """Key names typed since the last call (never blocks)."""
        if not self.active:
            return []
        if os.name == "nt":
            return self._read_windows()
        import select
        chunks = []
        while select.select([self._fd], [], [], 0)[0]:
            data = os.read(self._fd, 64)
            if not data:  # EOF on the terminal: nothing more will come
                self.close()
                break
            chunks.append(data.decode("utf-8", errors="ignore"))
        return parse_terminal_input("".join(chunks))

    @staticmethod
    def _read_windows() -> list[str]:
        import msvcrt
        keys = []
        while msvcrt.kbhit():
            ch = msvcrt.getwch()
            if ch in ("\x00", "\xe0"):  # arrow / function key: a second code follows
                name = _MSVCRT_ARROWS.get(msvcrt.getwch())
                if name:
                    keys.append(name)
            elif ch == "\x1b":
                keys.append("esc")
            elif ch.isprintable():
                keys.append(ch)
        return keys
