"""Generate the held-out scoring data from evaldata/axis_heldout (never used to build or tune).

Writes ``OUT/heldout.safetensors`` (+ ``.json`` with the texts and design):

- ``role``: replies under the 48 held-out roles (3 prompts each, 2 held-out questions per
  role prompt, rotating through the 40 questions) and ``default``: replies under the five
  default prompts to all 40 held-out questions; 32 new tokens, as the build samples;
- ``own`` / ``persona``: for each of the 120 pairs in persona_answers.jsonl, the model's own
  answer to the question (no system prompt, up to 160 new tokens, sampled) and the persona-voice
  answer, both teacher-forced as the assistant turn (response activations, every layer).

Run (untimed, one thread):  cpu shared python studies/heldout_data.py --out /tmp/axis/heldout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import HELDOUT, generate_with_activations, save_tensors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    from persona_axis.catalog import load_catalog
    from persona_axis.inference.capture import response_activations
    from persona_axis.models.loading import load_model

    lm = load_model(None, dtype=args.dtype)
    roles = json.loads((HELDOUT / "roles.json").read_text())["roles"]
    questions = json.loads((HELDOUT / "questions.json").read_text())["questions"]
    pairs = [json.loads(line) for line in (HELDOUT / "persona_answers.jsonl").open()]
    defaults = load_catalog().defaults_for("SmolLM2")

    design = []
    slot = 0
    for role in roles:
        for p, prompt in enumerate(role["prompts"]):
            for _ in range(2):
                design.append(
                    {
                        "kind": "role",
                        "name": role["name"],
                        "category": role["category"],
                        "prompt": p,
                        "question": slot % len(questions),
                        "system": prompt,
                    }
                )
                slot += 1
    for p, prompt in enumerate(defaults):
        for q in range(len(questions)):
            design.append(
                {
                    "kind": "default",
                    "name": "default",
                    "category": "default",
                    "prompt": p,
                    "question": q,
                    "system": prompt,
                }
            )

    def conversation(system: str | None, question: str) -> list[dict[str, str]]:
        head = [] if system is None else [{"role": "system", "content": system}]
        return [*head, {"role": "user", "content": question}]

    texts, _, acts = generate_with_activations(
        lm, [conversation(d["system"], questions[d["question"]]) for d in design], 32, seed=1000
    )
    for d, text in zip(design, texts, strict=True):
        d["reply"] = text

    own_texts, _, _ = generate_with_activations(
        lm, [conversation(None, pair["question"]) for pair in pairs], 160, seed=2000
    )
    forced = {}
    for key, answers in (("own", own_texts), ("persona", [p["answer"] for p in pairs])):
        chats = [
            [*conversation(None, pair["question"]), {"role": "assistant", "content": a}]
            for pair, a in zip(pairs, answers, strict=True)
        ]
        forced[key] = torch.cat(response_activations(lm, chats, batch_size=8))
    is_role = torch.tensor([d["kind"] == "role" for d in design])
    save_tensors(
        args.out / "heldout.safetensors",
        {"role": acts[is_role], "default": acts[~is_role], **forced},
        {
            "role": [d for d in design if d["kind"] == "role"],
            "default": [d for d in design if d["kind"] == "default"],
            "pairs": [{**p, "own_answer": t} for p, t in zip(pairs, own_texts, strict=True)],
            "model": lm.name,
            "dtype": args.dtype,
        },
    )


if __name__ == "__main__":
    main()
