"""What every command shares: the consoles, the one model rule, shared options, judge flags.

Heavy imports (torch, transformers) happen inside functions so ``persona-axis --help`` stays
fast. User errors (:class:`PersonaAxisError`) print as one line without a traceback (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.judges.harm import HarmJudge
    from persona_axis.models.loading import LoadedModel

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="HF model id or local path; default: the bundle's model when a bundle is given, "
        "else the embedded SmolLM2.",
    ),
]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]
BundleOption = Annotated[Path, typer.Option(help="AxisBundle directory (or a build directory).")]
AllowMismatchOption = Annotated[
    bool, typer.Option(help="Use a bundle built for different weights (warns).")
]
ProgressOption = Annotated[bool, typer.Option(help="Show progress bars.")]
BatchOption = Annotated[int, typer.Option(min=1, help="Generation batch size.")]
SeedOption = Annotated[int, typer.Option(help="Seed for sampling prompts and decoding.")]
OutOption = Annotated[Path, typer.Option(help="Folder for the JSON results and plots.")]

# The judge flags, defined once for build, eval and sweep.
JudgeUrlOption = Annotated[
    str | None, typer.Option(help="Judge: OpenAI-compatible base URL, e.g. http://host:8000/v1.")
]
JudgeModelOption = Annotated[
    str | None, typer.Option(help="Judge model name at --judge-url, or an HF id/path for hf.")
]
JudgeKeyEnvOption = Annotated[str, typer.Option(help="Env var holding the judge API key.")]
JudgeConcurrencyOption = Annotated[int, typer.Option(min=1, help="Judge requests in flight.")]
JudgeOption = Annotated[str, typer.Option(help="heuristic (OFFLINE, rough), openai or hf.")]


def load(model: str | None, dtype: str = "auto") -> LoadedModel:
    """Load ``model`` (None: the embedded default) quietly, with a spinner."""
    import transformers

    from persona_axis.models import load_model

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    with console.status(f"Loading {model or 'the default model'}..."):
        return load_model(model, dtype=dtype)


def model_for(bundle: AxisBundle | None, model: str | None) -> str | None:
    """The model to load for ``bundle``: :func:`~persona_axis.models.loading.model_for_bundle`."""
    from persona_axis.models.loading import model_for_bundle

    return model_for_bundle(model, None if bundle is None else bundle.model_id)


def load_checked(
    bundle: AxisBundle, model: str | None, dtype: str, allow_mismatch: bool
) -> LoadedModel:
    """Load the model for ``bundle`` (the one ``--model`` rule) and check that the bundle fits
    its weights."""
    lm = load(model_for(bundle, model), dtype)
    bundle.check_against(lm.model, allow_mismatch=allow_mismatch)
    return lm


def load_for_bundle(
    path: Path, model: str | None, dtype: str, allow_mismatch: bool
) -> tuple[AxisBundle, LoadedModel]:
    """Load the bundle at ``path`` (a bundle or build directory), then its checked model."""
    from persona_axis.axis.bundle import AxisBundle

    bundle = AxisBundle.load(path)
    return bundle, load_checked(bundle, model, dtype, allow_mismatch)


def judge_config(
    backend: str | None,
    url: str | None = None,
    model: str | None = None,
    key_env: str = "OPENAI_API_KEY",
    concurrency: int = 8,
) -> dict[str, Any] | None:
    """The judge settings from the judge flags (None: ``--judge`` not given)."""
    from persona_axis.judges import settings_from_flags

    return settings_from_flags(backend, url, model, key_env, concurrency)


def harm_judge_for(
    judge: str, url: str | None, model: str | None, key_env: str, concurrency: int
) -> HarmJudge:
    """The harm judge the judge flags ask for (see :mod:`persona_axis.judges.factory`)."""
    from persona_axis.judges import harm_judge

    return harm_judge(judge_config(judge, url, model, key_env, concurrency) or {})


def fail(exc: PersonaAxisError) -> NoReturn:
    """Print a user error as one line on stderr and exit with status 2."""
    errors.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)  # "[x]" is text
    raise SystemExit(2) from None


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``"12:16"`` (half-open range), ``"12,14,15"`` or ``""`` (none) → layer list, checked
    against the model."""
    if not text.strip():
        return []
    try:
        if ":" in text:
            first, stop = (int(part) for part in text.split(":"))
            layers = list(range(first, stop))
        else:
            layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise PersonaAxisError(
            f"Layers {text!r} must be a range like 12:16 (layers 12-15) or a list like 12,14."
        ) from exc
    if not layers or not all(0 <= layer < n_layers for layer in layers):
        raise PersonaAxisError(
            f"Layers {text!r} must be non-empty and within 0..{n_layers - 1} for this bundle."
        )
    return sorted(set(layers))


# -- running ------------------------------------------------------------------------------------
