"""The one exception type for errors a user can cause and fix."""


class PersonaAxisError(Exception):
    """A user error: bad path, wrong model, bad JSON, unknown setting.

    The message says what went wrong and how to fix it; the CLI prints it as one line,
    without a traceback.
    """


class NotFound(PersonaAxisError):  # noqa: N818 - named after the HTTP status it maps to
    """The named thing (a served bundle, a cap setting) does not exist; the server answers 404."""


class Conflict(PersonaAxisError):  # noqa: N818 - named after the HTTP status it maps to
    """The request clashes with the current state (a name in use, the default bundle); the
    server answers 409."""
