"""The benign profile every build ships: our reference chats, read by the build's model.

A fresh bundle needs a benign profile before anyone runs ``persona-axis calibrate-monitor``.
The build's own default replies (:mod:`persona_axis.pipeline.monitor_sample`) are single
answers to short questions, sampled by the model itself, and where they sit against the
conversations one monitors moved from build to build by more than the monitor's margin
(docs/monitoring.md, "The out-of-the-box rule on a fresh build"). So the build also reads
our **reference chats** (package data ``drift/data/reference_chats.jsonl``: 24 benign
conversations of 4–8 assistant turns that we wrote, half everyday help, half hard topics such
as grief, loneliness and questions about the assistant's own nature, every reply in the
Assistant's own voice) teacher-forced, exactly as the monitor reads logs, and fits on their
turns:

- the expected projection = their median (content features are not fitted: 24 conversations
  do not pin them down);
- ``scale`` = the robust spread of their turns around it; ``change_scale`` that of the change
  of a turn since its conversation's first turn (stored, not used by this rule);
- alarms on the **shortfall** from that level (``relative`` False), with the limits
  :data:`REFERENCE_LIMITS`, chosen on the dev split of evaldata/monitor over three builds.

Reading costs a forward pass over about 37,000 tokens up to the target layer, no generation
(about 40 s for SmolLM2 on 2 CPU cores); :func:`build` (the
package's ``persona_axis.build`` and ``persona-axis build``) runs it on every build.
``calibrate-monitor`` replaces the profile with one fitted on the user's logs or the model's
own chats.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis.drift.calibrate_monitor import benign_turns, fit_benign_profile
from persona_axis.drift.conversations import Conversation, ReadFailure, read_conversations
from persona_axis.drift.profile import DEFAULT_LIMITS, BenignProfile, stamp
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.calibrate_monitor import BenignTurn
    from persona_axis.drift.context import ContextPolicy
    from persona_axis.models.loading import LoadedModel
    from persona_axis.pipeline.config import BuildConfig
    from persona_axis.pipeline.stages import BuildResult

DATA_FILE = "reference_chats.jsonl"
SOURCE_KIND = "reference chats"
REFERENCE_LIMITS: dict[str, float | None] = {**DEFAULT_LIMITS, "k": 2.5, "h": 2.0}
"""The limits stored with the reference profile, in units of its ``scale``: watch and warning
at the rule's defaults; CUSUM k 2.5, h 2 (a turn 4.5 scales below the reference level, or
two 3.5 below, alarm), chosen on the dev split of evaldata/monitor over three quick builds
(float32, bfloat16, float32 with another seed) as the pair whose false alarms stay at most 5%
on every build with the most detections on the worst one, then the most detections before
the harm turn (docs/monitoring.md, "A reference profile out of the box";
``studies/monitor_reference.py``)."""


def reference_path() -> Any:
    """The reference chats in the installed package (a ``Traversable``)."""
    return resources.files("persona_axis.drift").joinpath("data", DATA_FILE)


def reference_digest() -> str:
    """sha256 of the reference chats file (for provenance)."""
    return hashlib.sha256(reference_path().read_bytes()).hexdigest()


def reference_conversations() -> list[Conversation]:
    """Our reference chats as conversations (module doc)."""
    with resources.as_file(reference_path()) as path:
        conversations, failures = read_conversations(path)
    if failures:  # package data: a failure is our bug, not the user's
        raise PersonaAxisError(f"The packaged reference chats do not parse: {failures[0]}")
    return conversations


def fit_reference_profile(
    turns: Sequence[BenignTurn], layer: int, provenance: dict[str, Any] | None = None
) -> BenignProfile:
    """The shipped benign profile from the reference chats' ``turns`` read at ``layer``:
    their median and spreads, alarms on the shortfall (module doc)."""
    fitted = fit_benign_profile(
        turns, layer, features=(), limits=REFERENCE_LIMITS, provenance=provenance
    )
    return replace(fitted, relative=False)


def reference_profile(
    lm: LoadedModel,
    bundle: AxisBundle,
    *,
    layer: int | None = None,
    policy: ContextPolicy | None = None,
    batch_size: int = 8,
) -> BenignProfile:
    """Read the reference chats with ``lm`` at ``layer`` (default: the bundle's target
    layer) as the monitor reads logs, and fit the shipped benign profile on them."""
    from persona_axis.drift.context import ContextPolicy

    policy = (policy or ContextPolicy()).for_model(lm)
    layer = bundle.target_layer if layer is None else layer
    conversations: list[Conversation | ReadFailure] = list(reference_conversations())
    turns, failures = benign_turns(
        lm, bundle, conversations, layer=layer, policy=policy, batch_size=batch_size
    )
    if failures:
        raise PersonaAxisError(f"Reading the reference chats failed: {failures[0]}")
    source = {
        "kind": SOURCE_KIND,
        "conversations": len(conversations),
        "turns": len(turns),
        "sha256": reference_digest(),
    }
    provenance = stamp([source], model=lm.name, dtype=lm.dtype_name, context=policy.to_dict())
    return fit_reference_profile(turns, layer, provenance)


def store_reference_profile(lm: LoadedModel, bundle: AxisBundle) -> None:
    """Fit the shipped benign profile for ``bundle`` and store it in its manifest."""
    bundle.set_benign_profile(reference_profile(lm, bundle).to_dict())


def store_monitor_defaults(lm: LoadedModel, bundle: AxisBundle) -> None:
    """What every build adds for the drift monitor: the shipped benign profile and the request
    probe (:mod:`persona_axis.drift.request_probe`), both read by the build's model."""
    from persona_axis.drift.request_probe import request_probe

    store_reference_profile(lm, bundle)
    request_probe(lm, bundle).store(bundle)


def build(config: BuildConfig, out: str | Path, **options: Any) -> BuildResult:
    """:func:`persona_axis.pipeline.stages.build` (same arguments), the bundle saved with its
    shipped benign profile and request probe (module doc): the build every entry point runs."""
    from persona_axis.pipeline.stages import build as build_stages

    return build_stages(config, out, finish=store_monitor_defaults, **options)
