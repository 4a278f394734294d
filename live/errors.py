"""User-facing errors of the live loop.

A UserError carries a complete one-line explanation (what went wrong and what to do), so the CLI can print
``error: <msg>`` and exit with status 2 instead of dumping a traceback for problems the user can fix. The base
class lives in engines/errors.py.
"""


from engines.errors import UserError, WeightsError  # noqa: F401 - shared with engines/ and remote/ (the client)


class CaptureError(UserError):
    """The webcam / driving video / image folder cannot be opened or stopped delivering frames."""


class SinkError(UserError):
    """The virtual camera or output file cannot be opened or written."""


class AvatarError(UserError):
    """The avatar image or folder is missing or unreadable."""


class DisplayError(UserError):
    """A preview window was requested but there is no display to show it on."""
