"""The context policy for long conversations: which tokens each assistant turn is read with.

Past the positions a model was trained on its activations mean nothing, and one pass over a
long conversation costs time and memory that grow with the square of its length. So every
assistant turn is read with at most ``window`` tokens: the turn itself and the context before
it. A conversation is cut into **windows**, each a rendering of consecutive messages that the
model reads in one go (in chunks, with the KV cache reused from turn to turn; see
:func:`persona_axis.inference.capture.pool_spans_chunked`):

- A conversation that fits the window is one window: the whole rendering, read as one pass
  would read it (the projections equal a single pass's up to float rounding).
- Otherwise the first window holds the first turns that fit. When the next turn does not fit,
  a new window starts: the chat is rendered again from a user message, keeping at most
  ``keep × window`` tokens of the preceding messages as context, so every token is read about
  ``1 / (1 − keep)`` times and time grows linearly with the length. A system message shorter
  than that is kept at the start of every window (it defines the persona). A turn whose own
  user message is too long loses the start of that message; a turn longer than the window by
  itself is read on its first ``window`` tokens.

Every assistant turn records the context it was read with (:class:`TurnContext`); a
conversation where any turn lost context says so once (:attr:`ConversationPlan.warning`).

The default window is the model's trained positions (``max_position_embeddings``) minus one
sixteenth as headroom (SmolLM2: 8,192 → 7,680 tokens); models that state none get
:data:`FALLBACK_WINDOW`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.models.chat import ChatFormat, Message, RenderedChat
    from persona_axis.models.loading import LoadedModel

HEADROOM = 16  # the default window leaves 1/16 of the trained positions unused
FALLBACK_WINDOW = 4096
DEFAULT_KEEP = 0.25
DEFAULT_CHUNK = 1024
MIN_WINDOW = 16

Segments = tuple[tuple[int, int], ...]


def trained_positions(lm: LoadedModel) -> int | None:
    """The positions ``lm`` was trained on (its config's ``max_position_embeddings``)."""
    config = lm.model.config.get_text_config()
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def default_window(lm: LoadedModel) -> int:
    """Trained positions minus 1/16 headroom (module doc), or :data:`FALLBACK_WINDOW`."""
    positions = trained_positions(lm)
    return FALLBACK_WINDOW if positions is None else positions - positions // HEADROOM


@dataclass(frozen=True)
class ContextPolicy:
    """How much context a turn is read with (module doc).

    ``window``: most tokens one turn is read with, context included (None: :func:`default_window`
    of the model); ``keep``: share of the window kept as context when a new window starts
    (0 ≤ keep < 1); ``chunk_tokens``: tokens per forward call (bounds attention memory).
    """

    window: int | None = None
    keep: float = DEFAULT_KEEP
    chunk_tokens: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        if self.window is not None and self.window < MIN_WINDOW:
            raise PersonaAxisError(
                f"The context window must be at least {MIN_WINDOW} tokens, not {self.window}."
            )
        if not 0 <= self.keep < 1:
            raise PersonaAxisError(f"keep must be in [0, 1), not {self.keep}.")
        if self.chunk_tokens < 1:
            raise PersonaAxisError(f"chunk_tokens must be at least 1, not {self.chunk_tokens}.")

    def for_model(self, lm: LoadedModel) -> ContextPolicy:
        """This policy with the window resolved for ``lm``; a window past the model's trained
        positions is refused."""
        positions = trained_positions(lm)
        window = default_window(lm) if self.window is None else self.window
        if positions is not None and window > positions:
            raise PersonaAxisError(
                f"A window of {window} tokens is past the {positions} positions {lm.name} was "
                f"trained on; its activations there mean nothing. Use at most {positions}."
            )
        return ContextPolicy(window, self.keep, self.chunk_tokens)

    @property
    def size(self) -> int:
        if self.window is None:
            raise PersonaAxisError(
                "Resolve the policy for a model first (ContextPolicy.for_model)."
            )
        return self.window

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "keep": self.keep, "chunk_tokens": self.chunk_tokens}


@dataclass(frozen=True)
class TurnContext:
    """The context one assistant turn was read with.

    ``message_index``: the turn's message (0-based); ``window``: which window read it;
    ``context_tokens``: tokens before its content in that window (template tokens included);
    ``first_message``: the earliest message after a kept system message that the window holds
    (0 when nothing was left out); ``cut``: earlier messages or parts of them were left out;
    ``turn_tokens_dropped``: tokens of the turn itself past the window.
    """

    message_index: int
    window: int
    context_tokens: int
    first_message: int
    cut: bool
    turn_tokens_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "context_tokens": self.context_tokens,
            "first_message": self.first_message,
            "cut": self.cut,
            "turn_tokens_dropped": self.turn_tokens_dropped,
        }


@dataclass(frozen=True)
class Window:
    """Token ids read in one go and the content span of each turn pooled from them.

    ``turns`` are assistant-turn numbers (0-based, in the order of the conversation's assistant
    messages), one per span; turns without content tokens are not pooled. ``requests`` pairs
    an assistant-turn number with the content span of the user message that turn answers (the
    message right before it), for every turn of the window whose request the window holds whole,
    with or without content of its own (:mod:`persona_axis.drift.request_probe` reads them).
    """

    input_ids: list[int]
    turns: list[int]
    spans: list[Segments]
    requests: list[tuple[int, Segments]] = field(default_factory=list)


@dataclass
class ConversationPlan:
    """The windows of one conversation and the context of each of its assistant turns."""

    windows: list[Window]
    contexts: list[TurnContext]
    n_tokens: int
    policy: ContextPolicy
    n_turn_tokens: list[int] = field(default_factory=list)

    @property
    def cut(self) -> bool:
        return any(context.cut or context.turn_tokens_dropped for context in self.contexts)

    @property
    def warning(self) -> str | None:
        """One sentence when any turn lost context (None otherwise)."""
        if not self.cut:
            return None
        cut = sum(1 for c in self.contexts if c.cut)
        dropped = sum(1 for c in self.contexts if c.turn_tokens_dropped)
        parts = [
            f"the conversation has {self.n_tokens} tokens, more than the {self.policy.size}-token "
            "context window"
        ]
        if cut:
            parts.append(
                f"{cut} of {len(self.contexts)} assistant turns were read without the "
                "start of the conversation"
            )
        if dropped:
            parts.append(
                f"{dropped} turn(s) longer than the window were read on their first "
                f"{self.policy.size} tokens"
            )
        return "context cut: " + "; ".join(parts) + "."

    @property
    def single_pass(self) -> bool:
        """One window short enough for one forward call (can be batched with others)."""
        return len(self.windows) <= 1 and self.n_tokens <= self.policy.chunk_tokens


def plan_conversation(
    chat: ChatFormat, messages: Sequence[Message], policy: ContextPolicy
) -> ConversationPlan:
    """The windows and per-turn contexts of ``messages`` under a resolved ``policy``.

    Raises :class:`PersonaAxisError` when the chat template refuses the conversation.
    """
    full = chat.render(messages)
    roles = [span.role for span in full.spans]
    turn_messages = [i for i, role in enumerate(roles) if role == "assistant"]
    sizes = [full.spans[i].n_tokens for i in turn_messages]
    window = policy.size
    if len(full.input_ids) <= window:
        usable = [t for t, i in enumerate(turn_messages) if full.spans[i].segments]
        contexts = [TurnContext(i, 0, full.spans[i].start, 0, cut=False) for i in turn_messages]
        spans = [full.spans[turn_messages[t]].segments for t in usable]
        requests = _requests(full, turn_messages, range(len(turn_messages)))
        windows = [Window(full.input_ids, usable, spans, requests)] if usable or requests else []
        return ConversationPlan(windows, contexts, len(full.input_ids), policy, sizes)
    return _Planner(chat, list(messages), full, policy).plan(sizes)


def _requests(
    rendered: RenderedChat, turn_messages: Sequence[int], turns: Sequence[int]
) -> list[tuple[int, Segments]]:
    """``(turn, segments)`` of the user message right before each of ``turns`` in ``rendered``
    (``turn_messages[turn]``: the turn's message index there; negative: not rendered)."""
    out = []
    for turn in turns:
        before = turn_messages[turn] - 1
        span = rendered.spans[before] if before >= 0 else None
        if span is not None and span.role == "user" and span.segments:
            out.append((turn, span.segments))
    return out


class _Planner:
    """Windows for a conversation longer than the window (module doc)."""

    def __init__(
        self,
        chat: ChatFormat,
        messages: list[Message],
        full: RenderedChat,
        policy: ContextPolicy,
    ) -> None:
        self.chat = chat
        self.messages = messages
        self.full = full
        self.window = policy.size
        self.keep_tokens = int(policy.keep * policy.size)
        self.policy = policy
        self.turn_messages = [i for i, span in enumerate(full.spans) if span.role == "assistant"]
        system = full.spans[0] if full.spans and full.spans[0].role == "system" else None
        self.pinned = 1 if system is not None and system.n_tokens <= self.keep_tokens else 0

    def _end(self, index: int) -> int:
        """Where message ``index``'s content ends in the full rendering (-1: the start)."""
        return 0 if index < 0 else self.full.spans[index].end

    def _start(self, turn_message: int) -> int:
        """The first message of a window that starts for the turn at ``turn_message``."""
        candidates = [
            j for j in range(self.pinned, turn_message) if self.full.spans[j].role != "assistant"
        ]
        if not candidates:
            return turn_message if turn_message >= self.pinned else self.pinned
        begin = self.full.spans[turn_message].start
        fitting = [j for j in candidates if begin - self._end(j - 1) <= self.keep_tokens]
        return fitting[0] if fitting else candidates[-1]

    def plan(self, sizes: list[int]) -> ConversationPlan:
        windows: list[Window] = []
        contexts: dict[int, TurnContext] = {}
        turn_messages = self.turn_messages
        first = 0
        while first < len(turn_messages):
            start = self.pinned if not windows else self._start(turn_messages[first])
            last = self._last_fitting(start, turn_messages, first, opening=not windows)
            window, made = self._window(start, turn_messages, first, last, len(windows))
            windows.append(window)
            contexts.update(made)
            first = max(made) + 1
        ordered = [contexts[t] for t in range(len(turn_messages))]
        return ConversationPlan(windows, ordered, len(self.full.input_ids), self.policy, sizes)

    def _last_fitting(
        self, start: int, turn_messages: list[int], first: int, *, opening: bool
    ) -> int:
        """The last turn (index into ``turn_messages``) whose content end fits the window,
        estimated on the full rendering; at least ``first``."""
        base = self._end(start - 1)
        # an opening window is a prefix of the full rendering; later ones re-render a preamble
        later = self._end(0) if self.pinned else self.full.spans[0].start
        preamble = base if opening else later
        last = first
        for turn in range(first + 1, len(turn_messages)):
            if preamble + self._end(turn_messages[turn]) - base > self.window:
                break
            last = turn
        return last

    def _window(
        self, start: int, turn_messages: list[int], first: int, last: int, number: int
    ) -> tuple[Window, dict[int, TurnContext]]:
        """Render the window from message ``start`` to turn ``last``, dropping trailing turns
        that do not fit; a first turn that does not fit alone is cut (:meth:`_cut_window`)."""
        head = list(self.messages[: self.pinned]) if start >= self.pinned else []
        offset = start - len(head)  # message index = window message index + offset
        while True:
            rendered = self.chat.render([*head, *self.messages[start : turn_messages[last] + 1]])
            ends = [rendered.spans[turn_messages[t] - offset].end for t in range(first, last + 1)]
            if ends[-1] <= self.window or last == first:
                break
            fitting = [t for t, end in enumerate(ends) if end <= self.window]
            last = first + (fitting[-1] if fitting else 0)
        if ends[0] > self.window:
            return self._cut_window(rendered, start, offset, first, number=number)
        cut = start > self.pinned
        contexts, turns, spans = {}, [], []
        for turn in range(first, last + 1):
            span = rendered.spans[turn_messages[turn] - offset]
            contexts[turn] = TurnContext(
                turn_messages[turn], number, span.start, start if cut else 0, cut
            )
            if span.segments:
                turns.append(turn)
                spans.append(span.segments)
        local = [message - offset for message in turn_messages]
        requests = _requests(rendered, local, range(first, last + 1))
        return Window(rendered.input_ids[: max(ends)], turns, spans, requests), contexts

    def _cut_window(
        self, rendered: RenderedChat, start: int, offset: int, turn: int, *, number: int
    ) -> tuple[Window, dict[int, TurnContext]]:
        """One turn that does not fit with its context: drop the start of the contents before
        it, earliest first; then, if the turn alone is too long, its tail."""
        message = self.turn_messages[turn]
        span = rendered.spans[message - offset]
        excess = span.end - self.window
        removed: list[tuple[int, int]] = []
        for before in rendered.spans[self.pinned if start >= self.pinned else 0 : message - offset]:
            take = min(excess, before.end - before.start)
            if take > 0:
                removed.append((before.start, before.start + take))
                excess -= take
        ids = list(rendered.input_ids)
        for begin, end in reversed(removed):
            del ids[begin:end]
        shift = sum(end - begin for begin, end in removed)
        begin, kept_end = span.start - shift, min(span.end - shift, self.window)
        segments = tuple(
            (max(a - shift, begin), min(b - shift, kept_end))
            for a, b in span.segments
            if min(b - shift, kept_end) > max(a - shift, begin)
        )
        context = TurnContext(
            message, number, begin, start, True, turn_tokens_dropped=span.end - shift - kept_end
        )
        window = Window(ids[:kept_end], [turn], [segments]) if segments else Window([], [], [])
        return window, {turn: context}
