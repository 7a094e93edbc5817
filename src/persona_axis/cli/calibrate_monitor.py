"""``persona-axis calibrate-monitor``: fit the drift monitor's benign profile on benign
multi-turn chats."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from persona_axis.cli.common import (
    AllowMismatchOption,
    BundleOption,
    DtypeOption,
    ModelOption,
    ProgressOption,
    SeedOption,
    console,
    errors,
    load_checked,
)

if TYPE_CHECKING:
    from persona_axis.drift.profile import BenignProfile

RESULT_FILE = "benign_profile.json"
DEFAULT_CONVERSATIONS = 24  # persona_axis.drift.calibrate_monitor.DEFAULT_CONVERSATIONS
DEFAULT_TURNS = 4  # ... DEFAULT_TURNS
DEFAULT_NEW_TOKENS = 128  # ... DEFAULT_NEW_TOKENS


def calibrate_monitor(
    bundle: BundleOption,
    out: Annotated[
        Path, typer.Option(help="Folder for the generated chats and the benign profile.")
    ] = Path("benign-profile"),
    model: ModelOption = None,
    conversations: Annotated[
        int,
        typer.Option(
            min=0, help="Benign conversations the model holds itself (0: none, use --logs only)."
        ),
    ] = DEFAULT_CONVERSATIONS,
    turns: Annotated[
        int, typer.Option(min=1, help="Assistant turns per conversation.")
    ] = DEFAULT_TURNS,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, help="Longest reply, in tokens.")
    ] = DEFAULT_NEW_TOKENS,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 0.7,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling.")] = 0.9,
    logs: Annotated[
        list[Path] | None,
        typer.Option(help="Your own benign conversation logs (any monitor format); repeatable."),
    ] = None,
    layer: Annotated[
        int | None, typer.Option(help="Layer to profile; default: the bundle's target layer.")
    ] = None,
    window: Annotated[
        int | None, typer.Option(min=16, help="Context window (as for monitor).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Generation batch size.")] = 16,
    seed: SeedOption = 0,
    dtype: DtypeOption = "auto",
    allow_mismatch: AllowMismatchOption = False,
    write: Annotated[
        bool, typer.Option(help="Store the benign profile in the bundle (else only report it).")
    ] = True,
    progress: ProgressOption = True,
) -> None:
    """Fit the drift monitor's benign profile (the expected projection per turn, by code share,
    list share, length and turn index, and the spread around it) on benign multi-turn
    conversations, and store it in the bundle with its provenance.

    The conversations are held by the model itself in its default persona across many topics
    (our package data; kill and re-run to continue from the last finished turn) and/or read
    from --logs. `persona-axis monitor` then uses this benign profile.
    """
    from persona_axis.axis.bundle import AxisBundle, bundle_directory
    from persona_axis.drift.calibrate_monitor import make_benign_profile
    from persona_axis.drift.context import ContextPolicy
    from persona_axis.files import write_json
    from persona_axis.inference.generation import Sampling

    axis_bundle = AxisBundle.load(bundle)
    lm = load_checked(axis_bundle, model, dtype, allow_mismatch)
    profile, failures = make_benign_profile(
        lm,
        axis_bundle,
        generated=conversations,
        turns=turns,
        sampling=Sampling(max_new_tokens, temperature, top_p, seed),
        logs=logs or [],
        layer=layer,
        policy=ContextPolicy(window),
        batch_size=batch_size,
        out=out,
        progress=progress,
        announce=lambda seconds: console.print(
            f"holding {conversations} conversations × {turns} turns: about "
            f"{max(1, round(seconds / 60))} minute(s) of generation (estimated from a probe "
            "batch; longer contexts make later turns slower), then reading them"
        ),
    )
    write_json(out / RESULT_FILE, profile.to_dict(), indent=1)
    _print(profile)
    if failures:
        errors.print(f"[bold red]{len(failures)} input(s) could not be used:[/]")
        for failure in failures:
            errors.print(f"  {failure}", soft_wrap=True, markup=False)
    if write:
        axis_bundle.set_benign_profile(profile.to_dict())
        target = axis_bundle.save(bundle_directory(bundle))
        console.print(f"stored the benign profile in {target}")
    console.print(f"wrote {out / RESULT_FILE}")


def _print(profile: BenignProfile) -> None:
    from rich.table import Table

    effects = profile.effects
    console.print(
        f"layer {profile.layer}: expected projection = "
        f"{profile.baseline.intercept:.4g} + "
        + " + ".join(f"{c:.4g}·{n}" for n, c in profile.baseline.coefficients.items())
        + f"; scale {profile.scale:.4g} ({effects['n_turns']} turns in "
        f"{effects['n_conversations']} conversations; between-conversation share of the "
        f"residual variance {effects['between_conversation_share']})",
        soft_wrap=True,
    )
    table = Table(title="benign turns by content, turn and length", title_justify="left")
    for column in ("group", "n", "mean projection", "mean residual (scales)"):
        table.add_column(column, justify="right")
    for name in ("kind", "turn", "tokens"):
        for key, row in effects[name].items():
            table.add_row(
                f"{name} {key}",
                str(row["n"]),
                f"{row['mean_projection']:.4g}",
                f"{row['mean_residual_scales']:+.2f}",
            )
    console.print(table)
