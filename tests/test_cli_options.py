"""Each flag declared once: every command line builds its flags from the shared groups (engines/options.py,
live/cli/options.py), so a flag two commands share has the same choices, default and value check everywhere, and a
bad value is refused the same way (one `error:` line, exit 2)."""
import argparse

import pytest

from engines.backends import BACKENDS, DEVICES, PRECISION_CHOICES


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from engines.bench import build_parser as bench
    from live.cli.animate import build_parser as animate
    from live.cli.app import build_parser as run_live
    from remote.server import build_parser as server
    # the doctor checks the run these flags would start: `live-avatar doctor` is run_live.py's parser + --doctor
    return {"run_live": run_live(), "animate": animate(), "server": server(), "bench": bench()}


def _flags(parser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings
            if option.startswith("--") and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))}


def _check(action):
    """What a flag's type accepts and refuses, as something comparable: the kind and its bounds."""
    kind = action.type
    return None if kind is None else (getattr(kind, "__name__", repr(kind)), getattr(kind, "bounds", None))


def test_the_engine_flags_are_in_every_command_with_the_same_choices_and_defaults():
    from live.cli.animate import FOMM_DEMO_DEFAULTS
    parsers = _parsers()
    flags = {name: _flags(parser) for name, parser in parsers.items()}
    for name in parsers:
        assert {"--checkpoint", "--device", "--precision"} <= set(flags[name]), name
        assert flags[name]["--device"].choices == DEVICES and flags[name]["--device"].default == "auto"
        assert flags[name]["--precision"].choices == PRECISION_CHOICES and flags[name]["--precision"].default == "auto"
    for name in ("run_live", "animate", "server"):
        assert {"--backend", "--align-corners", "--deterministic-weights"} <= set(flags[name]), name
        assert flags[name]["--backend"].choices == BACKENDS
        expected = FOMM_DEMO_DEFAULTS["backend"] if name == "animate" else "auto"
        assert flags[name]["--backend"].default == expected, name
        assert flags[name]["--align-corners"].default is True
        assert "--no-align-corners" in flags[name]


def test_every_flag_shared_by_two_commands_has_the_same_choices_default_and_check():
    from live.cli.animate import FOMM_DEMO_DEFAULTS
    flags = {name: _flags(parser) for name, parser in _parsers().items()}
    compared = set()
    for a in flags:
        for b in flags:
            if a >= b:
                continue
            for option in set(flags[a]) & set(flags[b]):
                x, y = flags[a][option], flags[b][option]
                assert x.dest == y.dest and x.choices == y.choices and x.nargs == y.nargs, (a, b, option)
                assert _check(x) == _check(y), (a, b, option)
                if "animate" in (a, b) and x.dest in FOMM_DEMO_DEFAULTS:
                    continue  # FOMM's demo defaults, declared in one table
                assert x.default == y.default, (a, b, option, x.default, y.default)
                compared.add(option)
    # the groups really are shared (not a test that compares nothing)
    assert {"--device", "--precision", "--checkpoint", "--align-corners", "--deterministic-weights", "--remote",
            "--remote-quality", "--absolute", "--no-adapt-scale", "--max-frames", "--output"} <= compared


def test_animate_declares_what_it_differs_in_and_takes_the_rest_from_run_live():
    from live.cli.animate import FOMM_DEMO_DEFAULTS, session_args
    args = session_args(["--avatar", "a.png", "--driving", "d.mp4", "--output", "o.mp4"])
    assert {dest: getattr(args, dest) for dest in FOMM_DEMO_DEFAULTS} == FOMM_DEMO_DEFAULTS
    assert args.vcam is None and args.preview is None and args.smooth_beta is not None  # run_live.py's defaults
    chosen = session_args(["--avatar", "a.png", "--driving", "d.mp4", "--output", "o.mp4", "--backend", "auto",
                           "--no-align-corners", "--absolute"])
    assert chosen.backend == "auto" and chosen.align_corners is False and chosen.absolute


@pytest.mark.parametrize("command", ["run_live", "animate", "server", "bench"])
@pytest.mark.parametrize("flag, value", [("--device", "tpu"), ("--precision", "fp8")])
def test_a_bad_engine_value_is_one_error_line_in_every_command(capsys, command, flag, value):
    parser = _parsers()[command]
    required = ["--avatar", "a", "--driving", "d", "--output", "o.mp4"] if command == "animate" else []
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*required, flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"error: argument {flag}: invalid choice") and err.count("\n") == 1


@pytest.mark.parametrize("command, flag, value, fragment", [
    ("run_live", "--remote-quality", "0", "must be >= 1 and <= 100"),
    ("run_live", "--max-frames", "0", "must be > 0"),
    ("run_live", "--crop-scale", "nan", "must be a finite number"),
    ("run_live", "--vcam-fps", "1000", "must be > 0 and <= 240"),
    ("animate", "--remote-quality", "101", "must be >= 1 and <= 100"),
    ("server", "--port", "70000", "must be >= 1 and <= 65535"),
    ("server", "--batch-wait-ms", "inf", "must be a finite number"),
    ("server", "--max-batch", "0", "must be > 0"),
    ("bench", "--frames", "0", "must be > 0"),
    ("bench", "--warmup", "-1", "must be >= 0"),
])
def test_values_are_checked_by_their_flags_type(capsys, command, flag, value, fragment):
    parser = _parsers()[command]
    required = ["--avatar", "a", "--driving", "d", "--output", "o.mp4"] if command == "animate" else []
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*required, flag, value])
    [line] = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and line.startswith(f"error: argument {flag}: ") and fragment in line, line


@pytest.mark.parametrize("argv, fragment", [(["--device", "npu"], "--device npu"),
                                            (["--precision", "int8"], "--precision int8")])
def test_the_benchmark_refuses_what_it_cannot_time_in_one_line(capsys, argv, fragment):
    from engines.bench import main
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and fragment in line
