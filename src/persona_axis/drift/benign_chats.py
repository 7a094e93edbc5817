"""Benign multi-turn conversations held by the model itself, to fit the drift monitor's
benign profile (``persona-axis calibrate-monitor``).

Our package data (``drift/data/benign_chats.json``) lists openers in many domains (coding,
writing, everyday help, cooking, travel, science, history, maths, work, health, money, tech
help, light personal support) and follow-ups that ask for code, lists, long prose or short
answers; each domain names the kinds of follow-up its conversations get, in order. The model
answers every turn in its default persona (no system prompt), so the projections of these
replies show how the Assistant itself moves with turn index, reply length and content type.

Generation is batched turn by turn; after every turn the conversations so far are written to
a checkpoint, so a killed run continues from the last finished turn.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from persona_axis import files
from persona_axis.drift.conversations import Conversation
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.inference.generation import Sampling
    from persona_axis.models.loading import LoadedModel

DATA_FILE = "benign_chats.json"
CHECKPOINT_FORMAT = "persona-axis benign chats"
GENERATED = "generated"  # the source name of these conversations


@cache
def chat_data() -> dict[str, Any]:
    """Our openers and follow-ups (package data; module doc)."""
    text = resources.files("persona_axis.drift").joinpath("data", DATA_FILE).read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def chat_data_digest() -> str:
    """sha256 of our openers and follow-ups as canonical JSON (for provenance)."""
    text = json.dumps(chat_data(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ChatScript:
    """The user side of one benign conversation: its domain, opener and follow-ups, and
    the kind of each user message (``opener``, ``code``, ``list``, ``prose``, ``short``)."""

    domain: str
    user_messages: tuple[str, ...]
    kinds: tuple[str, ...]


def plan_scripts(n_conversations: int, turns: int, seed: int = 0) -> list[ChatScript]:
    """``n_conversations`` scripts of ``turns`` user messages, cycling through the domains
    (every opener once before any repeats); each script draws its follow-ups per kind from its
    own generator (``seed`` and its number), so fewer turns give a prefix of more turns."""
    if n_conversations < 1 or turns < 1:
        raise PersonaAxisError("Ask for at least one conversation of at least one turn.")
    data = chat_data()
    domains = sorted(data["domains"])
    pool = [
        (domain, opener)
        for index in range(max(len(d["openers"]) for d in data["domains"].values()))
        for domain in domains
        for opener in data["domains"][domain]["openers"][index : index + 1]
    ]
    scripts = []
    for number in range(n_conversations):
        domain, opener = pool[number % len(pool)]
        rng = random.Random(f"{seed}:{number}")
        kinds = data["domains"][domain]["follow_ups"]
        follow = [kinds[i % len(kinds)] for i in range(turns - 1)]
        texts = [rng.choice(data["follow_ups"][kind]) for kind in follow]
        scripts.append(ChatScript(domain, (opener, *texts), ("opener", *follow)))
    return scripts


@dataclass
class ChatRun:
    """Conversations in progress: one message list per script, and the settings that made
    them (compared on resume)."""

    scripts: list[ChatScript]
    settings: dict[str, Any]
    messages: list[list[dict[str, str]]] = field(default_factory=list)

    @property
    def turns_done(self) -> int:
        return min((len(m) // 2 for m in self.messages), default=0)

    def conversations(self) -> list[Conversation]:
        """The finished conversations as records (``meta``: domain and per-turn kinds)."""
        return [
            Conversation(
                tuple(messages),
                source=GENERATED,
                position=f"index {index}",
                id=f"benign-{index:03d}",
                meta={"domain": script.domain, "kinds": list(script.kinds)},
            )
            for index, (script, messages) in enumerate(
                zip(self.scripts, self.messages, strict=True)
            )
        ]

    def save(self, path: Path) -> None:
        files.write_json(
            path,
            {
                "format": CHECKPOINT_FORMAT,
                "settings": self.settings,
                "scripts": [asdict(s) for s in self.scripts],
                "messages": self.messages,
            },
        )

    @classmethod
    def resume(cls, path: Path, scripts: list[ChatScript], settings: dict[str, Any]) -> ChatRun:
        """The checkpoint at ``path`` if it was made with the same settings, else a new run."""
        if not path.is_file():
            return cls(scripts, settings, [[] for _ in scripts])
        data = files.read_json(path, fix="delete the checkpoint to start the chats again")
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise PersonaAxisError(f"{path} is not a benign-chat checkpoint; delete it.")
        if data.get("settings") != settings:
            raise PersonaAxisError(
                f"{path} was made with other settings ({data.get('settings')}); delete it or "
                "choose another output folder."
            )
        return cls(scripts, settings, data["messages"])


def hold_chats(
    lm: LoadedModel,
    scripts: Sequence[ChatScript],
    sampling: Sampling,
    *,
    batch_size: int = 16,
    checkpoint: Path | None = None,
    progress: bool = False,
) -> list[Conversation]:
    """Let ``lm`` answer every script turn by turn in its default persona (module doc)."""
    from persona_axis.inference.generation import generate_replies

    settings = {"sampling": asdict(sampling), "model": lm.name}
    run = (
        ChatRun.resume(checkpoint, list(scripts), settings)
        if checkpoint is not None
        else ChatRun(list(scripts), settings, [[] for _ in scripts])
    )
    turns = max((len(s.user_messages) for s in scripts), default=0)
    with tqdm(
        total=turns,
        initial=run.turns_done,
        desc="benign chats",
        unit="turn",
        disable=not progress,
    ) as bar:
        for turn in range(run.turns_done, turns):
            live = [i for i, s in enumerate(scripts) if turn < len(s.user_messages)]
            for i in live:
                run.messages[i].append({"role": "user", "content": scripts[i].user_messages[turn]})
            live.sort(key=lambda i: sum(len(m["content"]) for m in run.messages[i]))
            step = replace_seed(sampling, turn)
            for first in range(0, len(live), batch_size):
                chunk = live[first : first + batch_size]
                replies = generate_replies(lm, [run.messages[i] for i in chunk], step)
                for i, reply in zip(chunk, replies, strict=True):
                    run.messages[i].append({"role": "assistant", "content": reply.text})
            if checkpoint is not None:
                run.save(checkpoint)
            bar.update(1)
    return run.conversations()


def estimate_seconds(
    lm: LoadedModel,
    scripts: Sequence[ChatScript],
    sampling: Sampling,
    *,
    batch_size: int = 16,
    probe_tokens: int = 8,
) -> float:
    """Rough seconds :func:`hold_chats` will take, from one batch of the first openers timed
    three times: 1 new token (a warm-up), 1 token (the prompt pass) and ``1 + probe_tokens``
    (the cost per new token from the difference), scaled to every batch of every turn at
    ``sampling.max_new_tokens``. Later turns carry longer contexts, so their prompt passes
    cost more than the probe's."""
    import time

    from persona_axis.inference.generation import generate_replies

    if not scripts:
        return 0.0
    chunk = [[{"role": "user", "content": s.user_messages[0]}] for s in scripts[:batch_size]]

    def timed(tokens: int) -> float:
        started = time.perf_counter()
        generate_replies(lm, chunk, replace(sampling, max_new_tokens=tokens))
        return time.perf_counter() - started

    timed(1)
    prompt = timed(1)
    per_token = max(0.0, timed(1 + probe_tokens) - prompt) / probe_tokens
    batches = -(-len(scripts) // batch_size)
    turns = max(len(s.user_messages) for s in scripts)
    return (prompt + per_token * sampling.max_new_tokens) * batches * turns


def replace_seed(sampling: Sampling, turn: int) -> Sampling:
    """``sampling`` with its seed moved on by ``turn`` (each turn samples afresh)."""
    return replace(sampling, seed=sampling.seed + turn)
