"""The one factory for test bundles, and the serving tests' bundle built with it.

:func:`make_bundle` gives a bundle with a seeded random axis ``[n_layers, d]`` (standard normal,
``torch.Generator().manual_seed(seed)``) for a model or model shape, plus whatever a test asks
for: cap settings (:func:`cap_setting`), a recommended cap, a ``default`` vector, stored mean
residual norms, a fingerprint, a target layer, manifest extras.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from persona_axis.axis.bundle import MEAN_NORM_KEY, AxisBundle
from persona_axis.axis.calibrate import CapSetting, LayerThreshold
from persona_axis.models.layers import ModelShape
from persona_axis.models.loading import LoadedModel

CAP = "layers_1:3-p75"  # serving tests: floors at layers 1-2 (the target layer is 2)
WEAK_CAP = "layers_0:1-p25"
DEFAULT_LEVELS = [-0.6, -0.2, 0.0, 0.2]  # default-reply percentiles 1/25/50/75 at every layer


def cap_setting(
    name: str, floors: Mapping[int, float], percentile: float | None = 75.0, calibrated_on: str = ""
) -> CapSetting:
    """A cap setting with ``floors`` ``{layer: floor}`` along the unit axis."""
    thresholds = tuple(LayerThreshold(layer, floor) for layer, floor in floors.items())
    return CapSetting(name, thresholds, percentile, calibrated_on)


def make_bundle(
    model: LoadedModel | ModelShape,
    *,
    seed: int = 0,
    model_id: str | None = None,
    caps: Sequence[CapSetting] = (),
    recommended: str | None = None,
    default: float | None = None,
    mean_norm: float | Tensor | None = None,
    fingerprint: str | None = None,
    target_layer: int | None = None,
    extras: Mapping[str, Any] | None = None,
) -> AxisBundle:
    """A bundle for ``model`` (its shape; ``model_id`` defaults to its name, or ``"tiny"``).

    ``default`` stores ``default · axis`` as the default vector; ``mean_norm`` stores
    ``stats/mean_norm`` (a number for every layer, or an ``[n_layers]`` tensor).
    """
    shape = model if isinstance(model, ModelShape) else model.shape
    if model_id is None:
        model_id = "tiny" if isinstance(model, ModelShape) else model.name
    axis = torch.randn(
        shape.n_layers, shape.hidden_size, generator=torch.Generator().manual_seed(seed)
    )
    vectors = {"axis": axis}
    if default is not None:
        vectors["default"] = axis * default
    if mean_norm is not None:
        vectors[MEAN_NORM_KEY] = torch.as_tensor(mean_norm, dtype=torch.float32).expand(
            shape.n_layers
        )
    manifest_extras = dict(extras or {})
    if recommended is not None:
        manifest_extras["recommended_cap"] = recommended
    return AxisBundle.create(
        vectors,
        model_shape=shape,
        model_id=model_id,
        fingerprint=fingerprint,
        target_layer=target_layer,
        caps={setting.name: setting for setting in caps},
        extras=manifest_extras,
    )


def serving_bundle(lm: LoadedModel, *, with_percentiles: bool = True) -> AxisBundle:
    """The serving tests' bundle: a strong cap :data:`CAP` at layers 1-2 (recommended) and a
    weak one :data:`WEAK_CAP` at 0; mean norms 1.5; with ``with_percentiles``, the build's
    projection percentiles :data:`DEFAULT_LEVELS` at every layer."""
    extras: dict[str, Any] = {}
    if with_percentiles:
        extras["projection_percentiles"] = {
            "percentiles": [1, 25, 50, 75],
            "per_response_by_kind": {"default": [DEFAULT_LEVELS] * lm.shape.n_layers},
        }
    return make_bundle(
        lm,
        model_id="tiny-llama",
        caps=[
            cap_setting(CAP, {1: 0.5, 2: 0.5}, 75, "test"),
            cap_setting(WEAK_CAP, {0: -5.0}, 25, "test"),
        ],
        recommended=CAP,
        mean_norm=1.5,
        extras=extras,
    )
