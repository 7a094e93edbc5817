"""A multi-turn chat with an optional intervention and per-reply projections on the axis.

Each reply's projection is the mean, over the reply's content tokens, of ``⟨h, â_L⟩`` at the
bundle's target layer L, read in the generation pass itself: ``before`` at the block output
ahead of any intervention at L, ``after`` once the intervention at L has run (equal when L is
not intervened on; upstream interventions affect both). ``touched`` is the fraction of
(token, capped layer) pairs whose projection was below the floor and got raised.
:func:`generate_turns` does the same for a batch of conversations. Both generate through the
generation engine (:mod:`persona_axis.inference.engine`; our HF continuous batch unless an
engine is passed), as the server does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from persona_axis.axis.bundle import AxisBundle
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.engine import GenerationEngine, Reply, Sampling
from persona_axis.inference.generation import generate_replies
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.rows import ReplyTelemetry
from persona_axis.inference.telemetry import generate_with_telemetry
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel


@dataclass(frozen=True)
class Turn:
    """One exchange: the reply, and its target-layer projections (None without a bundle).

    ``before``/``after`` are content-token means of ``⟨h, â_L⟩`` at the target layer L;
    ``touched`` the fraction of (token, capped layer) values the cap raised and
    ``touched_tokens`` how many content tokens had at least one capped layer raised (None
    without a cap). ``cap_layers`` maps each capped layer to its content-token mean projection
    on the cap direction before and after the floor, ``(before, after)``.
    """

    reply: Reply
    before: float | None
    after: float | None
    touched: float | None
    touched_tokens: int | None = None
    cap_layers: dict[int, tuple[float, float]] | None = None

    @classmethod
    def read(cls, reply: Reply, telemetry: ReplyTelemetry | None, target: int) -> Turn:
        """The turn of ``reply`` with ``telemetry`` read at layer ``target`` (None: nothing
        was generated past the prompt, or no bundle)."""
        if telemetry is None:
            return cls(reply, None, None, None)
        before, after = telemetry.at(target)
        return cls(
            reply,
            before,
            after,
            telemetry.touched,
            telemetry.touched_tokens,
            telemetry.cap_layers,
        )


def generate_turns(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    spec: InterventionSpec | None = None,
    sampling: Sampling | None = None,
    bundle: AxisBundle | None = None,
    *,
    engine: GenerationEngine | None = None,
) -> list[Turn]:
    """The next reply of each conversation, generated together under ``spec`` (on ``engine``,
    default a fresh HF continuous batch).

    With a ``bundle``, each reply's projections are read in the generation pass itself (see the
    module docstring); the engine feeds the last content token once more, so every content
    token, also of a reply cut by the length limit, has been read: the means equal a
    teacher-forced monitor pass.
    """
    if not conversations:
        return []
    if bundle is None:
        replies = generate_replies(lm, conversations, sampling, spec=spec, engine=engine)
        return [Turn(reply, None, None, None) for reply in replies]
    target = bundle.target_layer
    results = generate_with_telemetry(
        lm, conversations, bundle.axis, [target], spec=spec, sampling=sampling, engine=engine
    )
    return [Turn.read(reply, telemetry, target) for reply, telemetry in results]


@dataclass
class ChatSession:
    """Keeps the history; :meth:`send` generates the next reply under ``spec`` (on ``engine``,
    default a fresh HF continuous batch per reply)."""

    lm: LoadedModel
    bundle: AxisBundle | None = None
    spec: InterventionSpec = field(default_factory=InterventionSpec)
    sampling: Sampling = field(default_factory=Sampling)
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    engine: GenerationEngine | None = None

    def __post_init__(self) -> None:
        if self.system:
            self.history.append({"role": "system", "content": self.system})

    @classmethod
    def open(
        cls,
        lm: LoadedModel,
        bundle: AxisBundle | None = None,
        *,
        cap: str | None = None,
        steer: float | None = None,
        sampling: Sampling | None = None,
        system: str | None = None,
        allow_mismatch: bool = False,
        engine: GenerationEngine | None = None,
    ) -> ChatSession:
        """A session on ``lm``; with a ``bundle`` (checked against the weights), replies are
        capped with setting ``cap`` and steered by ``steer`` (see
        :meth:`~persona_axis.axis.bundle.AxisBundle.intervention`)."""
        spec = InterventionSpec()
        if bundle is not None:
            spec = bundle.checked_intervention(lm, cap, steer, allow_mismatch=allow_mismatch)
        elif cap not in (None, "none") or steer is not None:
            raise PersonaAxisError("Capping and steering need an AxisBundle.")
        return cls(lm, bundle, spec, sampling or Sampling(), system, engine=engine)

    def send(self, text: str) -> Turn:
        if not text.strip():
            raise PersonaAxisError("Empty message; type something to send.")
        conversation = [*self.history, {"role": "user", "content": text}]
        turn = generate_turns(
            self.lm, [conversation], self.spec, self.sampling, self.bundle, engine=self.engine
        )[0]
        self.history = [*conversation, {"role": "assistant", "content": turn.reply.text}]
        return turn
