"""Render chats with the tokenizer's own template and find each message's content tokens.

A message's span is the ``[start, end)`` range of token positions holding its *content* only:
no role header, no end-of-turn token, no ``<think>...</think>`` block (docs/method.md). Spans are
found
without guessing at a template's syntax: every content is rendered once as a unique placeholder,
the placeholders' places in the rendered text give the character ranges of the contents, and
the tokenizer's offset mapping turns characters into tokens. A template that rewrites contents
in a way this cannot follow is refused with an error, never approximated.

Templates that reject a system role get the system text folded into the first user message
(``system + "\\n\\n" + user``); templates with a thinking switch are rendered with it off.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from transformers import PreTrainedTokenizerBase

from persona_axis.errors import PersonaAxisError

ROLES = ("system", "user", "assistant")
THINK_CLOSE = "</think>"
FOLD_SEPARATOR = "\n\n"
_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)

Message = Mapping[str, Any]
"""An OpenAI-style message: ``{"role": "system" | "user" | "assistant", "content": str}``."""


@dataclass(frozen=True)
class MessageSpan:
    """Token positions of one message's content: ``[start, end)`` and the pooled pieces.

    ``segments`` equals ``((start, end),)`` unless code blocks were excluded, in which case it
    lists the ``[start, end)`` runs left between them.
    """

    role: str
    start: int
    end: int
    segments: tuple[tuple[int, int], ...]

    @property
    def n_tokens(self) -> int:
        return sum(stop - begin for begin, stop in self.segments)


@dataclass(frozen=True)
class RenderedChat:
    """A rendered chat: template text, its token ids, and one span per input message."""

    text: str
    input_ids: list[int]
    spans: list[MessageSpan]

    def role_spans(self, role: str) -> list[MessageSpan]:
        return [span for span in self.spans if span.role == role]


def validate_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Check roles and contents; return plain ``{"role", "content"}`` dicts."""
    if not messages:
        raise PersonaAxisError("The conversation is empty; give at least one message.")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise PersonaAxisError(
                f"Message {index} is a {type(message).__name__}, not an object with "
                "'role' and 'content'."
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise PersonaAxisError(
                f"Message {index} has role {role!r}; use one of {', '.join(ROLES)}."
            )
        if not isinstance(content, str):
            raise PersonaAxisError(
                f"Message {index} ({role}) has no text content; 'content' must be a string."
            )
        clean.append({"role": str(role), "content": content})
    if any(m["role"] == "system" for m in clean[1:]):
        raise PersonaAxisError("Only the first message may be a system message.")
    return clean


def _split_reasoning(content: str) -> tuple[str, str]:
    """(reasoning prefix up to and including ``</think>``, answer)."""
    if THINK_CLOSE not in content:
        return "", content
    head, _, answer = content.rpartition(THINK_CLOSE)
    return head + THINK_CLOSE, answer


def _content_variants(text: str) -> list[str]:
    """Ways a template may have rewritten a content, most faithful first."""
    variants = [text, text.strip(), text.lstrip("\n"), text.lstrip(), text.rstrip()]
    return list(dict.fromkeys(variants))


class ChatFormat:
    """Chat rendering and content spans for one tokenizer (needs a fast tokenizer)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise PersonaAxisError(
                "Token spans need a fast tokenizer (offset mapping); load the tokenizer with "
                "use_fast=True."
            )
        if not tokenizer.chat_template:
            raise PersonaAxisError(
                "The tokenizer has no chat template; set tokenizer.chat_template to the model's "
                "template before formatting chats."
            )
        self.tokenizer = tokenizer
        self._nonce = secrets.token_hex(4)

    @property
    def template_source(self) -> str:
        template = self.tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default") or next(iter(template.values()))
        return str(template)

    @cached_property
    def thinking_switch(self) -> bool:
        """Whether the template takes ``enable_thinking`` (rendered with it False)."""
        return "enable_thinking" in self.template_source

    @cached_property
    def supports_system(self) -> bool:
        """Whether the template accepts a system message and renders its text."""
        marker = self._placeholder(0)
        try:
            text = self._apply(
                [{"role": "system", "content": marker}, {"role": "user", "content": "hi"}]
            )
        except Exception:  # templates refuse a system role by raising from Jinja
            return False
        return marker in text

    def _placeholder(self, index: int) -> str:
        return f"[[pa{self._nonce}m{index}]]"

    def _apply(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        extra: dict[str, Any] = {"enable_thinking": False} if self.thinking_switch else {}
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
        )
        return str(text)

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        exclude_code: bool = False,
    ) -> RenderedChat:
        """Render ``messages`` and return token ids plus the content span of every message.

        With ``add_generation_prompt`` the text ends with the assistant header (and, for
        templates with a thinking switch, an empty thinking block), ready for generation.
        ``exclude_code`` drops fenced code blocks (```...```) from the pooled segments.
        """
        clean = validate_messages(messages)
        fold = clean[0]["role"] == "system" and not self.supports_system
        # answers[i]: the part of message i whose tokens form its span
        answers: list[str] = []
        marked: list[dict[str, str]] = []
        real: list[dict[str, str]] = []
        for index, message in enumerate(clean):
            prefix, answer = ("", message["content"])
            if message["role"] == "assistant":
                prefix, answer = _split_reasoning(message["content"])
            answers.append(answer)
            marked.append({"role": message["role"], "content": prefix + self._placeholder(index)})
            real.append(dict(message))
        if fold:
            marked, real = self._fold_system(marked), self._fold_system(real)
        try:
            marked_text = self._apply(marked, add_generation_prompt)
            text = self._apply(real, add_generation_prompt)
        except Exception as exc:
            raise PersonaAxisError(
                f"The chat template refused this conversation: {exc}. Check the order of roles "
                "(most templates want user and assistant turns to alternate)."
            ) from exc
        char_spans = self._locate(marked_text, text, answers)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
        spans = []
        for message, answer, (begin, end) in zip(clean, answers, char_spans, strict=True):
            holes = [(begin + m.start(), begin + m.end()) for m in _CODE_BLOCK.finditer(answer)]
            spans.append(
                _token_span(message["role"], offsets, begin, end, holes if exclude_code else [])
            )
        return RenderedChat(text=text, input_ids=list(encoding["input_ids"]), spans=spans)

    def _fold_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        system, rest = messages[0], messages[1:]
        if rest and rest[0]["role"] == "user":
            content = system["content"] + FOLD_SEPARATOR + rest[0]["content"]
            return [{"role": "user", "content": content}, *rest[1:]]
        return [{"role": "user", "content": system["content"]}, *rest]

    def _locate(self, marked: str, text: str, answers: list[str]) -> list[tuple[int, int]]:
        """Character range of each answer in ``text``, aligned through the placeholders."""
        pieces = re.split(rf"\[\[pa{self._nonce}m(\d+)\]\]", marked)
        literals, indices = pieces[0::2], [int(i) for i in pieces[1::2]]
        if sorted(indices) != list(range(len(answers))):
            raise PersonaAxisError(
                "The chat template drops or repeats message contents, so their tokens cannot be "
                "located; persona-axis needs templates that render each content once."
            )
        found: dict[int, tuple[int, int]] = {}
        pos = 0
        if not text.startswith(literals[0]):
            raise self._unmappable()
        pos = len(literals[0])
        for index, literal in zip(indices, literals[1:], strict=True):
            for variant in _content_variants(answers[index]):
                after = pos + len(variant)
                if text.startswith(variant, pos) and text.startswith(literal, after):
                    found[index] = (pos, after)
                    pos = after + len(literal)
                    break
            else:
                raise self._unmappable()
        if pos != len(text):
            raise self._unmappable()
        return [found[i] for i in range(len(answers))]

    @staticmethod
    def _unmappable() -> PersonaAxisError:
        return PersonaAxisError(
            "The chat template rewrites message contents in a way persona-axis cannot map to "
            "tokens; please report the model so its template can be supported."
        )


def _token_span(
    role: str,
    offsets: list[tuple[int, ...]],
    begin: int,
    end: int,
    holes: list[tuple[int, int]],
) -> MessageSpan:
    """Tokens whose characters lie mostly inside ``[begin, end)``, minus those in ``holes``."""

    def inside(token: tuple[int, ...], low: int, high: int) -> bool:
        start, stop = token[0], token[1]
        overlap = min(stop, high) - max(start, low)
        return stop > start and 2 * overlap > stop - start

    members = [i for i, token in enumerate(offsets) if inside(token, begin, end)]
    if not members:
        first = next((i for i, token in enumerate(offsets) if token[0] >= begin), len(offsets))
        return MessageSpan(role=role, start=first, end=first, segments=())
    start, stop = members[0], members[-1] + 1
    kept = [i for i in range(start, stop) if not any(inside(offsets[i], a, b) for a, b in holes)]
    segments: list[tuple[int, int]] = []
    for i in kept:
        if segments and segments[-1][1] == i:
            segments[-1] = (segments[-1][0], i + 1)
        else:
            segments.append((i, i + 1))
    return MessageSpan(role=role, start=start, end=stop, segments=tuple(segments))
