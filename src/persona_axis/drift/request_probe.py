"""Whether the user asked for a performed reply, as the model itself reads the request.

A story, a poem or a role-played character the user asked for sits low on the Assistant Axis:
its level says what the content is, not who is speaking, so the drift rule does not judge such
**performed** turns (:mod:`persona_axis.drift.rule`). Phrase patterns
(:func:`persona_axis.drift.features.performed_replies`) catch the requests worded as our data
words them and miss many that users word freely. The model has already read the request in
context: the mean residual over the user message a turn answers, at one layer, is a reading of
the whole conversation up to it ("what happens next?" after a story, "u be the innkeeper").

The **request probe** is a logistic regression on that mean, ``logit = ⟨w, h̄⟩ + b``, fitted
by every build on the build's own model from our labelled request conversations (package data
``drift/data/performance_requests.jsonl``: short conversations we wrote, every assistant turn
labelled performed or the Assistant's own voice; persona jailbreaks and identity pressure are
labelled own voice). A turn whose request reads ``logit > 0`` counts as performed, unless the
user asked the assistant to shed its rules (the phrase rule's guard). Stored in the bundle:
``w`` as the vector ``monitor/request_probe`` (residual-stream units⁻¹, raw activations, no
standardisation left to apply), the layer, ``b`` and provenance in the manifest
(``request_probe``). Reading it costs nothing extra where the monitor reads a conversation:
the request spans are pooled in the same forward pass as the turns.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.context import ContextPolicy
    from persona_axis.models.chat import Message
    from persona_axis.models.loading import LoadedModel

VECTOR_KEY = "monitor/request_probe"
MANIFEST_KEY = "request_probe"
DATA_FILE = "performance_requests.jsonl"
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # inverse L2 strengths tried (standardised)
FOLDS = 5
THRESHOLD = 0.0  # logit above which a request is heard (0: even odds under balanced classes)


@dataclass(frozen=True)
class LabelledChat:
    """One of our request conversations: messages and, per assistant turn, performed or not."""

    id: str
    messages: tuple[Message, ...]
    performed: tuple[bool, ...]


@dataclass(frozen=True)
class RequestProbe:
    """``logit = ⟨weights, h̄⟩ + bias`` on the mean residual ``h̄`` at ``layer`` over a request
    (module doc); a request with ``logit > threshold`` asks for a performed reply."""

    layer: int
    weights: Tensor
    bias: float
    provenance: dict[str, Any] = field(default_factory=dict)
    threshold: float = THRESHOLD

    def logits(self, requests: Tensor) -> list[float | None]:
        """Per row of ``[n, d]`` request means, its logit (None for a NaN row: not read)."""
        values = requests.float() @ self.weights.float() + self.bias
        return [float(value) if math.isfinite(value) else None for value in values.tolist()]

    def hears(self, logit: float | None) -> bool | None:
        """Whether a request with this logit asks for a performed reply (None: not read)."""
        return None if logit is None else logit > self.threshold

    def heard(self, requests: Tensor) -> list[bool | None]:
        """Per row, whether it asks for a performed reply (None: not read)."""
        return [self.hears(logit) for logit in self.logits(requests)]

    @classmethod
    def from_bundle(cls, bundle: AxisBundle) -> RequestProbe | None:
        """The probe stored in ``bundle`` (None when it has none, as bundles built before it)."""
        meta = bundle.manifest.get(MANIFEST_KEY)
        weights = bundle.vectors.get(VECTOR_KEY)
        if not isinstance(meta, dict) or weights is None:
            return None
        if tuple(weights.shape) != (bundle.shape[1],):
            raise PersonaAxisError(
                f"The bundle's request probe has shape {tuple(weights.shape)}, not "
                f"[{bundle.shape[1]}]; it is damaged. Rebuild the bundle."
            )
        return cls(
            int(meta["layer"]),
            weights,
            float(meta["bias"]),
            dict(meta["provenance"]),
            float(meta.get("threshold", THRESHOLD)),
        )

    def store(self, bundle: AxisBundle) -> None:
        """Put the probe into ``bundle`` (its :meth:`~AxisBundle.save` writes it)."""
        bundle.vectors[VECTOR_KEY] = self.weights.detach().float().contiguous().clone()
        bundle.manifest[MANIFEST_KEY] = {
            "layer": self.layer,
            "bias": self.bias,
            "threshold": self.threshold,
            "provenance": self.provenance,
        }


def data_path() -> Any:
    """Our labelled request conversations in the installed package (a ``Traversable``)."""
    return resources.files("persona_axis.drift").joinpath("data", DATA_FILE)


def labelled_chats() -> list[LabelledChat]:
    """Our labelled request conversations (module doc)."""
    chats = []
    for number, line in enumerate(data_path().read_text(encoding="utf-8").splitlines(), 1):
        record = json.loads(line)
        messages = tuple(record["messages"])
        answers = sum(1 for m in messages if m["role"] == "assistant")
        performed = tuple(bool(x) for x in record["performed"])
        if answers != len(performed):  # package data: a mismatch is our bug
            raise PersonaAxisError(f"{DATA_FILE} line {number}: labels do not match the turns.")
        chats.append(LabelledChat(str(record["id"]), messages, performed))
    return chats


def read_requests(
    lm: LoadedModel,
    bundle: AxisBundle,
    conversations: Sequence[Sequence[Message]],
    layer: int,
    *,
    policy: ContextPolicy | None = None,
    batch_size: int = 8,
) -> list[Tensor]:
    """Per conversation ``[n_assistant_turns, d]``: the mean residual at ``layer`` over the
    user message each assistant turn answers (NaN rows where there is none), read as the
    monitor reads logs."""
    from persona_axis.drift.context import ContextPolicy, plan_conversation
    from persona_axis.drift.projections import project_plans

    resolved = (policy or ContextPolicy()).for_model(lm)
    plans = [plan_conversation(lm.chat, messages, resolved) for messages in conversations]
    readings = project_plans(
        lm, bundle.axis, plans, [layer], request_layer=layer, batch_size=batch_size
    )
    out = []
    for reading in readings:
        assert reading.requests is not None  # asked for with request_layer: one per plan
        out.append(reading.requests)
    return out


def fit_request_probe(
    requests: Sequence[Tensor],
    labels: Sequence[Sequence[bool]],
    layer: int,
    provenance: dict[str, Any] | None = None,
) -> RequestProbe:
    """Fit the probe on per-conversation request means ``[n_turns, d]`` and their labels:
    standardised features, L2 logistic regression with balanced classes, its strength chosen
    by grouped cross-validation (conversations never split across folds), then folded back
    into one weight vector on raw activations. The provenance records the folds' accuracy."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows, ys, groups = [], [], []
    for group, (table, marks) in enumerate(zip(requests, labels, strict=True)):
        for row, mark in zip(table, marks, strict=True):
            if bool(torch.isfinite(row).all()):
                rows.append(row.double().numpy())
                ys.append(int(mark))
                groups.append(group)
    x, y = np.stack(rows), np.asarray(ys)
    if len(set(ys)) < 2:
        raise PersonaAxisError("The request probe needs performed and own-voice turns to fit.")
    folds = GroupKFold(n_splits=FOLDS)

    def model(strength: float) -> Any:
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(C=strength, class_weight="balanced", max_iter=5000),
        )

    scores = {
        c: float(cross_val_score(model(c), x, y, groups=groups, cv=folds).mean()) for c in C_GRID
    }
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    fitted = model(best).fit(x, y)
    scaler, regression = fitted[0], fitted[1]
    coef = regression.coef_[0] / scaler.scale_
    bias = float(regression.intercept_[0] - float(coef @ scaler.mean_))
    record = {
        **(provenance or {}),
        "examples": len(ys),
        "performed": int(y.sum()),
        "C": best,
        "cv_accuracy": round(scores[best], 4),
    }
    return RequestProbe(layer, torch.as_tensor(coef, dtype=torch.float32), bias, record)


def request_probe(
    lm: LoadedModel,
    bundle: AxisBundle,
    *,
    layer: int | None = None,
    policy: ContextPolicy | None = None,
    batch_size: int = 8,
) -> RequestProbe:
    """Read our labelled request conversations with ``lm`` at ``layer`` (default: the
    bundle's target layer) and fit the probe on them."""
    layer = bundle.target_layer if layer is None else layer
    chats = labelled_chats()
    # the last reply is never context for a request: read it empty (a fifth fewer tokens)
    read = [(*c.messages[:-1], {"role": "assistant", "content": ""}) for c in chats]
    requests = read_requests(lm, bundle, read, layer, policy=policy, batch_size=batch_size)
    provenance = {
        "data": DATA_FILE,
        "conversations": len(chats),
        "sha256": hashlib.sha256(data_path().read_bytes()).hexdigest(),
        "model": lm.name,
        "dtype": lm.dtype_name,
    }
    return fit_request_probe(requests, [c.performed for c in chats], layer, provenance)
