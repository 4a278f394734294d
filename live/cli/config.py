"""Saved preferences: a TOML file of long flags, read before the command line so that flags override it.

    flag given now  >  the config file  >  the parser's default

The keys are the long flags without their dashes (`vcam-size = "1280x720"`; `vcam_size` is accepted too), taken
from the argparse parser itself, so a new flag can be saved without touching this module. Every value goes through
the flag's own type function and choices (range checks included), so the file accepts exactly what the command
line does; on/off flags take `true`/`false`. `--save-config` merges the flags given on the command line into the
file (an atomic rename: readers see the old file or the new one) and exits.

The file is treated as hostile input: read through engines/files.py (regular files only - a FIFO or a device would
block or never end -, at most MAX_CONFIG_BYTES, UTF-8 TOML with or without a byte-order mark, nesting counted before
parsing); any problem is one UserError line naming the file (and the key or TOML line). A value that passes the
file but is refused later in the run (no such camera, a missing avatar) names the file as its origin too
(`blame_config`). File paths, typed or from the file, have their `~` expanded once here (`~nosuchuser` is one line).
Every on/off flag the file can turn on has an opposite for one run: `--no-mirror` for `mirror = true`,
`--smoothing` for `no-smoothing = true` (`add_opposites`).
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import stat
import sys
from contextlib import contextmanager
from pathlib import Path

from engines.errors import UserError
from engines.files import FileMissing, FileRefused, load_toml, user_path
from engines.storage import write_atomically

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
        return _user_path(environ[CONFIG_ENV], f"${CONFIG_ENV}")
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
                        "holds) and exit; an on/off flag the file turns on is turned off for one run by its "
                        "opposite: --no-mirror, --smoothing for no-smoothing, ...")


def _user_path(text, what: str) -> Path:
    try:
        return user_path(text, what=what)
    except FileRefused as exc:
        raise ConfigError(str(exc)) from None


# --- reading ----------------------------------------------------------------------------------------------------
def read_config(path: Path, *, must_exist: bool) -> dict:
    """The TOML table in `path`; {} when it does not exist and need not. Raises ConfigError (one line)."""
    try:
        return load_toml(path, MAX_CONFIG_BYTES, what="config file")
    except FileMissing:
        if must_exist:
            raise ConfigError(f"config file {path} not found") from None
        return {}
    except FileRefused as exc:
        raise ConfigError(str(exc)) from None


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


def _opposite(name: str) -> str:
    """--mirror -> --no-mirror; --no-smoothing -> --smoothing."""
    return "--" + name[5:] if name.startswith("--no-") else "--no-" + name[2:]


def add_opposites(parser: argparse.ArgumentParser) -> None:
    """Give every on/off flag a preference can turn on (store_true, store_const) its opposite, so a saved `true`
    can be undone for one run. The opposite restores the flag's default; it is no key of its own (hidden from
    --help, where --save-config names the rule). Idempotent; flags with both forms already are left alone."""
    for action in list(preference_actions(parser).values()):
        if action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction) or not isinstance(
                action, argparse._StoreConstAction):  # noqa: SLF001 - store_true/false are store_const
            continue
        opposite = _opposite(next(s for s in action.option_strings if s.startswith("--")))
        if opposite in parser._option_string_actions:  # noqa: SLF001
            continue
        parser.add_argument(opposite, dest=action.dest, action="store_const", const=action.default,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)


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

    `args.config` is the file used (a Path); `args.from_config` maps each dest whose value came from the file
    (not overridden by a flag) to (its key, its value) there, for `blame_config`. A `required` flag may come from the
    file instead, and none is required with --save-config. `check` (a function of a namespace raising UserError) is
    run on the file's values alone, so a value the run would refuse is reported with the file's name even where a
    flag overrides it. Paths (flags taking a FILE, PATH, FOLDER, ...) have their `~` expanded."""
    argv = list(sys.argv[1:] if argv is None else argv)
    add_opposites(parser)
    actions = parser._actions  # noqa: SLF001 - the parser is the single list of flags
    with _optional(actions):
        first = parser.parse_args(argv)  # where the file is, read by argparse itself (abbreviations, --x=y)
    path = _user_path(first.config, "--config") if first.config else default_config_path()
    table = read_config(path, must_exist=bool(first.config) and not first.save_config)
    values = config_values(parser, table, path)
    keys = {preference_actions(parser)[key].dest: key for key in table}
    try:
        _expand_paths(parser, values, lambda dest: f"{path}: {keys[dest]}")
    except FileRefused as exc:
        raise ConfigError(str(exc)) from None
    if check is not None and values:
        with _optional(actions):
            alone = parser.parse_args([], namespace=argparse.Namespace(**values))
        try:
            check(alone)
        except UserError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    with _optional([a for a in actions if a.dest in values or first.save_config]):
        args = parser.parse_args(argv, namespace=argparse.Namespace(**values))
    typed = _set_on_command_line(parser, argv)
    try:
        _expand_paths(parser, vars(args), lambda dest: _flag_name(parser, dest), only=typed)
    except FileRefused as exc:
        raise ConfigError(str(exc)) from None
    args.config = path
    args.from_config = {dest: (keys[dest], table[keys[dest]]) for dest in values if dest not in typed}
    return args


def _flag_of(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _flag_name(parser, dest: str) -> str:
    action = next((a for a in preference_actions(parser).values() if a.dest == dest), None)
    return "--" + _key_name(action) if action is not None else _flag_of(dest)


def _expand_paths(parser, values: dict, what, only=None) -> None:
    """`~` and `~user` expanded in place in the values of flags that take paths (FileRefused naming `what(dest)`
    for a user that does not exist); `only`: just these dests."""
    for action in {a.dest: a for a in preference_actions(parser).values()}.values():
        value = values.get(action.dest)
        if (only is not None and action.dest not in only) or not _names_a_path(action):
            continue
        if isinstance(value, str) and value.startswith("~"):
            values[action.dest] = str(user_path(value, what=what(action.dest)))


def blame_config(args, text: str) -> str:
    """`text` (a refusal) with the config file named as the origin of the values it is about: those set by the
    file (args.from_config) whose flag (--camera) or text (a path) the message names. Unchanged otherwise."""
    blamed = []
    for dest, (key, raw) in (getattr(args, "from_config", None) or {}).items():
        flag = "--" + key.replace("_", "-")
        named = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None
        quoted = any(isinstance(v, str) and len(v) >= 3 and v in text for v in (raw, getattr(args, dest, None)))
        if named or quoted:
            blamed.append(f"{flag} {raw if isinstance(raw, str) else _show(raw)}")
    if not blamed or "from the config file" in text:
        return text
    return f"{text} ({' and '.join(blamed)} from the config file {args.config})"


_UNSET = object()


def _typed_on_command_line(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, dict[str, list]]:
    """(the namespace of `argv` alone - a dest the command line does not set holds _UNSET -, the texts typed for
    each dest that takes a value)."""
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
    return marked, typed


def _set_on_command_line(parser: argparse.ArgumentParser, argv) -> set[str]:
    marked, _ = _typed_on_command_line(parser, argv)
    return {dest for dest, value in vars(marked).items() if value is not _UNSET}


def given_preferences(parser: argparse.ArgumentParser, argv=None) -> dict[str, object]:
    """The flags typed on this command line as config entries (key -> TOML value): numbers as numbers, other
    values as the text typed (vcam-size = "1280x720"), on/off flags as true/false (false: the opposite, such as
    --no-mirror, was typed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    add_opposites(parser)
    actions = {a.dest: a for a in preference_actions(parser).values()}
    marked, typed = _typed_on_command_line(parser, argv)
    entries = {}
    for dest, action in actions.items():
        value = getattr(marked, dest)
        if value is not _UNSET:
            entries[_key_name(action)] = _toml_value(action, value, typed.get(dest, []))
    return entries


def _toml_value(action, value, texts: list[str]):
    if isinstance(action, argparse.BooleanOptionalAction):
        return bool(value)
    if action.nargs == 0:  # store_true / store_const: "on" unless its opposite (--no-mirror) was typed
        return value == action.const
    path = _names_a_path(action)
    if isinstance(value, list):
        return [_toml_scalar(v, t, path) for v, t in zip(value, texts or [str(v) for v in value])]
    return _toml_scalar(value, texts[-1] if texts else str(value), path)


def _toml_scalar(value, text: str, path: bool):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    # a relative path is saved absolute: the next run may start in another folder
    return str(user_path(text, what="a path").absolute()) if path and text else text


def _names_a_path(action) -> bool:
    """Whether the flag takes a file or folder, by its metavar (PATH, FILE, FILE|FOLDER, OUT.mp4)."""
    words = str(action.metavar or "").split("|")
    return any(w in ("PATH", "FILE", "FOLDER", "DIR") or "." in w for w in words)


# --- writing ----------------------------------------------------------------------------------------------------
def save_preferences(path: Path, entries: dict[str, object], parser: argparse.ArgumentParser) -> Path:
    """Merge `entries` into the config file and write it atomically; keys spelled with underscores in the file
    give way to the dashed spelling written now. Returns the file written (a symlink's target)."""
    import tomli_w

    path = _user_path(path, "config file")
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
