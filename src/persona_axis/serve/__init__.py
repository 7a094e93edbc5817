"""``persona-axis serve``: an OpenAI-compatible chat server with per-request caps and telemetry.

Modules: :mod:`~persona_axis.serve.app` (the FastAPI app, :func:`create_app`),
:mod:`~persona_axis.serve.engine` (the model side: settings, batches, telemetry),
:mod:`~persona_axis.serve.scheduler` (the bounded queue and the worker thread that owns the
model), :mod:`~persona_axis.serve.protocol` (request validation, OpenAI response bodies),
:mod:`~persona_axis.serve.drift` (the drift rule), :mod:`~persona_axis.serve.runner`
(uvicorn in the foreground or a background thread), :mod:`~persona_axis.serve.command` (CLI).
Importing this package imports nothing heavy; the CLI imports the rest on demand.
"""
