"""Saved preferences (live/cli/config.py): where the file lives, flag > config > default, --save-config, and a
hostile or broken file as one `error:` line."""
import os
import sys
from pathlib import Path

import pytest

from live.cli import config
from live.cli.app import build_parser, main, validate_args
from live.cli.config import (MAX_CONFIG_BYTES, ConfigError, default_config_path, given_preferences, parse_args,
                         read_config, save_preferences)

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def parse(argv, path):
    return parse_args(build_parser(), ["--config", str(path), *argv], check=validate_args)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def run_main(capsys, argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def test_default_location_per_platform(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    assert default_config_path({}, "linux") == tmp_path / ".config" / "live-avatar" / "config.toml"
    assert default_config_path({"XDG_CONFIG_HOME": "/x/conf"}, "linux") == Path("/x/conf/live-avatar/config.toml")
    assert default_config_path({"XDG_CONFIG_HOME": "rel"}, "linux") == tmp_path / ".config" / "live-avatar" \
        / "config.toml", "a relative XDG_CONFIG_HOME is ignored (XDG spec)"
    assert default_config_path({"APPDATA": r"C:\Users\u\AppData\Roaming"}, "win32") == \
        Path(r"C:\Users\u\AppData\Roaming") / "live-avatar" / "config.toml"
    assert default_config_path({}, "darwin") == tmp_path / "Library" / "Application Support" / "live-avatar" \
        / "config.toml"
    assert default_config_path({config.CONFIG_ENV: "/etc/la.toml"}, "linux") == Path("/etc/la.toml")


def test_precedence_flag_over_config_over_default(tmp_path):
    path = write(tmp_path / "c.toml", 'avatar = "me.png"\nvcam-size = "640x480"\nsmooth_beta = 2.5\n'
                                      'no-smoothing = true\nvcam = false\nbackend = "torch"\n')
    args = parse(["--vcam-size", "320x240", "--vcam"], path)
    assert args.vcam_size == (320, 240) and args.vcam is True, "flags win"
    assert args.avatar == "me.png" and args.smooth_beta == 2.5 and args.no_smoothing is True
    assert args.backend == "torch", "the config beats the default"
    assert args.crop_scale is None and args.vcam_mode == "fit" and args.mirror is False, "defaults stay"
    assert args.config == path
    plain = parse(["--avatar", "x.png"], write(tmp_path / "empty.toml", ""))
    assert plain.vcam_size == (1280, 720) and plain.backend == "auto" and plain.smooth_beta != 2.5


def test_required_avatar_may_come_from_the_config_but_must_come_from_somewhere(tmp_path, capsys):
    assert parse([], write(tmp_path / "c.toml", 'avatar = "face.png"\n')).avatar == "face.png"
    assert main(["--config", str(write(tmp_path / "none.toml", 'camera = 1\n'))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --avatar is required") and "none.toml" in err and err.count("\n") == 1


def test_save_round_trip_merges_and_keeps_other_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "sub" / "config.toml"
    code, err = run_main(capsys, ["--config", path, "--save-config", "--avatar", "faces", "--vcam-size", "640x480",
                                  "--remote-quality", "80", "--no-smoothing", "--no-vcam", "--smooth-beta", "0.5"])
    assert code == 0 and f"saved 6 setting(s) to {path}" in err
    saved = tomllib.loads(path.read_text())
    assert saved == {"avatar": str(tmp_path / "faces"), "vcam-size": "640x480", "remote-quality": 80,
                     "no-smoothing": True, "vcam": False, "smooth-beta": 0.5}, "paths saved absolute"
    # a second save changes only what it names; a key spelled with underscores gives way to the dashed one
    write(path, path.read_text() + 'vcam_fps = 20.0\n')
    code, err = run_main(capsys, ["--config", path, "--save-config", "--vcam-fps", "25", "--backend", "torch"])
    assert code == 0, err
    saved = tomllib.loads(path.read_text())
    assert saved["vcam-fps"] == 25.0 and "vcam_fps" not in saved and saved["backend"] == "torch"
    assert saved["remote-quality"] == 80 and saved["vcam-size"] == "640x480"
    # and what was saved is what the next run gets
    args = parse([], path)
    assert (args.avatar, args.vcam_size, args.remote_quality, args.no_smoothing, args.vcam, args.smooth_beta,
            args.vcam_fps, args.backend) == (str(tmp_path / "faces"), (640, 480), 80, True, False, 0.5, 25.0, "torch")
    assert not [p for p in path.parent.iterdir() if p.name != "config.toml"], "no temp file left behind"


def test_given_preferences_are_only_the_flags_typed():
    given = given_preferences(build_parser(), ["--avatar", "/a.png", "--backend", "auto", "--mirror"])
    assert given == {"avatar": "/a.png", "backend": "auto", "mirror": True}, "a default typed out counts too"
    assert given_preferences(build_parser(), ["--save-config", "--config", "x.toml"]) == {}


def test_save_refuses_a_value_the_run_would_refuse_and_keeps_the_file(tmp_path, capsys):
    path = write(tmp_path / "c.toml", 'camera = 2\n')
    with pytest.raises(SystemExit) as exit_:  # refused by the flag's own type, before anything is saved
        run_main(capsys, ["--config", path, "--save-config", "--smooth-min-cutoff", "500"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: argument --smooth-min-cutoff") and err.count("\n") == 1
    assert path.read_text() == 'camera = 2\n'


def test_save_does_not_replace_a_broken_file(tmp_path, capsys):
    path = write(tmp_path / "c.toml", 'camera = 2\nthis is not toml\n')
    code, err = run_main(capsys, ["--config", path, "--save-config", "--camera", "1"])
    assert code == 2 and "line 2" in err
    assert path.read_text().endswith("this is not toml\n")


def test_save_failure_is_one_line_and_the_old_file_stays(tmp_path, monkeypatch):
    path = write(tmp_path / "c.toml", 'camera = 2\n')

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(config.os, "replace", no_space)
    with pytest.raises(ConfigError, match="cannot write config file .*No space left"):
        save_preferences(path, {"camera": 1}, build_parser())
    assert path.read_text() == 'camera = 2\n' and [p.name for p in tmp_path.iterdir()] == ["c.toml"]


@pytest.mark.parametrize("text, expected", [
    ('vcam-sise = "640x480"\n', "unknown key 'vcam-sise'; did you mean 'vcam-size'?"),
    ('remote-quality = "high"\n', 'remote-quality = "high": invalid int value'),
    ('vcam-size = "big"\n', 'vcam-size = "big": expected WIDTHxHEIGHT'),
    ('vcam-size = "99999x1"\n', "out of range"),
    ('vcam-fps = -3\n', "vcam-fps = -3: must be > 0"),
    ('mirror = "yes"\n', 'mirror = "yes": expected true or false, got a string'),
    ('vcam = 1\n', "vcam = 1: expected true or false, got an integer"),
    ('remote-quality = true\n', "remote-quality = true: expected a number or a string, got true/false"),
    ('backend = "gpu"\n', "backend = \"gpu\": invalid choice 'gpu'"),
    ('avatar = ["a", "b"]\n', "expected a string, got a list"),
    ('[vcam]\nsize = 1\n', "vcam = {'size': 1}: expected true or false, got a table"),
    ('vcam-size = "640x480"\nvcam_size = "320x240"\n', "set the same flag; keep one"),
    ('config = "other.toml"\n', "unknown key 'config'"),
    ('save-config = true\n', "unknown key 'save-config'"),
    ('smooth-beta = -1.0\n', "smooth-beta = -1.0: must be >= 0"),
    ('smooth-beta = nan\n', "smooth-beta = nan: must be a finite number"),
    ('camera = 1\nvcam-size = \n', "is not valid TOML: Invalid value (at line 2, column 13)"),
])
def test_a_bad_config_is_one_error_line_naming_the_file_and_key(tmp_path, capsys, text, expected):
    path = write(tmp_path / "bad.toml", text)
    code, err = run_main(capsys, ["--config", path, "--avatar", "a.png", "--no-vcam", "--no-preview"])
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and expected in err, err


def test_an_overriding_flag_does_not_hide_a_bad_config_value(tmp_path):
    # the file is wrong whatever this run types: say so now rather than on the next run without the flag
    with pytest.raises(ConfigError, match="bad.toml: vcam-size"):
        parse(["--vcam-size", "640x480"], write(tmp_path / "bad.toml", 'vcam-size = "big"\n'))


def test_missing_files(tmp_path, isolated_config):
    with pytest.raises(ConfigError, match="not found"):
        parse(["--avatar", "a.png"], tmp_path / "nope.toml")
    assert not isolated_config.exists()
    args = parse_args(build_parser(), ["--avatar", "a.png"])  # the default file may be missing: no preferences
    assert args.config == isolated_config and args.vcam_size == (1280, 720)


def test_hostile_files_are_refused_before_reading(tmp_path):
    big = tmp_path / "big.toml"
    with open(big, "wb") as handle:  # sparse: a "huge" file costs no disk
        handle.truncate(10 * 1024 ** 3)
    with pytest.raises(ConfigError, match="more than the 65,536"):
        read_config(big, must_exist=True)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_config(tmp_path, must_exist=True)
    if os.path.exists("/dev/zero"):
        with pytest.raises(ConfigError, match="not a regular file"):
            read_config(Path("/dev/zero"), must_exist=True)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)  # opening it for reading would block without a writer
        with pytest.raises(ConfigError, match="not a regular file"):
            read_config(fifo, must_exist=True)
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config(_bytes(tmp_path / "latin.toml", b"a = '\xe9'\n"), must_exist=True)
    assert MAX_CONFIG_BYTES < 1024 ** 2


def _bytes(path, data):
    path.write_bytes(data)
    return path


def test_a_file_growing_past_the_cap_while_read_is_still_refused(tmp_path, monkeypatch):
    path = write(tmp_path / "c.toml", "camera = 1\n")
    real_fstat = os.fstat

    def small(fd):  # fstat says small; the bytes say otherwise
        info = real_fstat(fd)
        return os.stat_result((info.st_mode, *[0] * 5, 10, *[0] * 3))
    path.write_text("#" * (MAX_CONFIG_BYTES + 10))
    monkeypatch.setattr(config.os, "fstat", small)
    with pytest.raises(ConfigError, match="grew past"):
        read_config(path, must_exist=True)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_save_through_a_symlink_updates_its_target(tmp_path):
    target = write(tmp_path / "dotfiles.toml", "camera = 2\n")
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    save_preferences(link, {"mirror": True}, build_parser())
    assert link.is_symlink() and tomllib.loads(target.read_text()) == {"camera": 2, "mirror": True}


def test_help_names_the_config_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--config FILE" in out and "--save-config" in out


def test_the_documented_example_config_is_valid(tmp_path):
    docs = (Path(__file__).resolve().parents[1] / "docs" / "live.md").read_text()
    section = docs[docs.index("## Saved preferences"):]
    example = section[section.index("```toml") + len("```toml"):section.index("```", section.index("```toml") + 3)]
    args = parse([], write(tmp_path / "c.toml", example))
    assert args.avatar == "/home/me/avatars" and args.vcam_size == (1280, 720) and args.backend == "openvino"


# --- hostile and awkward files, paths that cannot be expanded, switching a saved flag off, whose value it was -----
def test_arrays_nested_3000_deep_are_one_line_not_a_recursion_error(tmp_path, capsys):
    path = write(tmp_path / "deep.toml", "vcam-size = " + "[" * 3000 + "]" * 3000 + "\n")
    assert path.stat().st_size < 7000
    code, err = run_main(capsys, ["--config", path, "--avatar", "a.png"])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and "nests deeper" in err


def test_a_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "notepad.toml"
    path.write_bytes("\ufeffmirror = true\r\ncamera = 2\r\n".encode("utf-8"))
    args = parse([], path)
    assert args.mirror is True and args.camera == 2


@pytest.mark.parametrize("where", ["--config", "env", "file avatar", "--avatar", "--save-config"])
def test_an_unknown_user_in_a_path_is_one_line(tmp_path, capsys, monkeypatch, where):
    argv = ["--no-vcam", "--no-preview"]
    if where == "--config":
        argv += ["--config", "~nosuchuser-la/config.toml", "--avatar", "a.png"]
    elif where == "env":
        monkeypatch.setenv(config.CONFIG_ENV, "~nosuchuser-la/config.toml")
        argv += ["--avatar", "a.png"]
    elif where == "file avatar":
        argv += ["--config", write(tmp_path / "c.toml", 'avatar = "~nosuchuser-la/face.png"\n')]
    elif where == "--avatar":
        argv += ["--avatar", "~nosuchuser-la/face.png"]
    else:
        argv += ["--config", tmp_path / "c.toml", "--save-config", "--avatar", "~nosuchuser-la/face.png"]
    code, err = run_main(capsys, argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "~nosuchuser-la" in err
    if where == "file avatar":
        assert str(tmp_path / "c.toml") in err
    assert not (tmp_path / "c.toml").exists() or where == "file avatar"


def test_a_home_path_is_expanded_once_wherever_it_comes_from(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = parse([], write(tmp_path / "c.toml", 'avatar = "~/faces"\noutput = "~/out.mp4"\n'))
    assert (args.avatar, args.output) == (str(tmp_path / "faces"), str(tmp_path / "out.mp4"))
    assert parse(["--driving", "~/talk.mp4"], tmp_path / "c.toml").driving == str(tmp_path / "talk.mp4")


def _switches(parser):
    """Every on/off flag a preference can turn on (store_true and friends; --vcam/--no-vcam have both forms)."""
    import argparse
    return [a for a in config.preference_actions(parser).values()
            if a.nargs == 0 and isinstance(a, argparse._StoreConstAction)]  # noqa: SLF001


def test_every_saved_on_off_flag_can_be_switched_off_for_one_run(tmp_path):
    parser = build_parser()
    switches = {config._key_name(a): a for a in _switches(parser)}  # noqa: SLF001
    assert {"mirror", "no-smoothing", "loop", "no-track", "best-frame"} <= set(switches)
    path = write(tmp_path / "c.toml", "".join(f"{key} = true\n" for key in sorted(switches)))
    on = parse([], path)
    assert all(getattr(on, a.dest) == a.const for a in switches.values())
    opposites = [config._opposite("--" + key) for key in sorted(switches)]  # noqa: SLF001
    assert "--no-mirror" in opposites and "--smoothing" in opposites
    off = parse_args(build_parser(), ["--config", str(path), *opposites])
    assert all(getattr(off, a.dest) == a.default for a in switches.values()), "each opposite restores the default"


def test_saving_an_opposite_turns_the_flag_off_in_the_file(tmp_path, capsys):
    path = write(tmp_path / "c.toml", "mirror = true\nno-smoothing = true\n")
    code, err = run_main(capsys, ["--config", path, "--save-config", "--no-mirror", "--smoothing"])
    assert code == 0, err
    assert tomllib.loads(path.read_text()) == {"mirror": False, "no-smoothing": False}
    args = parse([], path)
    assert args.mirror is False and args.no_smoothing is False


def test_a_value_from_the_file_that_the_run_refuses_names_the_file(tmp_path, capsys):
    import cv2
    import numpy as np
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.full((64, 64, 3), 90, np.uint8))
    path = write(tmp_path / "c.toml", f'camera = 97\navatar = "{face}"\n')
    code, err = run_main(capsys, ["--config", path, "--no-vcam", "--no-preview"])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "camera 97" in lines[0] and f"--camera 97 from the config file {path}" in lines[0]
    # the same refusal for a value typed now does not blame the file
    code, err = run_main(capsys, ["--config", path, "--camera", "96", "--no-vcam", "--no-preview"])
    assert code == 2 and "camera 96" in err and "config file" not in err, err
    # a path from the file, refused later (the avatar is looked for after the flags were checked)
    missing = write(tmp_path / "m.toml", f'avatar = "{tmp_path / "gone.png"}"\n')
    code, err = run_main(capsys, ["--config", missing, "--no-vcam", "--no-preview"])
    assert code == 2 and "gone.png" in err and f"from the config file {missing}" in err, err


def test_the_doctor_names_the_file_for_a_failing_value_from_it(tmp_path):
    from live.cli import doctor
    path = write(tmp_path / "c.toml", "camera = 97\n")
    args = parse(["--doctor"], path)
    [camera] = doctor.run_checks(args, checks=[doctor.check_camera], out=lambda line: None)
    assert camera.status == "FAIL" and f"--camera 97 from the config file {path}" in camera.text
