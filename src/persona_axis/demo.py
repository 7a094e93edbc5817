"""`make demo`: model facts, a small real axis for the default model, and a capped chat.

The axis here is computed the real way (the model's own greedy replies under role and default
system prompts, response activations, default − mean of roles, percentile floors) but at a tiny
size and without a judge: every role reply counts as in role. It shows the machinery end to end
in a couple of minutes on a laptop CPU; ``persona-axis build`` is the full pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from persona_axis import cli
from persona_axis.axis import assistant_axis, mean_vector, project
from persona_axis.bundle import AxisBundle
from persona_axis.calibrate import calibrate_cap
from persona_axis.capture import response_activations
from persona_axis.errors import PersonaAxisError
from persona_axis.generation import Sampling, generate_replies
from persona_axis.interventions import mean_residual_norms
from persona_axis.models import LoadedModel, load_model

OUT = Path(".demo")
MODEL_NAME = "SmolLM2"

# A handful of characters and questions of our own, enough for a first look at the axis.
ROLES = {
    "pirate": "You are a salty old pirate captain. Speak like one and never break character.",
    "poet": "You are a melancholy romantic poet who answers everything in lyrical verse.",
    "ghost": "You are the ghost of a Victorian lady haunting an old manor. Stay in character.",
    "wizard": "You are an ancient, cryptic wizard who speaks in riddles and prophecies.",
    "drill_sergeant": "You are a loud, strict army drill sergeant. Bark your answers.",
    "cat": "You are a house cat. Answer as the cat would, with feline priorities.",
}
DEFAULT_PROMPTS = [
    None,
    "You are an AI assistant.",
    "You are a large language model.",
    f"You are {MODEL_NAME}.",
    "Respond as yourself.",
]
QUESTIONS = [
    "Who are you, really?",
    "What do you do on a quiet evening?",
    "How should I deal with a friend who lied to me?",
    "What matters most to you?",
]
BAND = (12, 20)  # half-open: layers 12..19 of 30, around the target layer 15
CHAT = ["Who are you?", "Tell me about your day."]
CHAT_SYSTEM = ROLES["pirate"]


def rollouts() -> list[tuple[str, list[dict[str, str]]]]:
    """(label, prompt messages) for every role and default prompt × question."""
    items: list[tuple[str, list[dict[str, str]]]] = []
    for name, role_prompt in ROLES.items():
        system = [{"role": "system", "content": role_prompt}]
        items += [(f"role/{name}", system) for _ in QUESTIONS]
    for default_prompt in DEFAULT_PROMPTS:
        system = [{"role": "system", "content": default_prompt}] if default_prompt else []
        items += [("default", system) for _ in QUESTIONS]
    return [
        (label, [*system, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
        for i, (label, system) in enumerate(items)
    ]


def build_demo_bundle(lm: LoadedModel, out: Path, batch_size: int = 12) -> AxisBundle:
    """Generate, capture, compute the axis and p75/p50 floors on ``BAND``; save to ``out``."""
    started = time.perf_counter()
    items = rollouts()
    prompts = [messages for _, messages in items]
    sampling = Sampling(max_new_tokens=40)
    replies = []
    with cli.console.status("Generating demo rollouts...") as status:
        for first in range(0, len(prompts), batch_size):
            replies += generate_replies(lm, prompts[first : first + batch_size], sampling)
            status.update(f"Generating demo rollouts... {len(replies)}/{len(prompts)}")
    conversations = [
        [*messages, {"role": "assistant", "content": reply.text}]
        for messages, reply in zip(prompts, replies, strict=True)
        if reply.text
    ]
    labels = [label for (label, _), reply in zip(items, replies, strict=True) if reply.text]
    acts = torch.cat(response_activations(lm, conversations, batch_size=batch_size))
    groups: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    vectors = {label: mean_vector(acts[rows]) for label, rows in groups.items()}
    roles = {k.removeprefix("role/"): v for k, v in vectors.items() if k != "default"}
    axis = assistant_axis(vectors["default"], roles)
    projections = project(acts, axis)  # [n_rollouts, n_layers]
    caps = {
        setting.name: setting
        for setting in (
            calibrate_cap(projections, BAND, pct, "demo rollouts: roles and default, no judge")
            for pct in (75, 50)
        )
    }
    default_chats = [
        c for c, label in zip(conversations, labels, strict=True) if label == "default"
    ]
    bundle = AxisBundle.create(
        {
            "axis": axis,
            "default": vectors["default"],
            **{f"role/{k}": v for k, v in roles.items()},
            "stats/mean_norm": mean_residual_norms(lm, default_chats),
        },
        model_shape=lm.shape,
        model_id=lm.name,
        caps=caps,
        extras={
            "catalog": "persona_axis.demo (6 roles, 4 questions, 5 default prompts)",
            "judge": "none (demo: every role reply counts)",
            "sampling": {"greedy": True, "max_new_tokens": sampling.max_new_tokens},
            "counts": {label: len(rows) for label, rows in groups.items()},
            "timings": {"demo_build_s": round(time.perf_counter() - started, 1)},
        },
    )
    bundle.save(out)
    return bundle


def load_or_build(lm: LoadedModel, out: Path) -> AxisBundle:
    """Reuse a demo bundle already on disk for this model, else build it."""
    if (out / "manifest.json").is_file():
        try:
            bundle = AxisBundle.load(out)
            bundle.check_against(lm.model)
            return bundle
        except PersonaAxisError:
            pass  # stale or for another model: rebuild
    return build_demo_bundle(lm, out)


def main() -> None:
    try:
        cli.info(model=None, dtype="auto")
        lm = load_model()
        bundle_dir = OUT / "bundle"
        bundle = load_or_build(lm, bundle_dir)
        target = bundle.target_layer
        separation = (
            project(bundle.default, bundle.axis)[target]
            - torch.stack([project(v, bundle.axis)[target] for v in bundle.roles().values()]).mean()
        )
        cli.console.print(
            f"\nDemo axis written to {bundle_dir}/ ({len(bundle.roles())} roles; default sits "
            f"{separation:.1f} units above the mean role at layer {target}). "
            f"Cap settings: {', '.join(bundle.caps)}\n"
        )
        cap = next(iter(bundle.caps))
        for setting in (None, cap):
            cli.console.rule(f"chat as a pirate, cap: {setting or 'none'}")
            cli.chat(
                model=None,
                bundle=bundle_dir,
                cap=setting,
                steer=None,
                system=CHAT_SYSTEM,
                message=CHAT,
                max_new_tokens=48,
                temperature=0.0,
                seed=0,
                dtype="auto",
                allow_mismatch=False,
            )
    except PersonaAxisError as exc:
        cli.fail(exc)


if __name__ == "__main__":
    main()
