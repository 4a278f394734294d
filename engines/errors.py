"""The one error type every layer raises for problems the user can fix.

A UserError carries a complete one-line explanation (what went wrong and what to do), so a command line can print
``error: <msg>`` and exit with status 2 instead of a traceback. It lives at the bottom layer so that `remote/`
(both ends of the wire) and `live/` share it without importing each other.
"""


class UserError(Exception):
    """An error whose message is a complete one-line explanation for the user."""


class WeightsError(UserError):
    """The model checkpoint is missing, cannot be downloaded, or fails its checksum."""
