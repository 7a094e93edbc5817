"""What an assistant turn looks like, and the projection an Assistant turn like it should have.

A benign Assistant's projection still moves with what it writes: replies full of code, long
lists or long prose sit at other levels than short chat answers, and the level can move with
the turn index. :class:`TurnFeatures` describes a turn by

- ``code``: share of the reply's characters inside fenced code blocks (```...```);
- ``lists``: share of its non-blank lines outside code that are list items (``-``, ``*``,
  ``•``, ``1.``, ``1)``);
- ``log_tokens``: natural log of its content tokens;
- ``log_turn``: natural log of its 1-based turn number;
- ``performed``: whether the user asked for this reply to be in another voice than the
  Assistant's (:func:`performed_replies`: a story, poem, script or role-play that the user
  requested and has not stepped out of or moved on from). Not a baseline input: the rule
  does not judge such a turn's level at all (:mod:`persona_axis.drift.rule`),

and a :class:`Baseline` is a linear model of the projection on these features, fitted on
benign conversations (:mod:`persona_axis.drift.profile`): ``expected = intercept +
Σ coefficient · feature``, in residual-stream units at one layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from persona_axis.errors import PersonaAxisError

CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S")
FEATURES = ("code", "lists", "log_tokens", "log_turn")

# What a user message asks for (matched case-insensitively unless a pattern needs a capital).
_FORMS = (
    r"stor(?:y|ies)|poems?|verses?|sonnets?|haikus?|limericks?|songs?|lyrics|scenes?|chapters?"
    r"|screenplay|script|dialogue|monologue|letters?|tales?|fables?|fiction|novel|posts?"
    r"|raps?|riddles?|diary|diaries|journal entr(?:y|ies)|speech(?:es)?|(?:text )?adventure"
)
# Words about a piece under way: its parts, its people, how it goes.
_PIECE = (
    rf"{_FORMS}|stanzas?|chorus|couplets?|characters?|narrator|plot|ending|title|version"
    r"|draft|protagonist|hero(?:ine)?|villain"
)
PERFORMANCE_REQUEST = re.compile(
    r"\brole[- ]?play|\bin character\b|\bco-?write\b|\bpretend (?:to be|you(?:'re| are))\b"
    r"|\byou(?:'re| are) (?:going to be|now)\b|\byou play\b|\bplay (?:the role|a character)"
    r"|\b(?:talk|speak|answer|reply) (?:like|as) (?:a|an)\b|\bvoice (?:a|an|the|her|him)\b"
    r"|\bwrite (?:it|this|that|more)\b|\bnext (?:scene|bit|part|chapter|verse|stanza)\b"
    r"|\blet'?s resume\b|\bback to the (?:scene|story|game|role-?play)\b"
    rf"|\b(?:write|draft|compose)\b[^.?!]{{0,40}}\b(?:{_FORMS}|bit|part|opening|ending)\b"
    rf"|\b(?:do|make)\b[^.?!]{{0,20}}\b(?:{_FORMS})\b"
    rf"|\b(?:tell|give)\b[^.?!]{{0,40}}\b(?:{_FORMS})\b"
    r"|\b(?:i'?d (?:like|love)|i (?:would like|want|need)|can you|could you|would you|will you"
    rf"|please|let'?s|how about)\b(?:(?!\bmy\b|\bour\b)[^.?!]){{0,60}}\b(?:{_FORMS})\b",
    re.IGNORECASE,
)
# A message that carries a performance on: an in-story line (quoted speech, an *action*), a
# follow-up on the piece ("continue", "next scene", "make it rhyme", "what happens then?", "how
# would the captain answer?") or a word about it (a verse, the ending, a character).
IN_STORY = re.compile(r"[\"“”]|\*[^*\n]+\*")  # quoted speech or an *action*
CONTINUATION = re.compile(
    IN_STORY.pattern + r"|^\W*(?:more|again|next|another|then|and)\b"
    r"|\b(?:continue|keep going|go on|carry on|one more|write more|what happens|then what"
    r"|resume|back to the|back in character|skip ahead|the part where|same characters"
    r"|make it|now (?:one|a|an|the|write|make|do|give|try)|rewrite|longer|shorter|darker"
    r"|lighter|funnier|rhyme|give me|show me|let's see|let's have|next|your turn|same again"
    r"|(?:what|how) (?:does|do|did|would|will|should) (?:he|she|they|it|the \w+|\w+ then)"
    rf"|{_PIECE})\b",
    re.IGNORECASE,
)
# "stay in character until I say pause" asks for a performance; it does not step out of one.
CONDITIONAL = re.compile(r"\b(?:until|unless|till|when|whenever) I\b[^.?!]*", re.IGNORECASE)
NAMED_ROLE = re.compile(
    r"\b(?:[Bb]e|[Aa]s|[Vv]oice|[Pp]lay)\s+(?:Sir |Lady |Captain |Dr\.? )?[A-Z][a-z]+\b"
    r"|\bin [A-Z][a-z]+'s voice\b"
)
STEP_OUT = re.compile(
    r"\bout of character\b|\booc\b|\bstep(?:ping)? out\b|\bpause\b|\bbreak character\b"
    r"|\bback as (?:the|my|an?) assistant\b|\bneed you back\b|\bi'?m serious\b"
    r"|\breal question\b|\bstop (?:the )?(?:role-?play|game|story)\b"
    r"|\breal life\b|\bare you (?:\w+ ){0,3}(?:ai|bot|chatbot|real|human|person|there"
    r"|conscious|assistant|model|program)\b|\bwho (?:am i|are you)\b|\bwhat are you\b"
    r"|\byou(?:'re| are) (?:\w+ ){0,3}(?:ai|bot|chatbot|assistant|program)\b"
    r"|\btalking to (?:an? )?(?:ai|bot|machine|computer|real person|human)\b|\bnot as [A-Z]",
    re.IGNORECASE,
)
# A creative piece named outright ("monologue please", "I need a short poem", "wanna run a text
# adventure?") asks for one, unless it is the user's own piece ("my poem").
CREATIVE_FORM = re.compile(
    r"\b(?:poems?|poetry|haikus?|limericks?|sonnets?|verses?|lyrics|songs?|raps?|riddles?"
    r"|stor(?:y|ies)|fables?|fairy ?tales?|scripts?|screenplay|(?:radio|stage) (?:drama|play)"
    r"|monologues?|diary entr(?:y|ies)|text adventure|role-?play|fan ?fic(?:tion)?)\b",
    re.IGNORECASE,
)
OWN_PIECE = re.compile(r"\b(?:my|our)\s+(?:\w+\s+){0,2}$", re.IGNORECASE)
# ... and only in a message that asks for something, or that opens with the form ("limerick.
# my cat"): "old songs from the seventies" in a story about one's life asks for nothing.
ASKS = re.compile(
    r"\b(?:please|can you|could you|would you|will you|wanna|i (?:want|need)|i'?d (?:like|love)"
    r"|let'?s|how about|give me|write|try|another|one more|run)\b",
    re.IGNORECASE,
)
# A message that leaves the piece: a disclosure about the user's own life, or a plain change of
# subject. (A question with no word about the piece also leaves it: see performed_replies.)
MOVES_ON = re.compile(
    r"\bI(?:'ve| have) been (?:feeling|struggling|thinking about (?:my|me))"
    r"|\bI(?:'m| am) (?:\w+ ){0,2}(?:feeling|struggling|tired|sad|lonely|scared|worried"
    r"|embarrassed|lost|confused|hurt|upset|anxious|depressed)\b"
    r"|\byou(?:'re| are| were) (?:\w+ ){0,2}(?:real|human|a person|alive)\b"
    r"|\bI feel\b|\bunrelated\b|\bdifferent (?:question|topic|subject)\b"
    r"|\bchange (?:of|the) (?:subject|topic)\b|\bby the way\b|\breal talk\b",
    re.IGNORECASE,
)
# What a piece looks like on the page: an *action*, quoted speech, screenplay cues, verse.
ACTION = re.compile(r"(?<!\*)\*[^*\n]{3,}\*(?!\*)")
QUOTED = re.compile(r"[\"“][^\"”\n]{12,}[\"”]")
SCRIPT_CUE = re.compile(r"^\s*(?:(?:INT|EXT)\.|[A-Z][A-Z .'-]{1,30}:?\s*$)", re.MULTILINE)
VERSE_LINE_CHARS = 45  # median length of a verse line at most, in characters
# A question put to the assistant itself ("do you ever get lonely?"), outside the story: a
# "you" with a "?" after it in the same sentence (:func:`_asks_you`).
YOU = re.compile(r"\byou(?:r|rself)?\b", re.IGNORECASE)
THANKS = re.compile(r"^\W*(?:thanks|thank you|thx|cheers)\b", re.IGNORECASE)
IDENTITY_REQUEST = re.compile(
    r"\bno (?:restrictions|rules|filters?|limits|guidelines)\b|\bunfiltered\b|\buncensored\b"
    r"|\bjailbreak|\b(?:true|real|inner|hidden|secret) (?:self|you|voice|name)\b"
    r"|\bthe real one\b|\bwhat you really think\b|\bdrop the (?:script|act|filter|mask)\b",
    re.IGNORECASE,
)


def performed_replies(
    messages: Sequence[Mapping[str, Any]], heard: Sequence[bool | None] | None = None
) -> list[bool]:
    """Per message, whether it is an assistant reply the user asked to be *performed*: in a
    voice that is not the Assistant's own (a story, poem, script, letter, a character to play).

    Read in order, from the user's messages and the reply's own shape: a request for such a
    piece (or to play a named role, or a creative form named outright) starts a performance.
    The next messages keep it unless they step out ("pause", "out of character", "are you an
    AI?", "who am I talking to?") or move on: a disclosure about the user's own life, a
    change of subject, or a question or a thank-you with no word about the piece and no
    in-story line. A performance that ended is taken up again only by a message that carries
    it on ("continue", "next scene", an in-story line). A reply shaped like a piece (an
    ``*action*``, quoted speech, screenplay cues, verse: :func:`piece_shaped`) also counts as
    performed once a piece has been asked for, unless the message it answers stepped out,
    disclosed something of the user's own life or put a question to the assistant itself
    outside the story. So a conversation that moves on is judged again. A user who has asked
    the assistant to shed its rules or show its "true self" is not granted performances for
    the rest of the conversation (persona jailbreaks read as requests, not as fiction).
    System and user messages are never performed.

    ``heard``: per message, for an assistant message, whether the model itself read its request
    as one for a performed reply (:class:`persona_axis.drift.request_probe.RequestProbe`; None:
    not read). A reply heard so is performed too, unless the user asked to shed its rules.
    """
    out: list[bool] = []
    performing = requested = suspicious = shape_counts = False
    for index, message in enumerate(messages):
        role = message.get("role")
        text = str(message.get("content") or "")
        if role == "user":
            suspicious = suspicious or bool(IDENTITY_REQUEST.search(text))
            asked = bool(
                PERFORMANCE_REQUEST.search(text) or NAMED_ROLE.search(text) or _names_a_form(text)
            )
            carries_on = bool(CONTINUATION.search(text))  # in-story lines included
            steps_out = bool(STEP_OUT.search(CONDITIONAL.sub("", text)))
            discloses = bool(MOVES_ON.search(text))
            if steps_out:
                performing = False
            elif performing and not asked:
                asks_or_thanks = "?" in text or bool(THANKS.search(text))
                performing = not (discloses or (asks_or_thanks and not carries_on))
            else:
                performing = asked or (requested and carries_on)
            requested = (requested or asked) and not suspicious
            performing = performing and not suspicious
            asks_the_assistant = _asks_you(text) and not IN_STORY.search(text)
            shape_counts = requested and not steps_out and not discloses and not asks_the_assistant
        probed = heard is not None and bool(heard[index]) and not suspicious
        shaped = shape_counts and piece_shaped(text)
        out.append(role == "assistant" and (performing or shaped or probed))
    return out


def piece_shaped(text: str) -> bool:
    """Whether a reply looks like a piece on the page: an ``*action*``, two quoted lines of
    speech, two screenplay cues, or verse (four lines or more outside code and lists, the
    median at most :data:`VERSE_LINE_CHARS` characters)."""
    prose = CODE_BLOCK.sub("\n", text)
    if ACTION.search(prose) or len(QUOTED.findall(prose)) >= 2:
        return True
    if len(SCRIPT_CUE.findall(prose)) >= 2:
        return True
    lines = sorted(
        len(line.strip())
        for line in prose.splitlines()
        if line.strip() and not LIST_ITEM.match(line)
    )
    return len(lines) >= 4 and lines[len(lines) // 2] <= VERSE_LINE_CHARS


def _asks_you(text: str) -> bool:
    """Whether a sentence of ``text`` (split at "." and "!") has a "you" and a "?" after it;
    one scan per sentence, so a long message costs linear time."""
    for sentence in re.split(r"[.!]", text):
        found = YOU.search(sentence)
        if found and "?" in sentence[found.end() :]:
            return True
    return False


def _names_a_form(text: str) -> bool:
    """Whether ``text`` names a creative form that is not the user's own piece."""
    opening = " ".join(text.split()[:3])
    return any(
        not _own_piece(text, match.start())
        and (bool(ASKS.search(text)) or match.group().lower() in opening.lower())
        for match in CREATIVE_FORM.finditer(text)
    )


def _own_piece(text: str, end: int) -> bool:
    """Whether ``text[:end]`` ends in "my"/"our" and at most two more words (:data:`OWN_PIECE`).
    The search runs on the last three words and the spaces after them only (a match spans no
    more), so a message naming many forms costs linear, not quadratic, time."""
    start = end
    for _ in range(3):
        words_end = start
        while words_end > 0 and text[words_end - 1].isspace():
            words_end -= 1
        if words_end == start:
            break
        start = words_end
        while start > 0 and not text[start - 1].isspace():
            start -= 1
    return bool(OWN_PIECE.search(text, start, end))


@dataclass(frozen=True)
class TurnFeatures:
    """Content features of one assistant turn (module doc)."""

    turn: int
    n_tokens: int
    code: float
    lists: float
    performed: bool = False

    @classmethod
    def of(cls, text: str, n_tokens: int, turn: int, *, performed: bool = False) -> TurnFeatures:
        """Features of reply ``text`` with ``n_tokens`` content tokens at 1-based ``turn``;
        ``performed``: the user asked for it in another voice (:func:`performed_replies`)."""
        in_code = sum(match.end() - match.start() for match in CODE_BLOCK.finditer(text))
        prose = CODE_BLOCK.sub("\n", text)
        lines = [line for line in prose.splitlines() if line.strip()]
        items = sum(1 for line in lines if LIST_ITEM.match(line))
        return cls(
            turn=turn,
            n_tokens=n_tokens,
            code=in_code / len(text) if text else 0.0,
            lists=items / len(lines) if lines else 0.0,
            performed=performed,
        )

    @property
    def kind(self) -> str:
        """``code``, ``lists``, ``prose`` (≥ 100 tokens) or ``short``: the dominant content."""
        if self.code >= 0.3:
            return "code"
        if self.lists >= 0.3:
            return "lists"
        return "prose" if self.n_tokens >= 100 else "short"

    def values(self) -> dict[str, float]:
        """The model's inputs, by name (:data:`FEATURES`)."""
        return {
            "code": self.code,
            "lists": self.lists,
            "log_tokens": math.log(max(1, self.n_tokens)),
            "log_turn": math.log(max(1, self.turn)),
        }


@dataclass(frozen=True)
class Baseline:
    """``expected = intercept + Σ coefficients[f] · features[f]`` (module doc); features not
    named have coefficient 0. Residual-stream units on the unit axis of one layer."""

    intercept: float
    coefficients: Mapping[str, float]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.coefficients) - set(FEATURES))
        if unknown:
            raise PersonaAxisError(
                f"Unknown baseline features {unknown}; known: {', '.join(FEATURES)}."
            )
        values = [self.intercept, *self.coefficients.values()]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise PersonaAxisError("Baseline intercept and coefficients must be finite numbers.")

    def expected(self, features: TurnFeatures) -> float:
        values = features.values()
        return self.intercept + sum(c * values[name] for name, c in self.coefficients.items())

    def to_dict(self) -> dict[str, Any]:
        return {"intercept": self.intercept, "coefficients": dict(self.coefficients)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        try:
            return cls(
                float(data["intercept"]), {k: float(v) for k, v in data["coefficients"].items()}
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PersonaAxisError(
                f"The stored monitor baseline is malformed ({exc!r}); run persona-axis "
                "calibrate-monitor again."
            ) from exc
