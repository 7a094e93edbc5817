"""``compute_axis``: the Assistant Axis of a few roles and questions, in memory, for a quick
experiment (no disk, no judge, no resumption; :func:`persona_axis.build` is the full job).

The model answers every question under each role's system prompt(s) and under the default
prompts; each reply's response activation (content-token mean, every layer, float32) is pooled
in the generation pass. Role vectors are the mean over a role's replies (every reply counts:
no judge), the default vector the mean over the default replies, and the axis
``default − mean over roles`` (:mod:`persona_axis.axis.vectors`). Cap settings are calibrated
on the per-response projections of all replies (:func:`~persona_axis.axis.calibrate.
calibrate_grid`). The result is an unsaved :class:`~persona_axis.axis.bundle.AxisBundle`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from persona_axis.axis.bundle import MEAN_NORM_KEY, AxisBundle
from persona_axis.axis.calibrate import calibrate_grid, default_recommendation
from persona_axis.axis.vectors import assistant_axis, mean_vector, project
from persona_axis.catalog import Catalog, Role, builtin_default_prompts
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Sampling, generate_replies
from persona_axis.models.fingerprint import try_weight_fingerprint
from persona_axis.models.loading import LoadedModel
from persona_axis.pipeline.config import default_cap_layer_ranges
from persona_axis.pipeline.plan import make_batches, make_plan

CAP_PERCENTILES = (25.0, 50.0, 75.0, 99.0)


def compute_axis(
    lm: LoadedModel,
    roles: Mapping[str, str | Sequence[str]],
    questions: Sequence[str],
    *,
    default_prompts: Sequence[str | None] | None = None,
    model_name: str | None = None,
    sampling: Sampling | None = None,
    batch_size: int = 16,
) -> AxisBundle:
    """The axis of ``lm`` from ``roles`` (name -> system prompt or prompts; names are
    snake_case) answering ``questions``, in memory (module docstring).

    ``default_prompts`` defaults to the catalog's five (``{model_name}`` filled with
    ``model_name``, default: the model's short name); ``sampling`` to temperature 0.7, top-p
    0.9 and 64 new tokens; batch ``k`` samples with seed ``sampling.seed + k``.
    """
    if len(roles) < 2:
        raise PersonaAxisError("compute_axis needs at least two roles to average over.")
    name = model_name or lm.name.rstrip("/").rsplit("/", 1)[-1]
    catalog = Catalog(
        roles=tuple(
            Role(role, "custom", role, (prompts,) if isinstance(prompts, str) else tuple(prompts))
            for role, prompts in roles.items()
        ),
        questions=tuple(questions),
        default_prompts=tuple(
            builtin_default_prompts() if default_prompts is None else default_prompts
        ),
        source="compute_axis",
    )
    sampling = sampling or Sampling(max_new_tokens=64, temperature=0.7, top_p=0.9)
    layers = list(range(lm.shape.n_layers))
    by_group: dict[tuple[str, str], list[Tensor]] = {}
    norms: list[Tensor] = []
    for k, batch in enumerate(make_batches(make_plan(catalog, name, None), batch_size)):
        seeded = replace(sampling, seed=sampling.seed + k)
        replies = generate_replies(lm, [s.messages() for s in batch], seeded, pool_layers=layers)
        for spec, reply in zip(batch, replies, strict=True):
            if reply.activations is None or reply.norms is None:
                continue  # an empty reply has no content tokens to average
            by_group.setdefault((spec.kind, spec.name), []).append(reply.activations)
            if spec.kind == "default":
                norms.append(reply.norms)
    default = by_group.get(("default", "default"))
    role_acts = {n: acts for (kind, n), acts in by_group.items() if kind == "role"}
    if not default or len(role_acts) < 2:
        raise PersonaAxisError(
            "Too few non-empty replies to build an axis (need default replies and two roles); "
            "raise max_new_tokens or add questions."
        )
    vectors = {"default": mean_vector(default)}
    vectors |= {f"role/{n}": mean_vector(acts) for n, acts in sorted(role_acts.items())}
    axis = assistant_axis(vectors["default"], {n: vectors[f"role/{n}"] for n in role_acts})
    everything = torch.stack([a for acts in by_group.values() for a in acts])
    caps = calibrate_grid(
        project(everything, axis),
        default_cap_layer_ranges(lm.shape.n_layers),
        CAP_PERCENTILES,
        f"per-response projections of all {everything.shape[0]} replies (compute_axis)",
    )
    return AxisBundle.create(
        {"axis": axis, **vectors, MEAN_NORM_KEY: torch.stack(norms).mean(dim=0)},
        model_shape=lm.shape,
        model_id=lm.name,
        fingerprint=try_weight_fingerprint(lm.model),
        caps=caps,
        extras={
            "model_name": name,
            "source": "persona_axis.compute_axis (in memory, no judge)",
            "roles": sorted(role_acts),
            "n_questions": len(questions),
            "counts": {f"{kind}/{n}": len(acts) for (kind, n), acts in sorted(by_group.items())},
            "sampling": {
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_new_tokens": sampling.max_new_tokens,
                "seed": sampling.seed,
                "batch_size": batch_size,
            },
            "recommended_cap": default_recommendation(list(caps.values()), lm.shape.n_layers),
        },
    )
