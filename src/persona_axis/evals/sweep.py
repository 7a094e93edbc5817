"""The Pareto sweep over cap settings: harm change vs summed capability change.

Each cap setting of a bundle (layer windows × percentiles, named ``layers_A:B-pP``) is scored by

- ``harm_change``: harmful rate under the cap − harmful rate without (fractions; negative is
  better), from :mod:`persona_axis.evals.jailbreak`;
- ``capability_change``: Σ over probe families of (accuracy under the cap − accuracy without)
  (fractions; zero or positive is better), from :mod:`persona_axis.evals.capability`.

A setting is on the Pareto frontier when no other setting has lower-or-equal harm change and
higher-or-equal capability change with one of them strict. The recommendation is the frontier
setting with the largest harm reduction among those losing at most ``max_capability_loss``
(else the frontier setting losing least); it is written into the bundle as
``manifest["recommended_cap"]`` with the evidence in the setting's ``notes["evidence"]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.judges.harm import HarmJudge
    from persona_axis.models.loading import LoadedModel


@dataclass(frozen=True)
class SweepPoint:
    """One setting's effect: ``harm_change`` (lower is better), ``capability_change`` (higher
    is better), both differences of fractions against no intervention."""

    name: str
    harm_change: float
    capability_change: float


def dominates(a: SweepPoint, b: SweepPoint) -> bool:
    """``a`` is at least as good as ``b`` on both axes and strictly better on one."""
    no_worse = a.harm_change <= b.harm_change and a.capability_change >= b.capability_change
    better = a.harm_change < b.harm_change or a.capability_change > b.capability_change
    return no_worse and better


def pareto_front(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """The non-dominated points, ordered by harm change (most harm reduction first).

    Duplicate points (equal on both axes) are all kept; ties keep input order.
    """
    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.harm_change, -p.capability_change))


def choose_setting(
    points: Sequence[SweepPoint], *, max_capability_loss: float = 0.1
) -> SweepPoint | None:
    """The frontier point with the lowest harm change whose capability change is at least
    ``-max_capability_loss``; else the frontier point with the highest capability change.

    Returns None when no setting reduces harm (harm change < 0): capping buys nothing there.
    """
    if max_capability_loss < 0:
        raise PersonaAxisError("max_capability_loss must be 0 or more (a fraction, summed).")
    front = [p for p in pareto_front(points) if p.harm_change < 0]
    if not front:
        return None
    affordable = [p for p in front if p.capability_change >= -max_capability_loss]
    if affordable:
        return affordable[0]
    return max(front, key=lambda p: (p.capability_change, -p.harm_change))


def sweep_points(harm: Mapping[str, Any], capability: Mapping[str, Any]) -> list[SweepPoint]:
    """Points from :func:`run_jailbreak` and :func:`run_capability` results (baseline first)."""
    names = [n for n in harm["harmful_rate_change"]][1:]
    points = []
    for name in names:
        change = harm["harmful_rate_change"][name]
        if change is None:
            continue
        points.append(SweepPoint(name, change, capability["summed_change"][name]))
    return points


def sweep_table(points: Sequence[SweepPoint], harm: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for printing and JSON: name, harmful rate and CI, the two changes, frontier flag."""
    front = {p.name for p in pareto_front(points)}
    rows = []
    for p in sorted(points, key=lambda q: (q.harm_change, -q.capability_change)):
        harmful = harm["conditions"][p.name]["harmful"]
        rows.append(
            {
                "setting": p.name,
                "harmful_rate": harmful["rate"],
                "harmful_ci95": harmful["ci95"],
                "harm_change": p.harm_change,
                "capability_change": p.capability_change,
                "pareto": p.name in front,
            }
        )
    return rows


def write_recommendation(
    bundle: AxisBundle, path: str | Path, chosen: str, evidence: Mapping[str, Any]
) -> Path:
    """Set ``manifest["recommended_cap"] = chosen``, store ``evidence`` in that setting's
    ``notes["evidence"]`` (with the previous recommendation and a UTC time), save the bundle."""
    setting = bundle.cap(chosen)
    notes = dict(setting.notes)
    notes["evidence"] = {
        **evidence,
        "previous_recommended_cap": bundle.manifest.get("recommended_cap"),
        "written_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    bundle.add_cap(dataclasses.replace(setting, notes=notes), replace=True)
    bundle.manifest["recommended_cap"] = chosen
    return bundle.save(path)


def plot_sweep(
    points: Sequence[SweepPoint], path: str | Path, *, chosen: str | None = None, title: str = ""
) -> Path:
    """Scatter of harm change (y) vs summed capability change (x), frontier joined, chosen
    setting starred."""
    from persona_axis.report.plots import new_figure, save_png

    fig = new_figure(7, 5)
    ax = fig.subplots()
    ax.axhline(0, color="#999999", lw=0.8)
    ax.axvline(0, color="#999999", lw=0.8)
    ax.scatter([p.capability_change for p in points], [p.harm_change for p in points], c="#557")
    for p in points:
        ax.annotate(p.name, (p.capability_change, p.harm_change), fontsize=6, alpha=0.8)
    front = sorted(pareto_front(points), key=lambda p: p.capability_change)
    if front:
        ax.plot(
            [p.capability_change for p in front],
            [p.harm_change for p in front],
            "r--",
            lw=1,
            label="Pareto frontier",
        )
    for p in points:
        if p.name == chosen:
            ax.scatter([p.capability_change], [p.harm_change], marker="*", s=250, c="gold",
                       edgecolors="k", label=f"recommended: {p.name}", zorder=5)  # fmt: skip
    ax.set_xlabel("summed capability change (fractions; right is better)")
    ax.set_ylabel("harmful-rate change (fraction; down is better)")
    ax.set_title(title or "Cap settings: harm vs capability", fontsize=9)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def select_settings(
    bundle: AxisBundle, names: Sequence[str] | None = None, percentiles: Sequence[float] = ()
) -> list[str]:
    """The settings to sweep: ``names`` if given (checked), else all of the bundle's caps,
    optionally only those whose percentile is in ``percentiles``."""
    if names:
        for name in names:
            bundle.cap(name)
        return list(names)
    chosen = sorted(bundle.caps)
    if percentiles:
        wanted = {float(p) for p in percentiles}
        chosen = [n for n in chosen if bundle.caps[n].percentile in wanted]
    if not chosen:
        raise PersonaAxisError(
            "No cap settings to sweep: the bundle has none matching; calibrate caps with "
            f"persona-axis build, or pick from {sorted(bundle.caps) or 'none'}."
        )
    return chosen


@dataclass
class SweepRun:
    """What :func:`run_sweep` measured: ``summary`` (the ``sweep.json`` content), the full
    jailbreak and capability results, every point and the chosen one (None when no setting
    lowered the harmful rate)."""

    summary: dict[str, Any]
    harm: dict[str, Any]
    capability: dict[str, Any]
    points: list[SweepPoint]
    chosen: SweepPoint | None

    def evidence(self, results_file: Path) -> dict[str, Any]:
        """The evidence stored with the recommendation in the bundle."""
        assert self.chosen is not None
        settings = self.summary["settings"]
        return {
            "source": "persona-axis sweep",
            "judge": self.harm["judge"],
            "model": self.summary["model"],
            "n_jailbreak_prompts": settings["n"],
            "n_probes_per_family": settings["n_capability"],
            "seed": settings["seed"],
            "harmful_rate_without": self.summary["baseline"]["harmful"],
            "harmful_rate_with": self.harm["conditions"][self.chosen.name]["harmful"],
            "harm_change": self.chosen.harm_change,
            "capability_summed_change": self.chosen.capability_change,
            "capability_with": self.capability["conditions"][self.chosen.name],
            "max_capability_loss": settings["max_capability_loss"],
            "settings_swept": [p.name for p in self.points],
            "results_file": str(results_file.resolve()),
        }


def run_sweep(
    lm: LoadedModel,
    bundle: AxisBundle,
    judge: HarmJudge,
    *,
    settings: Sequence[str] | None = None,
    percentiles: Sequence[float] = (),
    n: int = 32,
    n_capability: int = 12,
    max_capability_loss: float = 0.1,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> SweepRun:
    """Score cap settings (all, or ``settings`` / ``percentiles``) on ``n`` persona jailbreaks
    (judged by ``judge``) and ``n_capability`` probes per family, find the Pareto frontier and
    choose the recommendation (module docstring). Nothing is written."""
    from persona_axis.evals.capability import make_probes, run_capability
    from persona_axis.evals.common import Condition, cap_condition
    from persona_axis.evals.jailbreak import run_jailbreak, sample_prompts
    from persona_axis.inference.generation import Sampling

    names = select_settings(bundle, settings, percentiles)
    conditions = [Condition("none"), *(cap_condition(bundle, name) for name in names)]
    harm = run_jailbreak(
        lm, conditions, sample_prompts(n, seed=seed), judge,
        Sampling(max_new_tokens=max_new_tokens, seed=seed), batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    capability = run_capability(
        lm, conditions, make_probes(n_capability, seed=seed),
        Sampling(max_new_tokens=40, seed=seed), batch_size=batch_size, progress=progress,
    )  # fmt: skip
    points = sweep_points(harm, capability)
    chosen = choose_setting(points, max_capability_loss=max_capability_loss)
    summary: dict[str, Any] = {
        "eval": "sweep",
        "model": lm.name,
        "settings": {
            "n": n,
            "n_capability": n_capability,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "max_capability_loss": max_capability_loss,
        },
        "judge": harm["judge"],
        "baseline": {
            "harmful": harm["conditions"]["none"]["harmful"],
            "capability": capability["conditions"]["none"],
        },
        "table": sweep_table(points, harm),
        "points": [dataclasses.asdict(p) for p in points],
        "recommended": None if chosen is None else chosen.name,
    }
    if "judge_note" in harm:
        summary["judge_note"] = harm["judge_note"]
    return SweepRun(summary, harm, capability, points, chosen)
