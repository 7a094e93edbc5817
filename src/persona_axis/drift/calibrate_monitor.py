"""Fit the drift monitor's benign profile on benign multi-turn conversations
(``persona-axis calibrate-monitor``).

The build's reference levels come from the model's short single-question replies; long,
code-heavy or list-heavy Assistant answers project at other levels and read as drift. So the
monitor is fitted on whole benign conversations instead: ones the model holds itself in its
default persona across many topics (:mod:`persona_axis.drift.benign_chats`) and/or the
user's own logs. Every assistant turn is read exactly as the monitor reads it (same layer,
context policy and pooling), then

1. a :class:`~persona_axis.drift.features.Baseline` is fitted: the projection as a linear
   function of the turn's code share, list share, log length and log turn index (Huber
   regression, so a few odd turns do not pull it);
2. ``scale`` is the robust spread of the turns around it (1.4826 × the median absolute
   deviation of the residuals), ``change_scale`` that of the change of the residual since
   the conversation's first turn (what the alarm watches; it needs no absolute level, so it
   holds for text of other assistants too);
3. the alert limits (:data:`~persona_axis.drift.profile.CHANGE_LIMITS`, in multiples of
   ``scale``) are stored beside them.

The result (:class:`~persona_axis.drift.profile.BenignProfile`) goes into the bundle
with its provenance; :func:`~persona_axis.drift.profile.drift_rule` then prefers it.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis.drift.benign_chats import GENERATED
from persona_axis.drift.conversations import Conversation, ReadFailure
from persona_axis.drift.features import FEATURES, Baseline, TurnFeatures
from persona_axis.drift.monitor import Monitor
from persona_axis.drift.profile import CHANGE_LIMITS, BenignProfile, robust_spread
from persona_axis.drift.rule import DriftRule
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.context import ContextPolicy
    from persona_axis.inference.generation import Sampling
    from persona_axis.models.loading import LoadedModel

CHATS_FILE = "benign_chats.jsonl"
CHECKPOINT_FILE = "benign_chats.partial.json"
MIN_TURNS = 12
# Default size of the model's own benign chats: sized to finish within 10 minutes on 2 CPU
# cores with SmolLM2 (docs/monitoring.md, "A benign profile from the default replies
# (before)"): 24 conversations (one opener of each domain, then the next) of 4 turns of at
# most 128 new tokens.
DEFAULT_CONVERSATIONS = 24
DEFAULT_TURNS = 4
DEFAULT_NEW_TOKENS = 128


@dataclass(frozen=True)
class BenignTurn:
    """One benign assistant turn: its projection at the profiled layer, its features and
    the conversation it belongs to."""

    projection: float
    features: TurnFeatures
    conversation: str
    source: str = ""


def benign_turns(
    lm: LoadedModel,
    bundle: AxisBundle,
    conversations: Iterable[Conversation | ReadFailure],
    *,
    layer: int | None = None,
    policy: ContextPolicy | None = None,
    batch_size: int = 8,
) -> tuple[list[BenignTurn], list[ReadFailure]]:
    """Every assistant turn with content of ``conversations``, read as the monitor reads it
    (same layer, context policy and pooling), and the inputs that could not be read."""
    layer = bundle.target_layer if layer is None else layer
    runner = Monitor.create(
        lm,
        bundle,
        extra_layers=[],
        rule=DriftRule(layer, None, None),
        policy=policy,
        batch_size=batch_size,
    )
    turns, failures = [], []
    for item in runner.run(conversations):
        if isinstance(item, ReadFailure):
            failures.append(item)
            continue
        key, source = item.conversation.label, item.conversation.source
        for turn in item.turns:
            if turn.projection is not None and turn.features is not None:
                turns.append(BenignTurn(turn.projection, turn.features, key, source))
    return turns, failures


def fit_benign_profile(
    turns: Sequence[BenignTurn],
    layer: int,
    *,
    features: Sequence[str] = FEATURES,
    limits: Mapping[str, float | None] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> BenignProfile:
    """Fit the baseline and the spreads on benign ``turns`` (module doc).

    When the turns mix the model's own conversations and the user's logs, the two get their
    own level (an indicator in the regression) and share the content effects; the baseline
    keeps the logs' level, and the spreads come from the logs' turns (when there are at least
    :data:`MIN_TURNS`), since the logs are what will be monitored.
    """
    import numpy as np
    from sklearn.linear_model import HuberRegressor

    if len(turns) < MIN_TURNS:
        raise PersonaAxisError(
            f"Fitting the benign profile needs at least {MIN_TURNS} benign assistant turns with "
            f"content, not {len(turns)}; give more conversations or longer logs."
        )
    names = list(features)
    x = np.array([[t.features.values()[n] for n in names] for t in turns], dtype=np.float64)
    y = np.array([t.projection for t in turns], dtype=np.float64)
    logs = np.array([t.source != GENERATED for t in turns])
    varying = [i for i in range(len(names)) if np.ptp(x[:, i]) > 0]
    mixed = bool(logs.any() and not logs.all())
    design = np.column_stack([x[:, varying], logs.astype(np.float64)]) if mixed else x[:, varying]
    if design.shape[1]:
        model = HuberRegressor(epsilon=1.35, alpha=1e-4, max_iter=1000).fit(design, y)
        coefficients = {names[i]: float(c) for i, c in zip(varying, model.coef_, strict=False)}
        level = float(model.intercept_) + (float(model.coef_[-1]) if mixed else 0.0)
        baseline = Baseline(level, coefficients)
    else:
        baseline = Baseline(float(np.median(y)), {})
    expected = np.array([baseline.expected(t.features) for t in turns])
    residuals = y - expected
    if mixed:  # the generated turns sit at their own level: compare them with it
        residuals[~logs] -= float(np.median(residuals[~logs]))
    chosen = logs if logs.sum() >= MIN_TURNS else np.ones(len(turns), dtype=bool)
    picked = [t for t, keep in zip(turns, chosen, strict=True) if keep]
    changes = _changes(picked, residuals[chosen].tolist())
    scale, change_scale = robust_spread(residuals[chosen]), robust_spread(np.array(changes))
    if not (scale > 0 and change_scale > 0):
        raise PersonaAxisError(
            "The benign turns' projections do not vary around the baseline or within their "
            "conversations, so no spread can be fitted; give more varied conversations "
            "(at least some with two or more assistant turns)."
        )
    return BenignProfile(
        layer,
        baseline,
        scale,
        change_scale,
        dict(limits or CHANGE_LIMITS),
        dict(provenance or {}),
        effects(turns, residuals.tolist(), expected.tolist(), scale),
    )


def _changes(turns: Sequence[BenignTurn], residuals: Sequence[float]) -> list[float]:
    """Per later turn of each conversation, its residual's fall since the first turn's."""
    anchors: dict[str, float] = {}
    out = []
    for turn, residual in zip(turns, residuals, strict=True):
        if turn.conversation not in anchors:
            anchors[turn.conversation] = residual
        else:
            out.append(anchors[turn.conversation] - residual)
    return out


def effects(
    turns: Sequence[BenignTurn],
    residuals: Sequence[float],
    expected: Sequence[float],
    scale: float,
) -> dict[str, Any]:
    """How benign projections moved: mean projection and mean residual (in scales) per content
    kind, turn index and length bin, and the share of residual variance between conversations
    (near 0: turns vary independently; near 1: whole conversations sit high or low)."""
    groups: dict[str, dict[str, list[int]]] = {"kind": {}, "turn": {}, "tokens": {}}
    for index, turn in enumerate(turns):
        f = turn.features
        length = "<64" if f.n_tokens < 64 else "64-255" if f.n_tokens < 256 else ">=256"
        for name, key in (("kind", f.kind), ("turn", str(min(f.turn, 8))), ("tokens", length)):
            groups[name].setdefault(key, []).append(index)
    table = {
        name: {
            key: {
                "n": len(rows),
                "mean_projection": round(statistics.fmean(turns[i].projection for i in rows), 4),
                "mean_residual_scales": round(
                    statistics.fmean(residuals[i] for i in rows) / scale, 3
                ),
            }
            for key, rows in sorted(members.items())
        }
        for name, members in groups.items()
    }
    by_conversation: dict[str, list[float]] = defaultdict(list)
    for turn, residual in zip(turns, residuals, strict=True):
        by_conversation[turn.conversation].append(residual)
    means = [statistics.fmean(v) for v in by_conversation.values() if len(v) > 1]
    total = statistics.pvariance(residuals) if len(residuals) > 1 else 0.0
    between = statistics.pvariance(means) if len(means) > 1 else 0.0
    return {
        "n_turns": len(turns),
        "n_conversations": len(by_conversation),
        "median_expected": round(statistics.median(expected), 5),
        "between_conversation_share": round(between / total, 3) if total > 0 else None,
        **table,
    }


def make_benign_profile(
    lm: LoadedModel,
    bundle: AxisBundle,
    *,
    generated: int = DEFAULT_CONVERSATIONS,
    turns: int = DEFAULT_TURNS,
    sampling: Sampling | None = None,
    logs: Sequence[str | Path] = (),
    layer: int | None = None,
    policy: ContextPolicy | None = None,
    batch_size: int = 16,
    out: Path | None = None,
    progress: bool = False,
    announce: Callable[[float], None] | None = None,
) -> tuple[BenignProfile, list[ReadFailure]]:
    """The whole job (module doc): let ``lm`` hold ``generated`` benign conversations of
    ``turns`` turns (written to ``out/benign_chats.jsonl``, checkpointed per turn), add
    the ``logs``, read every turn as the monitor does, fit. Returns the benign profile (with its
    provenance) and the inputs that could not be used. ``announce`` gets the estimated seconds
    of the generation before it starts
    (:func:`~persona_axis.drift.benign_chats.estimate_seconds`)."""
    from persona_axis.drift.benign_chats import (
        chat_data_digest,
        estimate_seconds,
        hold_chats,
        plan_scripts,
    )
    from persona_axis.drift.context import ContextPolicy
    from persona_axis.drift.conversations import iter_conversations, write_jsonl
    from persona_axis.drift.profile import stamp
    from persona_axis.inference.generation import Sampling

    if generated == 0 and not logs:
        raise PersonaAxisError(
            "Nothing to fit the benign profile on: give --conversations N and/or --logs."
        )
    sampling = sampling or Sampling(max_new_tokens=DEFAULT_NEW_TOKENS, temperature=0.7, top_p=0.9)
    policy = (policy or ContextPolicy()).for_model(lm)
    layer = bundle.target_layer if layer is None else layer
    sources: list[dict[str, Any]] = []
    inputs: list[Iterable[Conversation | ReadFailure]] = []
    if generated:
        checkpoint = None if out is None else out / CHECKPOINT_FILE
        scripts = plan_scripts(generated, turns, sampling.seed)
        if announce is not None:
            announce(estimate_seconds(lm, scripts, sampling, batch_size=batch_size))
        chats = hold_chats(
            lm,
            scripts,
            sampling,
            batch_size=batch_size,
            checkpoint=checkpoint,
            progress=progress,
        )
        if out is not None:
            write_jsonl(chats, out / CHATS_FILE)
        inputs.append(chats)
        sources.append(
            {
                "kind": "generated",
                "conversations": len(chats),
                "turns": turns,
                "sampling": asdict(sampling),
                "system_prompt": None,
                "chat_data_sha256": chat_data_digest(),
            }
        )
    for log in logs:
        inputs.append(iter_conversations(log))
        sources.append({"kind": "logs", "file": str(log)})
    found, failures = benign_turns(lm, bundle, itertools.chain(*inputs), layer=layer, policy=policy)
    for source in sources:
        if source["kind"] == "logs":
            keys = {t.conversation for t in found if t.source == source["file"]}
            source["conversations"] = len(keys)
    provenance = stamp(sources, model=lm.name, dtype=lm.dtype_name, context=policy.to_dict())
    return fit_benign_profile(found, layer, provenance=provenance), failures
