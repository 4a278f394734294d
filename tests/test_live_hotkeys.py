"""Hotkeys: the binding table, both key front ends, and the generated help."""
import os
import re
import pty
import termios

import pytest

from live.ui.hotkeys import (BINDINGS, Action, KeyEvent, TerminalKeys, event_for, events_for, help_text,
                          key_from_waitkey, parse_terminal_input)


def test_table_maps_every_required_action():
    actions = {b.action for b in BINDINGS}
    assert actions == set(Action)
    assert event_for("c") == KeyEvent(Action.CALIBRATE)
    assert event_for("q") == KeyEvent(Action.QUIT) == event_for("esc")
    assert event_for("1") == KeyEvent(Action.AVATAR, 0)
    assert event_for("9") == KeyEvent(Action.AVATAR, 8)
    assert event_for("up") == KeyEvent(Action.PAN, (0, -1)) == event_for("w")
    assert event_for("+") == event_for("=") == KeyEvent(Action.ZOOM_IN)
    assert event_for("Z") is None and event_for(None) is None


def test_no_key_is_bound_twice():
    keys = [k for b in BINDINGS for k in b.keys]
    assert len(keys) == len(set(keys))


def test_help_lists_every_key():
    text = help_text()
    for b in BINDINGS:
        if b.action is Action.AVATAR:
            continue
        for key in b.keys:
            shown = {"esc": "Esc", "up": "Up", "down": "Down", "left": "Left", "right": "Right"}.get(key, key)
            assert shown in text, key
        assert b.description in text
    assert "1-9" in text


def test_waitkey_codes():
    assert key_from_waitkey(-1) is None
    assert key_from_waitkey(ord("c")) == "c"
    assert key_from_waitkey(27) == "esc"
    assert key_from_waitkey(65362) == "up"       # Linux GTK
    assert key_from_waitkey(2424832) == "left"   # Windows
    assert key_from_waitkey(63235) == "right"    # macOS
    assert key_from_waitkey(0x100000 | ord("n")) == "n"  # modifier bits ignored
    assert key_from_waitkey(0xFFBE) is None      # F1: not bound, not an error


def test_terminal_parsing_separates_esc_from_escape_sequences():
    assert parse_terminal_input("c1\x1b[A\x1b[D") == ["c", "1", "up", "left"]
    assert parse_terminal_input("\x1b") == ["esc"]
    assert parse_terminal_input("\x1b[15~q") == ["q"]  # F5 dropped, not Esc + '[' + ...
    assert events_for(parse_terminal_input("x\nq")) == [KeyEvent(Action.RESET_CALIBRATION), KeyEvent(Action.QUIT)]


def test_terminal_reader_is_inactive_without_a_tty(tmp_path):
    with open(tmp_path / "stdin.txt", "w+") as fake_stdin:
        with TerminalKeys(fake_stdin) as keys:
            assert not keys.active
            assert keys.read() == []


@pytest.mark.skipif(os.name == "nt", reason="pseudo-terminals are POSIX only")
def test_terminal_reader_reads_keys_and_restores_the_mode_even_on_error():
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "r")
    try:
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError):
            with TerminalKeys(stream) as keys:
                assert keys.active
                assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak: no line buffering
                os.write(master, b"c\x1b[Bq")
                assert keys.read() == ["c", "down", "q"]
                assert keys.read() == []
                raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
    finally:
        stream.close()
        os.close(master)


def test_readme_hotkey_table_covers_every_key():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    # the hotkey table: the rows after its "| key | action |" header, wherever the README puts it
    rows = readme[readme.index("| key | action |"):].split("\n\n")[0]
    table = "\n".join(line for line in rows.splitlines() if line.startswith("| `"))
    assert "`1`-`9`" in table
    for b in BINDINGS:
        if b.action is Action.AVATAR:
            continue
        for key in b.keys:
            shown = {"esc": "`Esc`", "up": "arrows", "down": "arrows", "left": "arrows", "right": "arrows"}.get(
                key, f"`{key}`")
            assert shown in table, f"README hotkey table lacks {key!r} ({b.description})"


# --- feedback for keys typed into a terminal (no preview window to show their effect) ---------------------------
def test_h_says_whether_the_hud_is_on():
    from tests.test_live_loop import make_pipeline
    p = make_pipeline()
    p.handle_keys(["h"])
    assert p.messages[-1] == "HUD off" and not p.show_hud
    p.handle_keys(["h"])
    assert p.messages[-1] == "HUD on" and p.show_hud


def test_g_without_a_preview_puts_the_match_score_in_the_status_line():
    from tests.test_live_loop import FakePreview, frames, make_pipeline
    p = make_pipeline()
    p.handle_keys(["g"])
    assert "match" in p.messages[-1] and "no preview window" in p.messages[-1]
    p._notice_until = 0.0  # the notice has been read; the status line is back
    p.step(frames([100])[0])
    assert re.search(r"\| match \d+ \|", p.status), p.status
    with_window = make_pipeline(preview=FakePreview([]))
    with_window.handle_keys(["g"])
    with_window._notice_until = 0.0
    with_window.step(frames([100])[0])
    assert "match" not in with_window.status  # the preview draws the score in its guide


def test_a_run_no_key_reaches_says_what_to_do_instead_of_press_c(capsys, tmp_path):
    import cv2
    import numpy as np

    from live.cli.app import main
    avatar, driving = tmp_path / "a.png", tmp_path / "driving"
    cv2.imwrite(str(avatar), np.full((64, 64, 3), 128, np.uint8))
    driving.mkdir()
    for i in range(2):
        cv2.imwrite(str(driving / f"{i}.png"), np.full((48, 48, 3), 60 + 40 * i, np.uint8))
    code = main([f"--avatar={avatar}", f"--driving={driving}", "--no-vcam", "--no-preview", "--no-track",
                 "--deterministic-weights", "--backend", "torch", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no keys reach this run" in err and "--auto-calibrate" in err and "--preview" in err
    assert "press C" not in err and "hotkeys in" not in err
