"""``persona-axis serve``: an OpenAI-compatible server with caps, drift telemetry and a web page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_axis.cli.common import (
    AllowMismatchOption,
    DtypeOption,
    ModelOption,
    console,
    errors,
    load_checked,
)
from persona_axis.errors import PersonaAxisError

API_KEY_ENV = "PERSONA_AXIS_API_KEY"


def serve(
    bundle: Annotated[Path, typer.Option(help="AxisBundle directory built for this model.")],
    model: ModelOption = None,
    cap: Annotated[
        str,
        typer.Option(
            help="Cap for requests that name none: a setting from the bundle's caps.json, "
            "'recommended' (the bundle's recommended cap) or 'none'."
        ),
    ] = "recommended",
    host: Annotated[
        str, typer.Option(help="Interface to bind; the default only accepts local clients.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=API_KEY_ENV,
            help=f"Require 'Authorization: Bearer KEY' on /v1 routes (or set ${API_KEY_ENV}).",
            show_default=False,
        ),
    ] = None,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Requests waiting at most; more get 429.")
    ] = 64,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests per generated batch.")] = 8,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="Micro-batching window after a multi-request batch.")
    ] = 100.0,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Largest max_tokens a request may ask for.")
    ] = 512,
    default_max_tokens: Annotated[
        int, typer.Option(min=1, help="max_tokens of requests that give none.")
    ] = 128,
    max_input_tokens: Annotated[
        int, typer.Option(min=1, help="Longest rendered conversation accepted, in tokens.")
    ] = 4096,
    max_body_bytes: Annotated[int, typer.Option(min=1024, help="Largest request body.")] = (
        1_000_000
    ),
    model_name: Annotated[
        str | None, typer.Option(help="Model id clients send; default: the loaded name.")
    ] = None,
    dtype: DtypeOption = "auto",
    allow_mismatch: AllowMismatchOption = False,
) -> None:
    """Serve the model over an OpenAI-compatible API with caps, drift telemetry and a chat page."""
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.serve.app import create_app
    from persona_axis.serve.runner import is_loopback, serve_forever

    if default_max_tokens > max_tokens:
        raise PersonaAxisError(
            f"--default-max-tokens {default_max_tokens} is above --max-tokens {max_tokens}; "
            "lower it or raise --max-tokens."
        )
    axis_bundle = AxisBundle.load(bundle)
    lm = load_checked(axis_bundle, model, dtype, allow_mismatch)
    app = create_app(
        lm,
        axis_bundle,
        default_cap=cap,
        api_key=api_key or None,
        max_queue=max_queue,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_tokens_limit=max_tokens,
        default_max_tokens=default_max_tokens,
        max_input_tokens=max_input_tokens,
        max_body_bytes=max_body_bytes,
        model_name=model_name,
        allow_mismatch=allow_mismatch,
    )
    engine = app.state.engine
    if not is_loopback(host) and not api_key:
        errors.print(
            f"[bold yellow]warning:[/] binding {host} without an API key: anyone who can reach "
            f"this port can use the model (set --api-key or ${API_KEY_ENV})."
        )
    shown = "localhost" if is_loopback(host) else host
    console.print(
        f"[bold]{app.state.engine.lm.name}[/] on http://{shown}:{port}/  "
        f"(default cap: {engine.default.cap or 'none'}; "
        f"API key {'required' if api_key else 'off'})"
    )
    serve_forever(app, host, port)
