"""The weight check: refuse to apply a bundle to a model it was not built for.

A different layer count or hidden size always raises (the vectors cannot apply). A different
architecture name or weight fingerprint raises unless the caller allows the mismatch, which
then warns with :class:`BundleMismatchWarning`. A fingerprint is compared only when both sides
know one.
"""

from __future__ import annotations

import warnings

from persona_axis.errors import PersonaAxisError
from persona_axis.models.layers import ModelShape


class BundleMismatchWarning(UserWarning):
    """A bundle is applied to a model it was not built for, because the caller allowed it."""


def check_fits(
    built_for: ModelShape,
    shape: ModelShape,
    *,
    model_id: str | None,
    fingerprint: str | None,
    given_fingerprint: str | None,
    allow_mismatch: bool = False,
) -> None:
    """Refuse (or with ``allow_mismatch`` warn about) a model of ``shape`` and
    ``given_fingerprint`` for a bundle built for ``built_for`` (``model_id``, ``fingerprint``)."""
    ours = _describe(model_id, built_for)
    given = _describe(None, shape, "the model")
    if (built_for.n_layers, built_for.hidden_size) != (shape.n_layers, shape.hidden_size):
        raise PersonaAxisError(
            f"Bundle built for {ours} cannot be applied to {given}: layer count or "
            "hidden size differ, so its vectors do not fit (allow_mismatch does not override "
            "this). Use a bundle built for this model, or build one with the pipeline."
        )
    problems = []
    if built_for.architecture != shape.architecture:
        problems.append(f"architecture {built_for.architecture} vs {shape.architecture}")
    if fingerprint and given_fingerprint and fingerprint != given_fingerprint:
        problems.append(f"weight fingerprint {fingerprint} vs {given_fingerprint}")
    if not problems:
        return
    message = (
        f"Bundle built for {ours} does not match {given}: {'; '.join(problems)}. The "
        "axis of one model is meaningless for different weights."
    )
    if not allow_mismatch:
        raise PersonaAxisError(
            f"{message} Use a bundle built for this model, or pass allow_mismatch=True "
            "(CLI: --allow-mismatch) if you know the weights are equivalent."
        )
    warnings.warn(f"{message} Continuing because allow_mismatch=True.", BundleMismatchWarning, 3)


def _describe(model_id: str | None, shape: ModelShape, fallback: str = "an unnamed model") -> str:
    name = model_id or fallback
    return (
        f"{name} ({shape.architecture}, {shape.n_layers} layers, hidden size {shape.hidden_size})"
    )
