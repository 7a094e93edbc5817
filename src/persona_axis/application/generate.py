"""Generation with a bundle: capped (or steered) replies with their telemetry, in one call.

:func:`generate` is the two-line API, ``pa.generate(lm, bundle, chats)`` (model, bundle, data,
as ``pa.monitor``): the bundle is checked against the model's weights (as
:meth:`~persona_axis.axis.bundle.AxisBundle.capping` does), its cap setting (``"recommended"``
by default) and steering become one intervention, and each reply comes back as a
:class:`~persona_axis.application.session.Turn` with its projections at the bundle's target
layer, read in the generation pass itself (residual-stream units, unit axis).
:func:`generate_with_telemetry` is the lower-level call that also accepts a bundle as the axis.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from persona_axis.application.session import Turn, generate_turns
from persona_axis.axis.bundle import RECOMMENDED, AxisBundle
from persona_axis.errors import PersonaAxisError
from persona_axis.inference import telemetry
from persona_axis.inference.engine import GenerationEngine, Reply, Sampling
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.rows import ReplyTelemetry
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel


def generate(
    lm: LoadedModel,
    bundle: AxisBundle,
    chats: Sequence[Sequence[Message]],
    *,
    cap: str | None = RECOMMENDED,
    steer: float | None = None,
    sampling: Sampling | None = None,
    allow_mismatch: bool = False,
    engine: GenerationEngine | None = None,
) -> list[Turn]:
    """The next reply of each chat, generated in one batch under ``bundle``'s cap ``cap``
    (``"recommended"``, a stored setting name, or None/``"none"``) and steering ``steer``
    (multiples of the mean residual norm at the target layer; + toward the Assistant).

    Raises :class:`PersonaAxisError` when the bundle was not built for ``lm``'s weights, unless
    ``allow_mismatch`` (then it warns). Each turn carries the reply and its target-layer
    projections before and after the intervention, and how much the cap raised. ``engine``:
    the generation engine to run on (default a fresh HF continuous batch; e.g. a
    :class:`~persona_axis.inference.vllm.engine.VllmBatch`).
    """
    spec = bundle.checked_intervention(lm, cap, steer, allow_mismatch=allow_mismatch)
    return generate_turns(lm, chats, spec, sampling, bundle, engine=engine)


def generate_with_telemetry(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    axis: Tensor | AxisBundle,
    layers: Sequence[int] | None = None,
    *,
    spec: InterventionSpec | None = None,
    sampling: Sampling | None = None,
    engine: GenerationEngine | None = None,
) -> list[tuple[Reply, ReplyTelemetry | None]]:
    """:func:`persona_axis.inference.telemetry.generate_with_telemetry`, where ``axis`` may also
    be an :class:`AxisBundle` (its axis is read, and ``layers`` defaults to its target layer).

    The bundle is not weight-checked and ``spec`` is applied as given; :func:`generate` does both.
    """
    if isinstance(axis, AxisBundle):
        layers = [axis.target_layer] if layers is None else layers
        axis = axis.axis
    if layers is None:
        raise PersonaAxisError("Give the layers to read (or pass an AxisBundle as the axis).")
    return telemetry.generate_with_telemetry(
        lm, conversations, axis, layers, spec=spec, sampling=sampling, engine=engine
    )
