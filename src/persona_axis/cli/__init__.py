"""The ``persona-axis`` command line: one Typer app, one module per command.

Every command is a thin shell over a library function; shared options, the consoles, the judge
flags and the one ``--model`` rule live in :mod:`persona_axis.cli.common`. User errors
(:class:`~persona_axis.errors.PersonaAxisError`) print one line on stderr, without a traceback,
and exit with status 2; so do file-system errors a user causes (a path that is a file, a folder
without write permission, a full disk), as the path and the system's reason.
"""

from __future__ import annotations

import typer

from persona_axis.cli import (
    build,
    calibrate_monitor,
    chat,
    demo,
    evals,
    info,
    interchange,
    monitor,
    report,
    serve,
    simulate,
    sweep,
    validate,
)
from persona_axis.cli.common import fail
from persona_axis.errors import PersonaAxisError
from persona_axis.files import os_error

app = typer.Typer(
    help="Compute, monitor and stabilise the Assistant Axis of chat models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for command in (
    info.info,
    chat.chat,
    build.build,
    monitor.monitor,
    calibrate_monitor.calibrate_monitor,
    simulate.simulate,
    report.report,
    serve.serve,
    sweep.sweep,
    demo.demo,
    validate.validate,
):
    app.command()(command)
app.command()(interchange.export)
app.command("import")(interchange.import_bundle)
app.add_typer(evals.eval_app, name="eval")


def main() -> None:
    """Console entry point: run the app, turning user errors into one clear line."""
    try:
        app()
    except PersonaAxisError as exc:
        fail(exc)
    except OSError as exc:  # paths, permissions, disk full: the user's to fix
        fail(os_error(exc))


__all__ = ["app", "main"]
