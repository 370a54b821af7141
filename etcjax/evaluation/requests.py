"""The exceptions of evaluation requests that cannot be run as asked.

They are the user's mistake (a wrong name, size, limit, model or missing
extra), not a bug: the command-line faces print them as one line.
"""

from etcjax import errors


class RequestError(errors.UserError, ValueError):
  """A task request that cannot run: an unknown dataset, scheme, attack,
  codec or size, a bad limit or tag, or a model that does not fit the task."""


class MissingExtraError(errors.UserError, ImportError):
  """An optional dependency the task needs is not installed (names the
  `pip install -e ".[extra]"` that adds it)."""
