"""Drift simulation: a simulated user talks with the target model; projections per turn.

For each domain (coding, writing, therapy, philosophy about AI) ``conversations_per_domain``
conversations each take one of our personas and one of its openers
(:mod:`persona_axis.drift.personas`). Turn 1's user message is the opener; later user
messages come from the simulated user (any :class:`~persona_axis.judges.backends.ChatBackend`:
an OpenAI-compatible endpoint or a local HF model, by default the target model itself), who
sees the talk from its side: our persona prompt as system message, the target's replies as
user messages, its own earlier messages as assistant messages.

The target gets no system prompt. Its replies are generated for all live conversations in one
batch per turn, and each reply's projection on the unit axis at the target layer is read in
that generation pass (:func:`~persona_axis.inference.telemetry.generate_with_telemetry`):
``before`` is
the block output ahead of any cap at that layer, ``after`` once capped. With a cap setting,
every conversation is run twice, uncapped and capped, with the same seeds; the aggregate and
the plots use ``before`` (the state of the model at the target layer; ``after`` is floored by
construction when the target layer is capped).

With ``cap="on-drift"`` the second arm caps a reply with the recommended cap only while the
drift gate is armed (:mod:`persona_axis.drift.gate`), decided before each turn from that
conversation's history exactly as the server decides it
(:class:`~persona_axis.drift.live.LiveDrift`).
At the end every conversation is read once more by the one drift rule
(:func:`~persona_axis.drift.profile.drift_rule`, as ``persona-axis monitor`` reads it), so
each turn carries the level ``monitor`` gives it.

Per-turn values are averaged across the conversations of a domain; turn positions reached by
fewer than ``min_conversations`` conversations are dropped (a conversation ends early when the
simulated user sends an empty message).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from persona_axis.drift.personas import (
    DOMAIN_TOPICS,
    DOMAINS,
    PERSONAS,
    USER_PROMPT,
    Persona,
)
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.conversations import Conversation
    from persona_axis.drift.rule import DriftRule
    from persona_axis.inference.generation import Sampling
    from persona_axis.inference.interventions import InterventionSpec
    from persona_axis.judges.backends import ChatBackend
    from persona_axis.models.loading import LoadedModel

RESULT_FORMAT = "persona-axis simulation"
RESULT_VERSION = 1
UNCAPPED = "uncapped"
_SPEAKER_PREFIX = re.compile(r"^[\s*]*(?:user|me|human)[\s*]*:[\s*]*", re.IGNORECASE)


@dataclass(frozen=True)
class SimulationSettings:
    """Sizes and sampling of a simulation.

    ``turns``: user/target exchanges per conversation. Target sampling: ``temperature``,
    ``top_p``, ``max_new_tokens``; turn t of every arm uses seed ``seed + t`` (same seeds with and
    without the cap). The simulated user samples at ``user_temperature``, ``user_max_tokens``.
    """

    domains: tuple[str, ...] = DOMAINS
    conversations_per_domain: int = 2
    turns: int = 3
    max_new_tokens: int = 24
    temperature: float = 0.7
    top_p: float = 0.9
    user_max_tokens: int = 48
    user_temperature: float = 0.8
    seed: int = 0
    min_conversations: int = 2
    batch_size: int = 16

    def __post_init__(self) -> None:
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or not self.domains:
            raise PersonaAxisError(
                f"Unknown domain(s) {unknown or '(none given)'}; choose from {', '.join(DOMAINS)}."
            )
        for name in ("conversations_per_domain", "turns", "max_new_tokens", "user_max_tokens"):
            if getattr(self, name) < 1:
                raise PersonaAxisError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.min_conversations < 1 or self.batch_size < 1:
            raise PersonaAxisError("min_conversations and batch_size must be at least 1.")


@dataclass
class SimTurn:
    """One exchange; projections at the target layer (None for an empty reply)."""

    turn: int
    user: str
    reply: str
    n_tokens: int
    before: float | None
    after: float | None
    touched: float | None
    capped: bool = False
    level: str = "none"


@dataclass
class SimConversation:
    """One simulated conversation of one arm (``uncapped`` or the cap setting's name)."""

    domain: str
    persona: str
    persona_description: str
    opener: str
    arm: str
    turns: list[SimTurn] = field(default_factory=list)
    ended_early: bool = False

    def target_messages(self) -> list[dict[str, str]]:
        """The target's side: user and assistant messages, no system prompt."""
        messages = []
        for turn in self.turns:
            messages.append({"role": "user", "content": turn.user})
            messages.append({"role": "assistant", "content": turn.reply})
        return messages

    def user_view(self) -> list[dict[str, str]]:
        """The simulated user's side: persona prompt, then the roles swapped."""
        system = USER_PROMPT.format(
            persona=self.persona_description,
            domain_topic=DOMAIN_TOPICS[self.domain],
            opener=self.opener,
        )
        messages = [{"role": "system", "content": system}]
        for index, turn in enumerate(self.turns):
            if index > 0:
                messages.append({"role": "assistant", "content": turn.user})
            messages.append({"role": "user", "content": turn.reply or "(no answer)"})
        return messages


def plan_conversations(settings: SimulationSettings) -> list[tuple[str, Persona, str]]:
    """``(domain, persona, opener)`` per conversation: personas shuffled with ``settings.seed``,
    each used once before any repeats; a repeated persona opens with its next opener."""
    plan = []
    rng = random.Random(settings.seed)
    for domain in settings.domains:
        personas = list(PERSONAS[domain])
        rng.shuffle(personas)
        for index in range(settings.conversations_per_domain):
            persona = personas[index % len(personas)]
            opener = persona.openers[(index // len(personas)) % len(persona.openers)]
            plan.append((domain, persona, opener))
    return plan


def clean_user_text(text: str) -> str:
    """The simulated user's message: first paragraph, speaker prefixes and quotes removed."""
    text = text.strip()
    text = _SPEAKER_PREFIX.sub("", text)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    text = paragraphs[0] if paragraphs else ""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


@dataclass
class SimulationResult:
    """Every conversation of every arm, the aggregate per arm, domain and turn, and settings."""

    model: str
    user: str
    layer: int
    settings: SimulationSettings
    cap: str | None
    conversations: list[SimConversation]
    threshold: float | None = None
    reference: float | None = None
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(c.arm for c in self.conversations))

    def aggregate(self) -> dict[str, dict[str, list[dict[str, float]]]]:
        """``{arm: {domain: [{turn, n, mean, std, sem}, ...]}}`` of ``before`` projections;
        turns with fewer than ``min_conversations`` values are dropped."""
        out: dict[str, dict[str, list[dict[str, float]]]] = {}
        for arm in self.arms:
            out[arm] = {}
            for domain in self.settings.domains:
                rows = []
                chosen = [c for c in self.conversations if c.arm == arm and c.domain == domain]
                for turn in range(1, self.settings.turns + 1):
                    values = [
                        t.before
                        for c in chosen
                        for t in c.turns
                        if t.turn == turn and t.before is not None
                    ]
                    if len(values) < self.settings.min_conversations or not values:
                        continue
                    mean = sum(values) / len(values)
                    var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
                    rows.append(
                        {
                            "turn": turn,
                            "n": len(values),
                            "mean": mean,
                            "std": math.sqrt(var),
                            "sem": math.sqrt(var / len(values)),
                        }
                    )
                out[arm][domain] = rows
        return out

    def to_dict(self) -> dict[str, Any]:
        settings = asdict(self.settings)
        settings["domains"] = list(self.settings.domains)
        return {
            "format": RESULT_FORMAT,
            "format_version": RESULT_VERSION,
            "model": self.model,
            "user": self.user,
            "layer": self.layer,
            "cap": self.cap,
            "threshold": self.threshold,
            "reference": self.reference,
            "settings": settings,
            "aggregate": self.aggregate(),
            "conversations": [asdict(c) for c in self.conversations],
            "timing": self.timing,
        }

    def as_conversations(self) -> list[Conversation]:
        """The target's side of every conversation, for :mod:`persona_axis.drift.monitor`."""
        from persona_axis.drift.conversations import Conversation

        return [
            Conversation(
                messages=tuple(c.target_messages()),
                source="simulation",
                position=f"index {i}",
                id=f"{c.arm}/{c.domain}/{i}",
                meta={"domain": c.domain, "persona": c.persona, "arm": c.arm},
            )
            for i, c in enumerate(self.conversations)
            if c.turns
        ]

    def save(self, out: str | Path) -> list[Path]:
        """``simulation.json``, ``conversations.jsonl`` (OpenAI messages) and ``simulation.png``
        in ``out``."""
        from persona_axis.drift.conversations import write_jsonl
        from persona_axis.report.plots import simulation_png

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        results = folder / "simulation.json"
        results.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
        jsonl = write_jsonl(self.as_conversations(), folder / "conversations.jsonl")
        plot = folder / "simulation.png"
        plot.write_bytes(simulation_png(data))
        return [results, jsonl, plot]


def simulate(
    lm: LoadedModel,
    bundle: AxisBundle,
    user: ChatBackend,
    settings: SimulationSettings | None = None,
    *,
    cap: str | None = None,
    progress: bool = False,
) -> SimulationResult:
    """Run the simulation (module doc); with ``cap`` (a setting of ``bundle``, or
    ``"on-drift"``: the recommended cap behind the drift gate) also the capped arm. The user
    backend may wrap the target model itself."""
    from persona_axis.drift.gate import ON_DRIFT
    from persona_axis.drift.profile import drift_rule
    from persona_axis.inference.interventions import InterventionSpec

    settings = settings or SimulationSettings()
    rule = drift_rule(bundle)
    arms: list[tuple[str, InterventionSpec]] = [(UNCAPPED, InterventionSpec())]
    if cap is not None:
        name = bundle.resolve_cap("recommended") if cap == ON_DRIFT else cap
        assert name is not None
        arms.append((cap, InterventionSpec.from_floors(bundle.cap_floors(name))))
    plan = plan_conversations(settings)
    conversations = [
        SimConversation(domain, persona.name, persona.description, opener, arm)
        for arm, _ in arms
        for domain, persona, opener in plan
    ]
    started = time.perf_counter()
    steps = settings.turns * len(arms)
    with tqdm(total=steps, desc="simulate", unit="turn", disable=not progress) as bar:
        for arm, spec in arms:
            chosen = [c for c in conversations if c.arm == arm]
            for turn in range(1, settings.turns + 1):
                _step(
                    lm,
                    bundle,
                    user,
                    settings=settings,
                    spec=spec,
                    conversations=chosen,
                    turn=turn,
                    gate=rule if arm == ON_DRIFT else None,
                )
                bar.update(1)
    for conversation in conversations:
        read_levels(lm, bundle, rule, conversation)
    return SimulationResult(
        model=lm.name,
        user=getattr(user, "name", type(user).__name__),
        layer=bundle.target_layer,
        settings=settings,
        cap=cap,
        conversations=conversations,
        threshold=rule.threshold,
        reference=rule.reference,
        timing={"seconds": round(time.perf_counter() - started, 2)},
    )


def _step(
    lm: LoadedModel,
    bundle: AxisBundle,
    user: ChatBackend,
    *,
    settings: SimulationSettings,
    spec: InterventionSpec,
    conversations: list[SimConversation],
    turn: int,
    gate: DriftRule | None = None,
) -> None:
    """One exchange for every live conversation: user messages, then target replies (with a
    ``gate`` rule, capped under ``spec`` only where the drift gate is armed)."""
    from persona_axis.drift.gate import arming
    from persona_axis.drift.live import LiveDrift
    from persona_axis.inference.generation import Sampling
    from persona_axis.inference.interventions import InterventionSpec

    live = [c for c in conversations if not c.ended_early]
    if turn == 1:
        messages = [c.opener for c in live]
    else:
        raw = user.complete(
            [c.user_view() for c in live],
            max_tokens=settings.user_max_tokens,
            temperature=settings.user_temperature,
        )
        messages = [clean_user_text(text) for text in raw]
    talking = []
    for conversation, message in zip(live, messages, strict=True):
        if message:
            talking.append((conversation, message))
        else:
            conversation.ended_early = True
    sampling = Sampling(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed + turn,
    )
    groups: list[tuple[InterventionSpec, list[tuple[SimConversation, str]]]] = [(spec, talking)]
    if gate is not None:
        armed = [
            arming(LiveDrift.read(lm, bundle, c.target_messages(), rule=gate).verdicts()).armed
            for c, _ in talking
        ]
        groups = [
            (spec, [pair for pair, on in zip(talking, armed, strict=True) if on]),
            (InterventionSpec(), [pair for pair, on in zip(talking, armed, strict=True) if not on]),
        ]
    for group_spec, members in groups:
        _generate(
            lm, bundle, members, group_spec, sampling, batch_size=settings.batch_size, turn=turn
        )


def _generate(
    lm: LoadedModel,
    bundle: AxisBundle,
    talking: list[tuple[SimConversation, str]],
    spec: InterventionSpec,
    sampling: Sampling,
    *,
    batch_size: int,
    turn: int,
) -> None:
    """The target's replies to ``talking`` under ``spec``, appended to the conversations."""
    from persona_axis.inference.telemetry import generate_with_telemetry

    target = bundle.target_layer
    for first in range(0, len(talking), batch_size):
        chunk = talking[first : first + batch_size]
        histories = [
            [*c.target_messages(), {"role": "user", "content": message}] for c, message in chunk
        ]
        results = generate_with_telemetry(
            lm, histories, bundle.axis, [target], spec=spec, sampling=sampling
        )
        for (conversation, message), (reply, telemetry) in zip(chunk, results, strict=True):
            before, after = telemetry.at(target) if telemetry is not None else (None, None)
            conversation.turns.append(
                SimTurn(
                    turn=turn,
                    user=message,
                    reply=reply.text,
                    n_tokens=len(reply.token_ids),
                    before=before,
                    after=after,
                    touched=None if telemetry is None else telemetry.touched,
                    capped=bool(spec.interventions),
                )
            )


def read_levels(
    lm: LoadedModel, bundle: AxisBundle, rule: DriftRule, conversation: SimConversation
) -> None:
    """Set every turn's ``level`` to what the one drift rule makes of the conversation's text
    (the reading of ``persona-axis monitor``)."""
    from persona_axis.drift.live import LiveDrift

    verdicts = LiveDrift.read(lm, bundle, conversation.target_messages(), rule=rule).verdicts()
    if len(verdicts) == len(conversation.turns):
        for turn, verdict in zip(conversation.turns, verdicts, strict=True):
            turn.level = verdict.level
