"""The one exception type for bad user input (config, data, checkpoint, CLI).

The CLI turns a `UserError` into one line on stderr and exit code 2, so every
message must name what is wrong and how to fix it, in one sentence.
"""

# Exit codes of the CLI, shared with the sweep runner.
EXIT_BAD_INPUT = 2  # a UserError: one line on stderr, nothing written
EXIT_DIVERGED = 3  # loss, parameters or BN statistics not finite; status.json says where
EXIT_STOPPED = 4  # SIGTERM/SIGINT: a checkpoint was saved; rerun to resume


class UserError(ValueError):
  """Bad input that the user can fix; `field` names the config field, if any."""

  def __init__(self, message: str, field: str | None = None):
    self.field = field
    super().__init__(f"{field}: {message}" if field else message)
