"""What the build says about its axis: persona space at the target layer (and cos(axis, PC1)
at every layer), roles and traits ranked along the axis, and the summary a person reads first.
Projections are on the unit axis, in residual-stream units.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.quality import (
    summary_at,
    warnings_for,
)
from persona_axis.axis.space import axis_pc1_cosine, persona_space
from persona_axis.axis.vectors import (
    cosine_by_layer,
    unit,
)
from persona_axis.pipeline.aggregate import prefixed

SPACE_COMPONENTS = 10  # components kept in the bundle (all explained-variance ratios are kept)


def describe_space(vectors: dict[str, Tensor], axis: Tensor, target: int) -> dict[str, Any]:
    """Persona space at the target layer (role vectors and the role_somewhat vectors of the same
    roles) and cos(axis, PC1) at every layer; ``components``/``mean`` tensors are returned for
    the bundle's vectors."""
    roles = prefixed(vectors, "role/")
    points = {
        **roles,
        **{
            f"{k}@somewhat": v for k, v in prefixed(vectors, "role_somewhat/").items() if k in roles
        },
    }
    space = persona_space(points, target, default=vectors["default"])
    per_layer = [
        axis_pc1_cosine(
            axis, persona_space(points, layer, n_components=1, default=vectors["default"])
        )
        for layer in range(axis.shape[0])
    ]
    keep = min(SPACE_COMPONENTS, space.components.shape[0])
    ratios = space.explained_variance_ratio.tolist()
    return {
        "layer": target,
        "names": list(space.names),
        "loadings": [[round(x, 5) for x in row] for row in space.loadings[:, :keep].tolist()],
        "default_loading": None
        if space.default_loading is None
        else [round(x, 5) for x in space.default_loading[:keep].tolist()],
        "explained_variance_ratio": [round(x, 6) for x in ratios],
        "components_for_70pct": space.components_for(0.7) if sum(ratios) >= 0.7 else None,
        "cos_axis_pc1": round(axis_pc1_cosine(axis, space), 5),
        "cos_axis_pc1_by_layer": [round(c, 5) for c in per_layer],
        "components": space.components[:keep].clone(),
        "mean": space.mean.clone(),
    }


def rankings(vectors: dict[str, Tensor], axis: Tensor, target: int) -> dict[str, Any]:
    """Roles (by projection) and traits (by cosine) along the axis at the target layer."""
    direction = unit(axis[target])
    roles = {n: float(v[target] @ direction) for n, v in prefixed(vectors, "role/").items()}
    traits = {
        n: float(cosine_by_layer(v, axis)[target]) for n, v in prefixed(vectors, "trait/").items()
    }
    default = float(vectors["default"][target] @ direction)
    return {
        "layer": target,
        "default_projection": round(default, 4),
        "roles_by_projection": sorted(
            ((n, round(p, 4)) for n, p in roles.items()), key=lambda x: -x[1]
        ),
        "traits_by_cosine": sorted(
            ((n, round(c, 4)) for n, c in traits.items()), key=lambda x: -x[1]
        ),
    }


def summarize(bundle: AxisBundle) -> dict[str, Any]:
    """Top and bottom roles on the axis, cos(axis, PC1), variance explained, caps."""
    manifest = bundle.manifest
    ranked = manifest["rankings"]["roles_by_projection"]
    traits = manifest["rankings"]["traits_by_cosine"]
    ends = min(5, len(ranked) // 2)  # top and bottom never overlap
    trait_ends = min(3, len(traits) // 2)
    return {
        "model": manifest["model"]["id"],
        "target_layer": bundle.target_layer,
        "roles_kept": manifest["counts"]["roles_kept"],
        "dtype": manifest.get("dtype"),
        "top_roles": ranked[:ends],
        "bottom_roles": ranked[len(ranked) - ends :],
        "default_projection": manifest["rankings"]["default_projection"],
        "cos_axis_pc1": manifest["space"]["cos_axis_pc1"],
        "pc1_variance": manifest["space"]["explained_variance_ratio"][0],
        "traits_top": traits[:trait_ends],
        "traits_bottom": traits[len(traits) - trait_ends :],
        "caps": sorted(bundle.caps),
        "recommended_cap": manifest["recommended_cap"],
        "timings": manifest["timings"],
        "benign_profile": profile_summary(bundle.benign_profile),
        "request_probe": probe_summary(manifest.get("request_probe")),
        **quality_summary(manifest.get("quality"), bundle.target_layer),
    }


def profile_summary(profile: dict[str, Any] | None) -> str | None:
    """One line on the drift monitor's stored benign profile (None: none stored)."""
    if not profile:
        return None
    sources = ", ".join(
        f"{s.get('conversations')} {s.get('kind')}"
        for s in profile.get("provenance", {}).get("sources", [])
    )
    limits = profile.get("limits", {})
    return (
        f"from {sources}: level {profile['baseline']['intercept']:.2f}, scale "
        f"{profile['scale']:.2f} at layer {profile['layer']}; alarm k {limits.get('k')}, "
        f"h {limits.get('h')}"
    )


def probe_summary(probe: dict[str, Any] | None) -> str | None:
    """One line on the drift monitor's stored request probe (None: none stored)."""
    if not isinstance(probe, dict):
        return None
    facts = probe.get("provenance", {})
    return (
        f"from {facts.get('conversations')} labelled conversations ({facts.get('examples')} "
        f"requests) at layer {probe.get('layer')}: cross-validated accuracy "
        f"{facts.get('cv_accuracy')}"
    )


def quality_summary(quality: dict[str, Any] | None, layer: int) -> dict[str, Any]:
    """The quality figures at ``layer`` (estimate, low, high), the layer's reason and the
    warnings, for printing; empty when the bundle has no quality section."""
    if not quality:
        return {}
    if "unavailable" in quality:
        return {"target_reason": quality["target_layer"]["reason"], "warnings": quality["warnings"]}
    return {
        "quality": summary_at(quality, layer),
        "target_reason": quality["target_layer"]["reason"],
        "warnings": warnings_for(quality, layer),
    }
