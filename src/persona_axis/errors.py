"""The one exception type for errors a user can cause and fix."""


class PersonaAxisError(Exception):
    """A user error: bad path, wrong model, bad JSON, unknown setting.

    The message says what went wrong and how to fix it; the CLI prints it as one line,
    without a traceback.
    """
