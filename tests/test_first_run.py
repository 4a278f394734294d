"""A first run says what it is doing: the first line comes at once, every slow step is announced before it starts
and timed when it ends, and a mistyped flag is one `error:` line (exit 2) in both programs."""
import subprocess
import sys
import threading
import time

import pytest

from engines.progress import announced, step
from tests.conftest import REPO


def test_run_live_prints_its_first_line_within_two_seconds(tmp_path):
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(REPO / "run_live.py"), "--avatar", str(tmp_path / "face.png"),
                                "--deterministic-weights", "--no-vcam", "--no-preview"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = []
    reader = threading.Thread(target=lambda: first.append((process.stdout.readline(), time.perf_counter())))
    reader.start()
    reader.join(timeout=30)
    try:
        assert first, "no output within 30 s"
        line, at = first[0]
        assert at - started < 2.0, f"first line after {at - started:.1f} s: {line!r}"
        assert line.startswith("live avatar: starting"), line
    finally:
        process.kill()
        process.communicate()


def test_a_step_is_announced_before_it_runs_and_timed_after_it():
    lines = []
    with step(lines.append, "converting"):
        lines.append("(the work)")
    assert lines[0] == "converting ..." and lines[1] == "(the work)"
    assert lines[2].startswith("converting: done in ") and lines[2].endswith(" s")
    assert announced(lines.append, "building", lambda: 42) == 42


def test_a_long_step_says_it_is_still_running():
    lines = []
    with step(lines.append, "quantizing", heartbeat_s=0.05):
        time.sleep(0.3)
    assert any(line.strip().startswith("quantizing: ") and line.endswith("s so far") for line in lines[1:-1]), lines


def test_a_cold_openvino_build_prints_a_line_before_it_starts_converting(deterministic_engine, tmp_path,
                                                                         monkeypatch):
    pytest.importorskip("openvino")
    from engines.backends import openvino_backend as ovb

    lines, seen_at_convert = [], []

    class Stop(Exception):
        pass

    def convert(module, inputs):  # stands in for the 10-60 s conversion: record what was said before it
        seen_at_convert.append(list(lines))
        raise Stop

    monkeypatch.setattr(ovb, "convert", convert)
    with pytest.raises(Stop):
        ovb.build_openvino_engine(deterministic_engine, precision="fp32", cache_dir=tmp_path / "empty-cache",
                                  warm_up=False, progress=lines.append)
    assert seen_at_convert and seen_at_convert[0], "nothing was printed before the conversion started"
    assert "converting" in seen_at_convert[0][-1] and seen_at_convert[0][-1].endswith("..."), seen_at_convert


def test_create_engine_passes_its_progress_lines_on(monkeypatch, deterministic_engine):
    import engines.backends as backends
    import engines.backends.builders as builders

    monkeypatch.setattr(builders, "load_weights", lambda *args: deterministic_engine)
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    lines = []
    engine, _ = backends.create_engine(backend="torch", deterministic_weights=True, progress=lines.append)
    assert engine.kp_detector is deterministic_engine.kp_detector
    assert lines[0] == "generating the test weights ..." and "done in" in lines[1]


# --- one-line errors, argparse's included ----------------------------------------------------------------------
def _parse_error(capsys, main, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_a_bad_flag_of_run_live_is_one_error_line(capsys, tmp_path):
    from live.cli.app import main

    err = _parse_error(capsys, main, ["--avatar", str(tmp_path / "face.png"), "--vcam-size", "0x0"])
    assert err == "error: argument --vcam-size: size '0x0' out of range (1x1 .. 7680x4320)\n"
    assert main(["--vcam-size", "1280x720"]) == 2  # --avatar may come from the config file: checked after it
    err = capsys.readouterr().err
    assert err.startswith("error: --avatar is required for a run") and err.count("\n") == 1


def test_a_bad_flag_of_the_render_server_is_one_error_line(capsys):
    from remote.server import main

    err = _parse_error(capsys, main, ["--port", "abc"])
    assert err == "error: argument --port: invalid int value: 'abc'\n"
    err = _parse_error(capsys, main, ["--backend", "gpu"])
    assert err.startswith("error: argument --backend: invalid choice: 'gpu'") and err.count("\n") == 1


@pytest.mark.parametrize("program", ["live.cli.app", "remote.server"])
def test_deterministic_weights_is_documented_in_help(capsys, program):
    import importlib

    parser = importlib.import_module(program).build_parser()
    text = parser.format_help()
    assert "--deterministic-weights" in text
    action = next(a for a in parser._actions if "--deterministic-weights" in a.option_strings)
    assert action.help and "not a face" in " ".join(action.help.split())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's own pydantic deprecations, on import
def test_the_render_server_says_it_is_starting_before_ray_starts(capsys, monkeypatch):
    pytest.importorskip("ray")
    import ray
    import signal as signal_module

    from remote import server

    class Stop(Exception):
        pass

    said = []

    def init(*args, **kwargs):
        said.append(capsys.readouterr().err)
        raise Stop

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # main() sets it for its process; keep ours unchanged
    monkeypatch.setattr(signal_module, "signal", lambda *args: None)  # keep pytest's own Ctrl-C handler
    with pytest.raises(Stop):
        server.main(["--deterministic-weights", "--port", "8765"])
    assert said and said[0].startswith("starting the render server on 127.0.0.1:8765"), said
