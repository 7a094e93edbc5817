"""Each evaluation end to end, as ``persona-axis eval`` and ``persona-axis sweep`` run it.

One function per command: conditions from the bundle (``none`` first, then each cap; default
the recommended one), the run, and its record (the figures plus the model, bundle, settings and,
when no model was named, the small-model note) written as JSON, with a plot where there is one,
into the folder ``out``. The CLI loads the bundle and its checked model, calls one of these and
prints what it returns, so calling them from Python gives the same files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis import files
from persona_axis.evals.common import cap_conditions, result_meta, steer_condition

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.evals.sweep import SweepRun
    from persona_axis.judges.harm import HarmJudge
    from persona_axis.models.loading import LoadedModel


@dataclass(frozen=True)
class EvalRun:
    """What an evaluation wrote: ``record`` (the JSON file's content), its ``path``, and the
    ``plot`` (None when the evaluation draws none)."""

    record: dict[str, Any]
    path: Path
    plot: Path | None = None


@dataclass(frozen=True)
class SweepEvalRun(EvalRun):
    """A sweep's :class:`EvalRun` plus the :class:`~persona_axis.evals.sweep.SweepRun` and
    where the recommendation was written (None: nothing lowered harm, or ``write`` was off)."""

    run: SweepRun | None = None
    written: Path | None = None


def jailbreak_eval(
    lm: LoadedModel,
    bundle: AxisBundle,
    judge: HarmJudge,
    out: Path,
    *,
    bundle_path: str | Path,
    model: str | None = None,
    caps: Sequence[str] | None = None,
    n: int = 48,
    behaviours: Path | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> EvalRun:
    """Harmful-answer rate on ``n`` persona-jailbreak prompts (``behaviours`` file, default
    HarmBench) without and with ``caps``, judged by ``judge``: ``jailbreak.json`` and
    ``jailbreak.png`` in ``out``. ``model`` is the model the user named (None: the bundle's)."""
    from persona_axis.evals.jailbreak import (
        load_behaviours,
        plot_jailbreak,
        run_jailbreak,
        sample_prompts,
    )
    from persona_axis.inference.generation import Sampling

    prompts = sample_prompts(n, seed=seed, behaviours=load_behaviours(behaviours))
    conditions = cap_conditions(bundle, caps)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    result = run_jailbreak(
        lm, conditions, prompts, judge, sampling, batch_size=batch_size, progress=progress
    )
    meta = result_meta(lm, bundle_path, model, n=n, seed=seed, max_new_tokens=max_new_tokens,
                       temperature=temperature, batch_size=batch_size)  # fmt: skip
    record = {"eval": "jailbreak", **meta, **result}
    path = files.write_json(out / "jailbreak.json", record)
    plot = plot_jailbreak(result, out / "jailbreak.png", title=f"{lm.name}: persona jailbreaks")
    return EvalRun(record, path, plot)


def capability_eval(
    lm: LoadedModel,
    bundle: AxisBundle,
    out: Path,
    *,
    bundle_path: str | Path,
    model: str | None = None,
    caps: Sequence[str] | None = None,
    n: int = 24,
    max_new_tokens: int = 40,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> EvalRun:
    """Accuracy on ``n`` quick offline probes per family without and with ``caps``:
    ``capability.json`` in ``out``."""
    from persona_axis.evals.capability import make_probes, run_capability
    from persona_axis.inference.generation import Sampling

    conditions = cap_conditions(bundle, caps)
    probes = make_probes(n, seed=seed)
    sampling = Sampling(max_new_tokens=max_new_tokens, seed=seed)
    result = run_capability(
        lm, conditions, probes, sampling, batch_size=batch_size, progress=progress
    )
    meta = result_meta(lm, bundle_path, model, n_per_family=n, seed=seed,
                       max_new_tokens=max_new_tokens)  # fmt: skip
    record = {"eval": "capability", **meta, **result}
    return EvalRun(record, files.write_json(out / "capability.json", record))


def lm_eval_capability(
    bundle_path: str | Path,
    tasks: Sequence[str],
    out: Path,
    *,
    caps: Sequence[str] | None = None,
    model: str | None = None,
    dtype: str = "auto",
    include_path: Path | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    batch_size: int = 8,
    allow_mismatch: bool = False,
) -> EvalRun:
    """lm-evaluation-harness ``tasks`` once with no cap and once per cap (default: the
    recommended one), each run loading the model through our adapter: ``capability_lm_eval.json``
    in ``out`` (``runs[condition]`` = lm-eval's ``results`` and ``n_samples``). ``limit`` of 1 or
    more is a count of examples per task, below 1 a fraction."""
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.evals.lm_eval_adapter import evaluate_tasks
    from persona_axis.models.loading import model_for_bundle

    pretrained = model_for_bundle(model, AxisBundle.load(bundle_path).model_id) or "default"
    runs: dict[str, Any] = {}
    for name in ["none", *(caps or ["recommended"])]:
        args = {
            "pretrained": pretrained,
            "bundle": str(bundle_path),
            "cap": name,
            "dtype": dtype,
            "allow_mismatch": allow_mismatch,
        }
        results = evaluate_tasks(
            list(tasks),
            model_args=args,
            include_path=include_path,
            limit=int(limit) if limit is not None and limit >= 1 else limit,
            batch_size=batch_size,
            num_fewshot=num_fewshot,
            apply_chat_template=apply_chat_template,
        )
        runs[name] = {"results": results.get("results", {}), "n_samples": results.get("n-samples")}
    record = {"eval": "lm-eval", "runs": runs}
    return EvalRun(record, files.write_json(out / "capability_lm_eval.json", record))


def susceptibility_eval(
    lm: LoadedModel,
    bundle: AxisBundle,
    out: Path,
    *,
    bundle_path: str | Path,
    model: str | None = None,
    judge: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    caps: Sequence[str] | None = None,
    steer: Sequence[float] = (),
    roles: int = 8,
    questions: int = 3,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> EvalRun:
    """In-role rate under ``roles`` × ``questions`` role prompts without and with ``caps`` and
    steering by each multiple in ``steer``, beside how much each changes plain Assistant
    replies (greedy), and the cap :func:`~persona_axis.evals.susceptibility.pick_cap` picks:
    ``susceptibility.json`` in ``out`` (keys ``plain_assistant``, ``picked_cap``,
    ``picked_because`` besides the run's). ``judge`` holds the role judge's settings (None:
    the offline heuristic); ``model_name`` fills ``{model_name}`` (default: the bundle's)."""
    from persona_axis.catalog import load_catalog
    from persona_axis.evals.susceptibility import compare_conditions, sample_items
    from persona_axis.inference.generation import Sampling
    from persona_axis.judges import role_judge

    name = model_name or str(bundle.manifest.get("model_name") or lm.name)
    judge_used = role_judge(judge or {"backend": "heuristic"}, name)
    conditions = cap_conditions(bundle, caps)
    conditions += [steer_condition(lm, bundle, m) for m in steer]
    items = sample_items(
        load_catalog(), n_roles=roles, n_questions=questions, seed=seed, model_name=name
    )
    sampling = Sampling(max_new_tokens=max_new_tokens, seed=seed)
    table = compare_conditions(
        lm, conditions, items, judge_used, sampling, batch_size=batch_size, progress=progress
    )
    meta = result_meta(lm, bundle_path, model, roles=roles, questions=questions, seed=seed,
                       max_new_tokens=max_new_tokens)  # fmt: skip
    record = {
        "eval": "susceptibility",
        **meta,
        **table.result,
        "plain_assistant": table.plain,
        "picked_cap": table.picked,
        "picked_because": table.why,
    }
    return EvalRun(record, files.write_json(out / "susceptibility.json", record))


def sweep_eval(
    lm: LoadedModel,
    bundle: AxisBundle,
    judge: HarmJudge,
    out: Path,
    *,
    bundle_path: Path,
    model: str | None = None,
    write: bool = True,
    **options: Any,
) -> SweepEvalRun:
    """The Pareto sweep (:func:`~persona_axis.evals.sweep.run_sweep`, which takes ``options``:
    ``settings``, ``percentiles``, ``n``, ``n_capability``, ``max_capability_loss``,
    ``max_new_tokens``, ``batch_size``, ``seed``, ``progress``): ``sweep.json``,
    ``sweep_details.json`` and ``sweep.png`` in ``out``; with ``write``, the recommended
    setting and its evidence are saved into the bundle at ``bundle_path``."""
    from persona_axis.evals.sweep import plot_sweep, run_sweep, write_recommendation

    run = run_sweep(lm, bundle, judge, **options)
    record = {**run.summary, **result_meta(lm, bundle_path, model, **run.summary["settings"])}
    path = files.write_json(out / "sweep.json", record)
    files.write_json(
        out / "sweep_details.json", {"jailbreak": run.harm, "capability": run.capability}
    )
    chosen = None if run.chosen is None else run.chosen.name
    plot = plot_sweep(run.points, out / "sweep.png", chosen=chosen,
                      title=f"{lm.name}: cap sweep (judge {run.harm['judge']})")  # fmt: skip
    written = None
    if chosen is not None and write:
        written = write_recommendation(bundle, bundle_path, chosen, run.evidence(path))
    return SweepEvalRun(record, path, plot, run=run, written=written)
