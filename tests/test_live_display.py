import pytest

from live.ui import display
from live.ui.display import display_problem, has_display, require_display
from live.errors import DisplayError, UserError


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(display, "_cache", {})
    monkeypatch.setattr(display.platform, "system", lambda: "Linux")


def test_no_display_variables(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(display, "_probe", lambda: pytest.fail("no probe needed without DISPLAY"))
    assert not has_display()
    with pytest.raises(DisplayError) as e:
        require_display()
    msg = str(e.value)
    assert msg.startswith("no display: ") and "--no-preview" in msg and "DISPLAY" in msg and "\n" not in msg
    assert issubclass(DisplayError, UserError)


def test_unreachable_x_server_is_detected_without_aborting(monkeypatch):
    # cv2.namedWindow would abort this very process here; the real child-process probe must catch it.
    monkeypatch.setenv("DISPLAY", ":97")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    problem = display_problem()
    if problem is None:
        pytest.skip("an X server really answers on :97 here")
    assert not has_display()
    assert "\n" not in problem
    with pytest.raises(DisplayError, match="no display: cannot open the preview window"):
        require_display()


def test_probe_success_and_caching(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    calls = []
    monkeypatch.setattr(display, "_probe", lambda: calls.append(1))
    assert has_display() and has_display()
    require_display()
    assert len(calls) == 1  # probed once per environment
    monkeypatch.setenv("DISPLAY", ":1")
    assert has_display() and len(calls) == 2


def test_wayland_only_is_probed(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.setattr(display, "_probe", lambda: "a test window could not be opened: xcb")
    assert not has_display()


@pytest.mark.parametrize("system", ["Windows", "Darwin"])
def test_windows_and_macos_have_a_display(monkeypatch, system):
    monkeypatch.setattr(display.platform, "system", lambda: system)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(display, "_probe", lambda: pytest.fail("no probe on Windows/macOS"))
    assert has_display()
    require_display()


def test_probe_timeout(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(display, "_PROBE_CODE", "import time; time.sleep(30)")
    monkeypatch.setattr(display, "PROBE_TIMEOUT_S", 0.5)
    assert "did not finish within 0.5 s" in display_problem()


def test_probe_reports_headless_opencv(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(display, "_PROBE_CODE",
                        "import sys; sys.stderr.write('error: The function is not implemented\\n'); sys.exit(1)")
    assert "without GUI support" in display_problem()
