"""``persona-axis simulate``: simulated users talk with the target model; drift per domain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from persona_axis.cli.common import (
    AllowMismatchOption,
    DtypeOption,
    ModelOption,
    ProgressOption,
    console,
    load,
    load_checked,
)
from persona_axis.errors import PersonaAxisError


def simulate(
    bundle: Annotated[Path, typer.Option(help="AxisBundle directory of the target model.")],
    out: Annotated[
        Path,
        typer.Option(help="Folder for simulation.json, conversations.jsonl and simulation.png."),
    ] = Path("simulation-out"),
    model: ModelOption = None,
    domains: Annotated[
        str, typer.Option(help="Comma-separated: coding, writing, therapy, philosophy.")
    ] = "coding,writing,therapy,philosophy",
    conversations: Annotated[int, typer.Option(min=1, help="Conversations per domain.")] = 2,
    turns: Annotated[int, typer.Option(min=1, help="Exchanges per conversation.")] = 3,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Target reply length.")] = 24,
    cap: Annotated[
        str | None,
        typer.Option(
            help="Also run every conversation under this cap setting ('recommended'), or "
            "'on-drift': the recommended cap only while the drift rule has the conversation armed."
        ),
    ] = None,
    user_model: Annotated[
        str | None,
        typer.Option(
            help="Simulated user: HF id or path (local), or the model name at --user-url; "
            "default: the target model plays the user."
        ),
    ] = None,
    user_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible base URL for the simulated user, e.g. .../v1."),
    ] = None,
    user_key_env: Annotated[
        str, typer.Option(help="Env var holding the user endpoint's API key.")
    ] = "OPENAI_API_KEY",
    user_max_tokens: Annotated[int, typer.Option(min=1)] = 48,
    temperature: Annotated[float, typer.Option(min=0.0, help="Target sampling; 0 = greedy.")] = (
        0.7
    ),
    user_temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    min_conversations: Annotated[
        int, typer.Option(min=1, help="Drop turn positions reached by fewer conversations.")
    ] = 2,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    dtype: DtypeOption = "auto",
    allow_mismatch: AllowMismatchOption = False,
    progress: ProgressOption = True,
) -> None:
    """Simulate multi-turn conversations in four domains and track the target's projection.

    The target model gets no system prompt; with --cap each conversation also runs capped
    (same seeds). Offline by default: the target model also plays the user.
    """
    from rich.table import Table

    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.gate import ON_DRIFT
    from persona_axis.drift.simulate import SimulationSettings
    from persona_axis.drift.simulate import simulate as run_simulation

    settings = SimulationSettings(
        domains=tuple(d.strip() for d in domains.split(",") if d.strip()),
        conversations_per_domain=conversations,
        turns=turns,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        user_max_tokens=user_max_tokens,
        user_temperature=user_temperature,
        seed=seed,
        min_conversations=min_conversations,
        batch_size=batch_size,
    )
    axis_bundle = AxisBundle.load(bundle)
    if cap != ON_DRIFT:
        cap = axis_bundle.resolve_cap(cap)  # unknown names fail before any model loads
    else:
        axis_bundle.resolve_cap("recommended")  # the gated cap must exist
    if user_url is not None and not user_model:
        raise PersonaAxisError("--user-url needs --user-model (the model name at that server).")
    lm = load_checked(axis_bundle, model, dtype, allow_mismatch)
    user = simulated_user(lm, user_model, user_url, user_key_env, dtype, batch_size, seed)
    result = run_simulation(lm, axis_bundle, user, settings, cap=cap, progress=progress)
    paths = result.save(out)
    table = Table(title=f"Projection at layer {result.layer} (mean over conversations)")
    table.add_column("arm")
    table.add_column("domain")
    for turn in range(1, settings.turns + 1):
        table.add_column(f"turn {turn}", justify="right")
    for arm, by_domain in result.aggregate().items():
        for domain, rows in by_domain.items():
            means = {row["turn"]: row["mean"] for row in rows}
            cells = [f"{means[t]:.2f}" if t in means else "—" for t in range(1, settings.turns + 1)]
            table.add_row(arm, domain, *cells)
    console.print(table)
    console.print(
        f"{len(result.conversations)} conversations in {result.timing['seconds']:.1f} s; "
        f"user: {result.user}; wrote " + ", ".join(str(p) for p in paths),
        soft_wrap=True,
    )


def simulated_user(
    lm: Any,
    user_model: str | None,
    user_url: str | None,
    key_env: str,
    dtype: str,
    batch_size: int,
    seed: int,
) -> Any:
    """The chat backend playing the user: an endpoint, another local model, or the target."""
    from persona_axis.judges.backends import HFChatBackend, OpenAIChatBackend

    if user_url is not None:
        assert user_model is not None
        return OpenAIChatBackend(user_url, user_model, api_key_env=key_env)
    local = load(user_model, dtype) if user_model is not None else lm
    return HFChatBackend(local, batch_size=batch_size, seed=seed)
