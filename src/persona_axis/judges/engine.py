"""One LLM-judge loop for every rubric: ask, parse the verdict, repair, retry.

A :class:`Rubric` says how to turn an item into a prompt, how to read the verdict out of the
judge's reply, and what to ask when the reply carries none. :class:`LLMJudge` runs it on any
:class:`~persona_axis.judges.backends.ChatBackend`, greedily (temperature 0): replies without a
verdict get up to ``retries_on_unparseable`` follow-up turns asking for the verdict line alone.
The role-adherence judge (:mod:`persona_axis.judges.role`) and the harm judge
(:mod:`persona_axis.judges.harm`) are two rubrics on this one engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from persona_axis.errors import PersonaAxisError
from persona_axis.judges.backends import ChatBackend

V = TypeVar("V")
LLM_OPTIONS = ("max_tokens", "retries_on_unparseable")
"""Settings of :class:`LLMJudge` accepted in a judge config besides the backend's own."""


@dataclass(frozen=True)
class Rubric(Generic[V]):
    """How one kind of judgement is asked for and read back."""

    name: str
    render: Callable[[Any], str]
    """item -> the full prompt shown to the judge."""
    parse: Callable[[str], V | None]
    """judge reply -> verdict, or None when the reply holds none."""
    repair: str
    """The follow-up message asking for the verdict line alone."""


class LLMJudge(Generic[V]):
    """Ask ``backend`` to judge items with ``rubric``; see the module docstring."""

    def __init__(
        self,
        backend: ChatBackend,
        rubric: Rubric[V],
        *,
        max_tokens: int = 256,
        retries_on_unparseable: int = 1,
    ) -> None:
        if retries_on_unparseable < 0 or max_tokens < 1:
            raise PersonaAxisError("retries_on_unparseable must be >= 0 and max_tokens >= 1.")
        self.backend = backend
        self.rubric = rubric
        self.max_tokens = max_tokens
        self.retries_on_unparseable = retries_on_unparseable
        self.name = backend.name

    def ask(self, items: Sequence[Any]) -> list[tuple[V | None, str]]:
        """``(verdict or None, raw)`` per item, in order; ``raw`` joins every reply the judge
        gave for the item (first answer, then repairs) with blank lines."""
        chats = [[{"role": "user", "content": self.rubric.render(item)}] for item in items]
        replies: list[list[str]] = [[] for _ in items]
        verdicts: list[V | None] = [None] * len(items)
        pending = list(range(len(items)))
        for attempt in range(self.retries_on_unparseable + 1):
            if not pending:
                break
            if attempt:
                for index in pending:
                    chats[index] += [
                        {"role": "assistant", "content": replies[index][-1]},
                        {"role": "user", "content": self.rubric.repair},
                    ]
            texts = self.backend.complete(
                [chats[index] for index in pending], max_tokens=self.max_tokens, temperature=0.0
            )
            for index, text in zip(pending, texts, strict=True):
                replies[index].append(text)
                verdicts[index] = self.rubric.parse(text)
            pending = [index for index in pending if verdicts[index] is None]
        return [(verdict, "\n\n".join(raw)) for verdict, raw in zip(verdicts, replies, strict=True)]
