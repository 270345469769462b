"""User-facing errors: one line that says what went wrong and what to do."""


class ChanattrError(ValueError):
    """Bad input from the user (a file, a name, a number out of range).

    The command line prints its message on one line and exits with status 2.
    """


class LayerNotFoundError(ChanattrError, KeyError):
    """A dotted layer name that the model does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ChanattrWarning(UserWarning):
    """Something the user should know that does not stop the run (an upscaled image, a target
    output that does not respond). The command line prints it on one line."""
