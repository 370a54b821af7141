"""The base class of every error that reports the caller's mistake.

The library raises a specific class for each kind of mistake (a wrong
path, key, scheme parameter, model name, image shape, config field, or data
that is damaged or unlike what was asked); each of them derives from
`UserError`. The command-line faces print a `UserError` as one line
(`error: <what was wrong, what was expected>`) and keep the traceback for
every other exception, which is then a bug.

`UserError` is a mixin: each concrete class also derives from the builtin
class its callers have always caught (`ValueError`, `TypeError`, ...), so
`except ValueError` keeps working.
"""


class UserError(Exception):
  """A mistake of the caller, not a bug; the message says what was expected.

  Messages never contain a secret key (they name files, fingerprints and
  values).
  """
