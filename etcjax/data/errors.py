"""The exceptions of the data layer that report the user's mistake.

A dataset that is missing, unreadable or unlike what the config says, or
data fields of a config that do not fit together; the command-line faces
print them as one line.
"""

from etcjax import errors


class DataError(errors.UserError, ValueError):
  """A dataset, split or data config field that cannot be used as asked."""


class SplitError(DataError):
  """A split spec that cannot be read: malformed, or an empty slice."""
