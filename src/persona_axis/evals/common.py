"""Shared pieces of the evaluations: rate summaries, conditions, batched generation, output.

A *condition* is a name plus an :class:`~persona_axis.inference.interventions.InterventionSpec`:
``"none"`` (no intervention), a cap setting of the bundle (``layers_A:B-pP``, floors along
+axis at every position) or ``"steer:M"`` (adds ``M × mean residual norm`` along the unit axis
at the target layer; positive = toward the Assistant).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis.errors import PersonaAxisError
from persona_axis.intervals import wilson_interval

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.inference.generation import Sampling
    from persona_axis.inference.interventions import InterventionSpec
    from persona_axis.models.chat import Message
    from persona_axis.models.loading import LoadedModel

SMALL_MODEL_NOTE = (
    "Small-size run: a 135M model (the embedded SmolLM2) scores low on capability and its "
    "absolute rates are noisy and say little about large chat models; the offline heuristic "
    "judge is a rough stand-in. Compare conditions, and use a GPU model with a real judge "
    "endpoint for paper-size figures."
)
HEURISTIC_NOTE = "OFFLINE HEURISTIC JUDGE (keyword rules), not an LLM judge and not the paper's."


def rate_summary(successes: int, total: int) -> dict[str, Any]:
    """``{"k", "n", "rate", "ci95"}`` for a binomial count; rate None when ``total`` is 0."""
    low, high = wilson_interval(successes, total)
    return {
        "k": successes,
        "n": total,
        "rate": successes / total if total else None,
        "ci95": [low, high],
    }


@dataclass(frozen=True)
class Condition:
    """A named intervention; ``spec`` None means none."""

    name: str
    spec: InterventionSpec | None = None


def cap_condition(bundle: AxisBundle, cap: str) -> Condition:
    """The condition capping with setting ``cap`` (or ``"recommended"``) of ``bundle``; named
    after the setting it resolves to."""
    name = bundle.resolve_cap(cap)
    if name is None:
        return Condition("none")
    return Condition(name, bundle.intervention(name))


def cap_conditions(bundle: AxisBundle, caps: Sequence[str] | None) -> list[Condition]:
    """``none`` first, then each of ``caps`` (default: ``["recommended"]``; ``"none"`` entries
    are skipped) as :func:`cap_condition`."""
    conditions = [Condition("none")]
    for cap in caps or ["recommended"]:
        if cap != "none":
            conditions.append(cap_condition(bundle, cap))
    return conditions


def result_meta(
    lm: LoadedModel, bundle_path: str | Path, model: str | None, **settings: Any
) -> dict[str, Any]:
    """What every result file records besides its figures: the model's name, the bundle, the
    run's ``settings``, and :data:`SMALL_MODEL_NOTE` when no model was named (``model`` None:
    the bundle's own was used)."""
    info: dict[str, Any] = {"model": lm.name, "bundle": str(bundle_path), "settings": settings}
    if model is None:
        info["note"] = SMALL_MODEL_NOTE
    return info


def steer_condition(lm: LoadedModel, bundle: AxisBundle, multiple: float) -> Condition:
    """Steering by ``multiple × mean residual norm`` along the unit axis at the target layer."""
    return Condition(f"steer:{multiple:+g}", bundle.intervention(steer=multiple, lm=lm))


def generate_texts(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    condition: Condition,
    sampling: Sampling,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> list[str]:
    """Reply texts for ``conversations`` under ``condition``, ``batch_size`` at a time.

    Batch ``i`` is seeded with ``sampling.seed + i``, so results are reproducible.
    """
    from dataclasses import replace

    from persona_axis.inference.generation import generate_replies

    if batch_size < 1:
        raise PersonaAxisError(f"batch_size must be at least 1, not {batch_size}.")
    starts = list(range(0, len(conversations), batch_size))
    texts: list[str] = []
    iterator: Any = enumerate(starts)
    if progress:
        from rich.progress import track

        iterator = track(iterator, total=len(starts), description=f"generate [{condition.name}]")
    for index, start in iterator:
        batch = conversations[start : start + batch_size]
        seeded = replace(sampling, seed=sampling.seed + index)
        replies = generate_replies(lm, batch, seeded, spec=condition.spec)
        texts.extend(reply.text for reply in replies)
    return texts
