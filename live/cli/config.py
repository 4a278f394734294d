"""Saved preferences: a TOML file of long flags, read before the command line so that flags override it.

    flag given now  >  the config file  >  the parser's default

The keys are the long flags without their dashes (`vcam-size = "1280x720"`; `vcam_size` is accepted too), taken
from the argparse parser itself, so a new flag can be saved without touching this module. Every value goes through
the flag's own type function and choices (range checks included), so the file accepts exactly what the command
line does; on/off flags take `true`/`false`. `--save-config` merges the flags given on the command line into the
file (an atomic rename: readers see the old file or the new one) and exits.

The file is treated as hostile input: regular files only (a FIFO or a device would block or never end), at most
MAX_CONFIG_BYTES, UTF-8 TOML; any problem is one UserError line naming the file (and the key or TOML line).
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import stat
import sys
from contextlib import contextmanager
from pathlib import Path

from engines.errors import UserError
from engines.storage import write_atomically

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the backport (requirements.txt installs it there)
    import tomli as tomllib

CONFIG_ENV = "LIVE_AVATAR_CONFIG"  # a config file path that replaces the platform default (tests, several setups)
APP_DIR = "live-avatar"
CONFIG_NAME = "config.toml"
MAX_CONFIG_BYTES = 64 * 1024  # preferences are a few hundred bytes; anything larger is not a config file
# Flags that run a one-off command rather than set how a run behaves: saving one would repeat it on every run.
NOT_PREFERENCES = {"help", "version", "config", "save_config", "doctor", "list_cameras", "list_audio", "audio_setup"}


class ConfigError(UserError):
    """The config file cannot be read, is not TOML, or holds a key/value the command line would refuse."""


def default_config_path(environ=None, platform: str | None = None) -> Path:
    """$LIVE_AVATAR_CONFIG, else the platform's config folder: $XDG_CONFIG_HOME/live-avatar/config.toml
    (~/.config when unset) on Linux and other Unixes, %APPDATA%\\live-avatar on Windows,
    ~/Library/Application Support/live-avatar on macOS."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]).expanduser()
    if platform.startswith("win"):
        base = Path(environ["APPDATA"]) if environ.get("APPDATA") else Path.home() / "AppData" / "Roaming"
    elif platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = environ.get("XDG_CONFIG_HOME", "")
        # the XDG spec: a relative value is invalid and must be ignored
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
    return base / APP_DIR / CONFIG_NAME


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("saved preferences")
    g.add_argument("--config", metavar="FILE",
                   help=f"read preferences (any long flag, e.g. vcam-size = \"1280x720\") from this TOML file "
                        f"instead of {default_config_path()}; flags given here override them")
    g.add_argument("--save-config", action="store_true",
                   help="write the flags given on this command line into the config file (merged with what it "
                        "holds) and exit")


# --- reading ----------------------------------------------------------------------------------------------------
def read_config(path: Path, *, must_exist: bool) -> dict:
    """The TOML table in `path`; {} when it does not exist and need not. Raises ConfigError (one line)."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang waiting for a writer (it is refused below)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"config file {path} not found") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"config file {path} is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {info.st_size} bytes: more than {MAX_CONFIG_BYTES} is not a "
                              "preferences file")
        chunks, total = [], 0
        while total <= MAX_CONFIG_BYTES:  # the size can change after fstat: never read past the cap
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return tomllib.loads(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line N, column M)"
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def preference_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config key -> the parser action it sets: each long flag without its dashes, and its dest (underscores)."""
    keys = {}
    for action in parser._actions:  # noqa: SLF001 - the parser is the single list of flags
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest in NOT_PREFERENCES or action.help == argparse.SUPPRESS:
            continue
        keys[longs[0][2:]] = action
        keys.setdefault(action.dest, action)
    return keys


def _key_name(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))[2:]


def _convert_scalar(action: argparse.Action, value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected {'a string' if action.type is None else 'a number or a string'}, "
                         f"got {_toml_type(value)}")
    text = value if isinstance(value, str) else repr(value)
    if action.type is None:
        converted = text
    else:
        try:
            converted = action.type(text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", "value")
            raise ValueError(f"invalid {kind} value {text!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"invalid choice {converted!r} (choose from {', '.join(map(str, action.choices))})")
    return converted


def convert_value(action: argparse.Action, value):
    """A TOML value as the namespace would hold it had the flag been typed; ValueError saying what is wrong."""
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_toml_type(value)}")
        return value
    if isinstance(action, (argparse._StoreConstAction, argparse._StoreTrueAction,  # noqa: SLF001
                           argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_toml_type(value)}")
        return action.const if value else action.default
    if isinstance(action, argparse._CountAction):  # noqa: SLF001
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"expected a count (0, 1, 2, ...), got {value!r}")
        return value
    if type(action) is not argparse._StoreAction:  # noqa: SLF001 - append and custom actions: no file syntax
        raise ValueError("cannot be set in a config file")
    if action.nargs in (None, "?"):
        return _convert_scalar(action, value)
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {_toml_type(value)}")
    if isinstance(action.nargs, int) and len(value) != action.nargs:
        raise ValueError(f"expected {action.nargs} values, got {len(value)}")
    if action.nargs == "+" and not value:
        raise ValueError("expected at least one value")
    return [_convert_scalar(action, item) for item in value]


def _toml_type(value) -> str:
    names = {bool: "true/false", str: "a string", int: "an integer", float: "a number", list: "a list",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)


def config_values(parser: argparse.ArgumentParser, table: dict, path: Path) -> dict[str, object]:
    """dest -> converted value for every key of the file; ConfigError naming the key and the file otherwise."""
    actions = preference_actions(parser)
    values, seen = {}, {}
    for key, value in table.items():
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(key, [_key_name(a) for a in actions.values()], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; the keys are the long flags of --help"
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        if action.dest in seen:
            raise ConfigError(f"{path}: {key!r} and {seen[action.dest]!r} set the same flag; keep one")
        seen[action.dest] = key
        try:
            values[action.dest] = convert_value(action, value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {key} = {_show(value)}: {exc}") from None
    return values


def _show(value) -> str:
    """A value as the file spells it (true, "text"), cut short."""
    text = json.dumps(value, default=str) if isinstance(value, (bool, str)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the command line with the file underneath -----------------------------------------------------------------
@contextmanager
def _optional(actions):
    """Let required flags be absent for the block (they may come from the file, or not matter)."""
    actions = [a for a in actions if a.required]
    for action in actions:
        action.required = False
    try:
        yield
    finally:
        for action in actions:
            action.required = True


def parse_args(parser: argparse.ArgumentParser, argv=None, *, check=None) -> argparse.Namespace:
    """parser.parse_args(argv) with the config file's values in place of the defaults (flag > config > default).

    `args.config` is the file used (a Path). A `required` flag may come from the file instead, and none is
    required with --save-config. `check` (a function of a namespace raising UserError) is run on the file's values
    alone, so a value the run would refuse is reported with the file's name even where a flag overrides it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    actions = parser._actions  # noqa: SLF001 - the parser is the single list of flags
    with _optional(actions):
        first = parser.parse_args(argv)  # where the file is, read by argparse itself (abbreviations, --x=y)
    path = Path(first.config).expanduser() if first.config else default_config_path()
    table = read_config(path, must_exist=bool(first.config) and not first.save_config)
    values = config_values(parser, table, path)
    if check is not None and values:
        with _optional(actions):
            alone = parser.parse_args([], namespace=argparse.Namespace(**values))
        try:
            check(alone)
        except UserError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    with _optional([a for a in actions if a.dest in values or first.save_config]):
        args = parser.parse_args(argv, namespace=argparse.Namespace(**values))
    args.config = path
    return args


_UNSET = object()


def given_preferences(parser: argparse.ArgumentParser, argv=None) -> dict[str, object]:
    """The flags typed on this command line as config entries (key -> TOML value): numbers as numbers, other
    values as the text typed (vcam-size = "1280x720"), on/off flags as true/false."""
    argv = list(sys.argv[1:] if argv is None else argv)
    actions = {a.dest: a for a in preference_actions(parser).values()}
    typed: dict[str, list[str]] = {}
    originals = {a: a.type for a in actions.values() if a.type is not None}

    def recording(action, convert):
        def record(text):
            typed.setdefault(action.dest, []).append(text)
            return convert(text)
        record.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its errors
        return record

    for action, convert in originals.items():
        action.type = recording(action, convert)
    try:
        with _optional(parser._actions):  # noqa: SLF001
            # every dest starts as a marker: what the command line set no longer holds it
            marked = parser.parse_args(argv, namespace=argparse.Namespace(**{d: _UNSET for d in actions}))
    finally:
        for action, convert in originals.items():
            action.type = convert
    entries = {}
    for dest, action in actions.items():
        value = getattr(marked, dest)
        if value is not _UNSET:
            entries[_key_name(action)] = _toml_value(action, value, typed.get(dest, []))
    return entries


def _toml_value(action, value, texts: list[str]):
    if isinstance(action, argparse.BooleanOptionalAction):
        return bool(value)
    if action.nargs == 0:  # store_true / store_false / store_const: given means "on" (see convert_value)
        return True
    path = _names_a_path(action)
    if isinstance(value, list):
        return [_toml_scalar(v, t, path) for v, t in zip(value, texts or [str(v) for v in value])]
    return _toml_scalar(value, texts[-1] if texts else str(value), path)


def _toml_scalar(value, text: str, path: bool):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    # a relative path is saved absolute: the next run may start in another folder
    return str(Path(text).expanduser().absolute()) if path and text else text


def _names_a_path(action) -> bool:
    """Whether the flag takes a file or folder, by its metavar (PATH, FILE, FILE|FOLDER, OUT.mp4)."""
    words = str(action.metavar or "").split("|")
    return any(w in ("PATH", "FILE", "FOLDER", "DIR") or "." in w for w in words)


# --- writing ----------------------------------------------------------------------------------------------------
def save_preferences(path: Path, entries: dict[str, object], parser: argparse.ArgumentParser) -> Path:
    """Merge `entries` into the config file and write it atomically; keys spelled with underscores in the file
    give way to the dashed spelling written now. Returns the file written (a symlink's target)."""
    import tomli_w

    path = Path(path).expanduser()
    if path.is_symlink():
        path = path.resolve()  # keep a dotfiles link pointing at the updated file
    existing = read_config(path, must_exist=False)
    config_values(parser, existing, path)  # a broken file is reported, never silently replaced
    actions = preference_actions(parser)
    merged = {k: v for k, v in existing.items()
              if not any(actions[k] is actions[new] for new in entries)}
    merged.update(entries)
    data = tomli_w.dumps(merged).encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o644
        write_atomically(path, data, prefix=f".{path.name}.", mode=mode)
    except OSError as exc:
        raise ConfigError(f"cannot write config file {path}: {exc.strerror or exc}") from None
    return path
