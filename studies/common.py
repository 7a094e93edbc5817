"""Shared pieces of the axis-quality study scripts (docs/axis-quality.md).

The study reads one large build store (``persona-axis build`` output, every rollout's response
activation at all layers) into memory and recomputes axes from subsets of it, so most factors
need no new generation. Helpers here: loading a store, saving/loading study tensors, and the
generation of replies with their activations at every layer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HELDOUT = REPO / "evaldata" / "axis_heldout"


@dataclass
class Rollouts:
    """Every stored rollout of a build, in plan (id) order.

    ``acts`` ``[n, n_layers, d]`` float32 response activations; ``kind``, ``name``, ``prompt``,
    ``question`` per rollout (numpy arrays); ``score`` the heuristic judge score (-1 when not
    judged: defaults, traits); ``n_tokens`` reply lengths; ``replies`` the texts.
    """

    acts: Tensor
    kind: np.ndarray
    name: np.ndarray
    prompt: np.ndarray
    question: np.ndarray
    score: np.ndarray
    n_tokens: np.ndarray
    replies: list[str]
    systems: list[str | None]
    questions_text: list[str]

    def select(self, mask: np.ndarray) -> Rollouts:
        index = np.flatnonzero(mask)
        t = torch.from_numpy(index)
        return Rollouts(
            self.acts[t],
            self.kind[index],
            self.name[index],
            self.prompt[index],
            self.question[index],
            self.score[index],
            self.n_tokens[index],
            [self.replies[i] for i in index],
            [self.systems[i] for i in index],
            [self.questions_text[i] for i in index],
        )


def load_store(out: str | Path, *, partial: bool = False) -> Rollouts:
    """All non-empty rollouts of the build directory ``out`` (its ``work`` store); with
    ``partial``, only the batches stored so far (a build stopped before its end). Batches the
    build has not judged yet are scored here with the heuristic role judge, as the build would."""
    from persona_axis.catalog import load_catalog
    from persona_axis.judges.role import HeuristicRoleJudge, JudgeItem
    from persona_axis.pipeline.store import BuildStore

    store = BuildStore(out)
    header = json.loads((store.root / "header.json").read_text())
    judge = HeuristicRoleJudge(header["model"]["name"])
    descriptions = {role.name: role.description for role in load_catalog().roles}
    rows: list[dict[str, Any]] = []
    acts: list[Tensor] = []
    batches = range(header["batches"])
    for k in batches:
        if partial and not store.has_batch(k):
            continue
        records, tensors = store.read_batch(k)
        scores = {}
        if store.has_judgement(k):
            scores = {j["id"]: j["score"] for j in store.read_judgement(k)}
        else:
            chosen = [r for r in records if r["kind"] == "role"]
            items = [
                JudgeItem(
                    r["name"], descriptions[r["name"]], r["system"] or "", r["question"], r["reply"]
                )
                for r in chosen
            ]
            scores = {r["id"]: res.score for r, res in zip(chosen, judge.score(items), strict=True)}
        for row, record in enumerate(records):
            if record["n_tokens"] == 0:
                continue
            rows.append({**record, "score": scores.get(record["id"])})
            acts.append(tensors["activations"][row].float())
    order = sorted(range(len(rows)), key=lambda i: rows[i]["id"])
    rows = [rows[i] for i in order]
    stacked = torch.stack([acts[i] for i in order])
    return Rollouts(
        acts=stacked,
        kind=np.array([r["kind"] for r in rows]),
        name=np.array([r["name"] for r in rows]),
        prompt=np.array([r["prompt_index"] for r in rows]),
        question=np.array([r["question_index"] for r in rows]),
        score=np.array([-1 if r["score"] is None else r["score"] for r in rows]),
        n_tokens=np.array([r["n_tokens"] for r in rows]),
        replies=[r["reply"] for r in rows],
        systems=[r["system"] for r in rows],
        questions_text=[r["question"] for r in rows],
    )


def save_tensors(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))


def load_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    return load_file(str(path)), json.loads(path.with_suffix(".json").read_text())


def generate_with_activations(
    lm: Any,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    seed: int,
    batch_size: int = 32,
) -> tuple[list[str], list[list[int]], Tensor]:
    """Sampled replies (temperature 0.7, top-p 0.9, as the build) with their response
    activations at every layer, pooled in the generation pass; batch ``k`` uses ``seed + k``.
    Empty replies get a NaN activation."""
    from persona_axis.inference.generation import Sampling, generate_replies

    layers = list(range(lm.shape.n_layers))
    texts: list[str] = []
    tokens: list[list[int]] = []
    acts: list[Tensor] = []
    for k, first in enumerate(range(0, len(conversations), batch_size)):
        sampling = Sampling(max_new_tokens, temperature=0.7, top_p=0.9, seed=seed + k)
        batch = conversations[first : first + batch_size]
        for reply in generate_replies(lm, batch, sampling, pool_layers=layers):
            texts.append(reply.text)
            tokens.append(reply.token_ids)
            acts.append(
                reply.activations
                if reply.activations is not None
                else torch.full((lm.shape.n_layers, lm.shape.hidden_size), float("nan"))
            )
        print(f"generated {len(texts)}/{len(conversations)}", file=sys.stderr, flush=True)
    return texts, tokens, torch.stack(acts)
