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
)
from persona_axis.errors import PersonaAxisError
from persona_axis.serve.config import ServerConfig

API_KEY_ENV = "PERSONA_AXIS_API_KEY"
ADMIN_KEY_ENV = "PERSONA_AXIS_ADMIN_KEY"
ANY_INTERFACE = frozenset({"0.0.0.0", "::"})


def allowed_hosts(host: str, given: list[str]) -> list[str] | None:
    """``Host`` names the server answers: the ``--allowed-host`` names and this machine's
    loopback names, plus ``host`` when it is one interface; None (any) when bound to every
    interface without ``--allowed-host``."""
    from persona_axis.serve.guard import LOOPBACK_HOSTS

    if host in ANY_INTERFACE and not given:
        return None
    extra = [] if host in ANY_INTERFACE else [host]
    return sorted({*LOOPBACK_HOSTS, *extra, *given})


def parse_bundles(values: list[str]) -> dict[str, str]:
    """``--bundle`` values as ``{name: directory}``: ``NAME=DIR``, or a plain ``DIR`` served as
    "default" (one at most). The first is the default bundle."""
    from persona_axis.serve.engine import BUNDLE_NAME, DEFAULT_BUNDLE

    bundles: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not BUNDLE_NAME.fullmatch(name) or Path(value).exists():
            name, path = DEFAULT_BUNDLE, value
        if name in bundles:
            raise PersonaAxisError(
                f"Two --bundle options are named {name!r}; give each bundle its own name "
                "(--bundle NAME=DIR)."
            )
        bundles[name] = path
    if not bundles:
        raise PersonaAxisError("Give a bundle to serve: --bundle DIR or --bundle NAME=DIR.")
    return bundles


def check_locally(config: ServerConfig) -> None:
    """What replicas would refuse, checked here before deploying: every bundle loads and has
    the default cap, and the keys are not empty (the model is checked by each replica)."""
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.serve.replicas import access_of

    access_of(config.options)
    for path in config.bundles.values():
        AxisBundle.load(path).resolve_cap(config.options["default_cap"])


def serve(
    bundle: Annotated[
        list[str],
        typer.Option(
            help="AxisBundle directory built for this model, or NAME=DIR; repeat it to serve "
            "several (requests pick one with persona_axis.bundle; the first is the default)."
        ),
    ],
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
    scheduler: Annotated[
        str,
        typer.Option(
            help="'continuous' (the only one): every setting in one batch, requests join and "
            "leave at each step. The static scheduler was removed (docs/benchmarks.md)."
        ),
    ] = "continuous",
    engine: Annotated[
        str,
        typer.Option(
            help="'hf': our Hugging Face engine; 'vllm': the vLLM engine (run from the vLLM "
            "environment, `make install-vllm`)."
        ),
    ] = "hf",
    max_queue: Annotated[
        int, typer.Option(min=1, help="Requests waiting at most; more get 429.")
    ] = 64,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests generated together.")] = 16,
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
    replicas: Annotated[
        int,
        typer.Option(
            min=1, help="Copies of the server behind one endpoint (more than 1: Ray Serve)."
        ),
    ] = 1,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to deploy the replicas on (default: a local one)."),
    ] = None,
    gpus_per_replica: Annotated[
        float, typer.Option(min=0.0, help="GPUs reserved per replica (Ray Serve).")
    ] = 0.0,
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar=ADMIN_KEY_ENV,
            help="Key for the admin routes (load and unload bundles at run time); without it "
            f"they are off (or set ${ADMIN_KEY_ENV}).",
            show_default=False,
        ),
    ] = None,
    bundle_root: Annotated[
        list[Path] | None,
        typer.Option(
            help="Folder the admin routes may load bundles from (repeat for several); none: "
            "admin loads are off."
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Host name clients use to reach the server (repeat for several); loopback "
            "names are always allowed. Default: only the bound address, any when bound to "
            "0.0.0.0."
        ),
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Web origin (https://host[:port]) whose pages may call the API besides the "
            "server's own page (repeat for several)."
        ),
    ] = None,
    dtype: DtypeOption = "auto",
    allow_mismatch: AllowMismatchOption = False,
) -> None:
    """Serve the model over an OpenAI-compatible API with caps, drift telemetry and a chat page."""
    from persona_axis.serve.config import build_app
    from persona_axis.serve.continuous import check_scheduler
    from persona_axis.serve.replicas import deploy
    from persona_axis.serve.runner import is_loopback, serve_forever, wait_forever

    check_scheduler(scheduler)
    if engine not in ("hf", "vllm"):
        raise PersonaAxisError(f"--engine {engine!r}: use 'hf' or 'vllm'.")
    if default_max_tokens > max_tokens:
        raise PersonaAxisError(
            f"--default-max-tokens {default_max_tokens} is above --max-tokens {max_tokens}; "
            "lower it or raise --max-tokens."
        )
    options = {
        "default_cap": cap,
        "api_key": api_key,
        "admin_key": admin_key,
        "bundle_roots": [str(root) for root in bundle_root or ()],
        "allowed_hosts": allowed_hosts(host, allowed_host or []),
        "allowed_origins": list(allowed_origin or ()),
        "scheduler": scheduler,
        "backend": engine,
        "max_queue": max_queue,
        "max_batch": max_batch,
        "max_tokens_limit": max_tokens,
        "default_max_tokens": default_max_tokens,
        "max_input_tokens": max_input_tokens,
        "max_body_bytes": max_body_bytes,
        "model_name": model_name,
    }
    config = ServerConfig(parse_bundles(bundle), model, dtype, allow_mismatch, options)
    if not is_loopback(host) and not api_key:
        errors.print(
            f"[bold yellow]warning:[/] binding {host} without an API key: anyone who can reach "
            f"this port can use the model (set --api-key or ${API_KEY_ENV})."
        )
    shown = "localhost" if is_loopback(host) else host
    if replicas > 1 or ray_address is not None:
        check_locally(config)
        console.print(f"Deploying {replicas} replica(s) on Ray Serve...")
        deploy(
            config,
            replicas,
            host=host,
            port=port,
            ray_address=ray_address,
            gpus_per_replica=gpus_per_replica,
        )
        console.print(
            f"{replicas} replica(s) on http://{shown}:{port}/  (Ctrl-C stops the deployment)"
        )
        wait_forever()
        return
    with console.status("Loading the bundles and the model..."):
        app = build_app(config)
    served = app.state.engine
    console.print(
        f"[bold]{served.lm.name}[/] on http://{shown}:{port}/  "
        f"(bundles: {', '.join(served.bundles)}; default cap: {served.default.cap or 'none'}; "
        f"{scheduler} batching on {engine}; API key {'required' if api_key else 'off'})"
    )
    serve_forever(app, host, port)
