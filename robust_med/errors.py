"""One exception type for problems the user can fix.

`robust_med.main` and the other entry points catch `UserError` and print its message as a single
line (``error: <problem>. <fix>``) instead of a traceback. Raise it for bad data, bad configs,
impossible values and diverging training; let genuine bugs raise their own exceptions.
"""


class UserError(Exception):
  """A problem with the user's input, data or settings; the message names the problem and the fix."""


class DataError(UserError):
  """Missing or malformed data."""


class ConfigError(UserError):
  """Unknown config keys or impossible config values."""
