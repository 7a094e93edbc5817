"""`persona-axis build`: generate → judge → vectors → axis → space → calibrate → AxisBundle.

Each stage reads what the previous ones stored in the :class:`~persona_axis.pipeline.store.
BuildStore`, so the command can be killed at any moment and rerun: finished batches are kept,
the rest is redone with the same seeds, and the bundle equals an uninterrupted run's.

Generation pools every reply's response activation (all layers, float32) and its mean token
norm in the generation pass itself; nothing runs a second forward over the rollouts except the
per-token percentile sample (projections of single tokens cannot be recovered from means).

This module runs the stages in order; :mod:`~persona_axis.pipeline.aggregate` sums the store
into vectors and quality metrics, :mod:`~persona_axis.pipeline.calibration` calibrates caps and
percentile tables, :mod:`~persona_axis.pipeline.describe` describes persona space and
summarises the bundle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor
from tqdm.auto import tqdm

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.calibrate import default_recommendation
from persona_axis.axis.quality_cells import n_blocks_for
from persona_axis.axis.vectors import (
    assistant_axis,
    check_layer,
)
from persona_axis.catalog import Catalog, load_catalog
from persona_axis.errors import PersonaAxisError
from persona_axis.judges import role_judge
from persona_axis.judges.role import JudgeItem, RoleJudge
from persona_axis.models.dtypes import DtypeChoice
from persona_axis.models.fingerprint import try_weight_fingerprint
from persona_axis.models.loading import DEFAULT_MODEL, LoadedModel, load_model
from persona_axis.pipeline.aggregate import (
    Groups,
    InRole,
    accumulate,
    make_vectors,
    prefixed,
    quality_stage,
)
from persona_axis.pipeline.calibration import calibrate
from persona_axis.pipeline.config import BuildConfig
from persona_axis.pipeline.describe import describe_space, rankings, summarize
from persona_axis.pipeline.monitor_sample import SAMPLE_KEY, default_reply_sample
from persona_axis.pipeline.plan import RolloutSpec, make_batches, make_plan
from persona_axis.pipeline.rollouts import generate_batch
from persona_axis.pipeline.store import HEADER, BuildStore, read_json

if TYPE_CHECKING:
    from persona_axis.pipeline.sharding import ShardReport, WorkerInfo

STORE_FORMAT = 1


@dataclass
class BuildResult:
    """The saved bundle, where it is, and the figures a person wants to see first."""

    bundle: AxisBundle
    path: Path
    timings: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)
    generation: ShardReport | None = None
    """What the Ray workers did when generation was sharded (``config.workers``); else None."""


def model_display_name(lm: LoadedModel, configured: str | None) -> str:
    """The name filled into ``{model_name}``: configured, else the model id's last part."""
    if configured:
        return configured
    if lm.name == DEFAULT_MODEL:
        return "SmolLM2"
    return Path(lm.name.rstrip("/")).name


def build(
    config: BuildConfig,
    out: str | Path,
    *,
    lm: LoadedModel | None = None,
    judge: RoleJudge | None = None,
    on_batch: Callable[[int, WorkerInfo], None] | None = None,
    finish: Callable[[LoadedModel, AxisBundle], None] | None = None,
) -> BuildResult:
    """Run (or resume) every stage and save the bundle to ``<out>/bundle``.

    With ``config.workers`` > 1 or a ``config.ray_address``, generation is sharded over Ray
    actors (:mod:`~persona_axis.pipeline.sharding`; ``on_batch`` is its per-batch callback);
    the other stages run here. ``finish`` runs with the model on the finished bundle before it
    is saved (``persona_axis.build`` stores the drift monitor's shipped benign profile with
    it, :func:`persona_axis.drift.reference_chats.build`)."""
    timings: dict[str, float] = {}
    dtype = config.dtype_choice()  # "auto" resolved once: stored, and the same on every worker
    with _timed(timings, "load"):
        lm = lm or load_model(
            None if config.model == "default" else config.model, dtype=dtype.dtype
        )
        catalog = _catalog(config)
    dtype = model_dtype(lm, dtype)
    config = replace(config, dtype=dtype.dtype)
    if config.target_layer is not None:
        check_layer(config.target_layer, lm.shape.n_layers)
    name = model_display_name(lm, config.model_name)
    plan = make_plan(catalog, name, config.trait_questions)
    batches = make_batches(plan, config.batch_size)
    header = {
        "store_format": STORE_FORMAT,
        "settings": config.result_fields(),
        "catalog_sha256": catalog.digest(),
        "model": {"id": lm.name, "name": name, **lm.shape.__dict__},
        "rollouts": len(plan),
        "batches": len(batches),
    }
    store = BuildStore.open(out, header)
    with _timed(timings, "generate"):
        report = generate_stage(lm, store, batches, config, header=header, on_batch=on_batch)
    judge = judge or role_judge(config.judge, name)
    with _timed(timings, "judge"):
        judge_stage(store, batches, catalog, judge, config.progress)
    analysis = analyse(
        store, len(batches), catalog, config, judged=judge.name != "none", timings=timings
    )
    vectors, counts, axis, quality, groups = (
        analysis.vectors,
        analysis.counts,
        analysis.axis,
        analysis.quality,
        analysis.groups,
    )
    target = quality["target_layer"]["layer"]
    with _timed(timings, "space"):
        space = describe_space(vectors, axis, target)
    with _timed(timings, "calibrate"):
        caps, percentiles = calibrate(lm, store, batches, axis, config)
    bundle = AxisBundle.create(
        {
            "axis": axis,
            **vectors,
            "stats/mean_norm": groups.mean_norm(),
            "space/components": space.pop("components"),
            "space/mean": space.pop("mean"),
        },
        model_shape=lm.shape,
        model_id=lm.name,
        fingerprint=try_weight_fingerprint(lm.model),
        target_layer=target,
        caps=caps,
        extras={
            "model_name": name,
            "catalog": catalog.summary(),
            "sampling": {
                "temperature": config.temperature,
                "top_p": config.top_p,
                "max_new_tokens": config.max_new_tokens,
                "seed": config.seed,
                "batch_size": config.batch_size,
                "thinking": "off",
            },
            "judge": {"name": judge.name, "config": config.judge},
            "dtype": dtype.to_json(),
            "build_settings": config.result_fields(),
            "counts": counts,
            "space": space,
            "rankings": rankings(vectors, axis, target),
            "quality": quality,
            "projection_percentiles": percentiles,
            SAMPLE_KEY: default_reply_sample(store, len(batches), axis, target),
            "recommended_cap": default_recommendation(list(caps.values()), lm.shape.n_layers),
            "timings": {k: round(v, 2) for k, v in timings.items()},
        },
    )
    if finish is not None:
        with _timed(timings, "finish"):
            finish(lm, bundle)
        bundle.manifest["timings"] = {k: round(v, 2) for k, v in timings.items()}
    path = bundle.save(Path(out) / "bundle")
    return BuildResult(
        bundle=bundle, path=path, timings=timings, summary=summarize(bundle), generation=report
    )


def model_dtype(lm: LoadedModel, choice: DtypeChoice) -> DtypeChoice:
    """The dtype the model runs in, as the build stores and records it: ``choice``, unless the
    caller handed :func:`build` a model loaded in another dtype, which is then what counts."""
    actual = lm.dtype_name
    if actual == choice.dtype:
        return choice
    return DtypeChoice(actual, choice.requested, f"the model given to build() is {actual}")


@dataclass
class Analysis:
    """What the build derives from a finished store before the cap calibration."""

    groups: Groups
    vectors: dict[str, Tensor]
    counts: dict[str, Any]
    axis: Tensor
    quality: dict[str, Any]


def analyse(
    store: BuildStore,
    n_batches: int,
    catalog: Catalog,
    config: BuildConfig,
    *,
    judged: bool,
    timings: dict[str, float] | None = None,
) -> Analysis:
    """Vectors, axis and quality metrics from a store whose batches are all generated and
    judged: the part of the build that ``persona-axis validate`` repeats."""
    timings = {} if timings is None else timings
    n_blocks = n_blocks_for(len(catalog.questions))
    with _timed(timings, "vectors"):
        groups = accumulate(
            store,
            n_batches,
            config.progress,
            in_role=InRole(config.role_scores, judged),
            n_blocks=n_blocks,
        )
        vectors, counts = make_vectors(
            groups, config.min_role_rollouts, config.role_scores, judged=judged
        )
        axis = assistant_axis(vectors["default"], prefixed(vectors, "role/"))
    with _timed(timings, "quality"):
        quality = quality_stage(
            store, n_batches, groups, vectors, config, judged=judged, n_blocks=n_blocks
        )
    return Analysis(groups, vectors, counts, axis, quality)


def assess_build(out: str | Path) -> dict[str, Any]:
    """Recompute the axis quality metrics of a finished build directory from its store (the
    same numbers the build wrote to ``manifest["quality"]``)."""
    store = BuildStore(out)
    header_path = store.root / HEADER
    if not header_path.is_file():
        raise PersonaAxisError(
            f"{Path(out)} is not a build directory (no work/{HEADER}); pass the --out directory "
            "of persona-axis build (a bundle alone holds no rollouts to recompute from)."
        )
    header = read_json(header_path)
    config = BuildConfig.from_result_fields(header["settings"])
    n_batches = int(header["batches"])
    missing = [k for k in range(n_batches) if not (store.has_batch(k) and store.has_judgement(k))]
    if missing:
        raise PersonaAxisError(
            f"The build in {Path(out)} is not finished ({len(missing)} of {n_batches} batches "
            "lack rollouts or judgements); rerun the same persona-axis build command first."
        )
    judged = config.judge.get("backend") != "none"
    manifest_path = Path(out) / "bundle" / "manifest.json"
    if manifest_path.is_file():
        judged = bool(read_json(manifest_path).get("counts", {}).get("judged", judged))
    return analyse(store, n_batches, _catalog(config), config, judged=judged).quality


def generate_stage(
    lm: LoadedModel,
    store: BuildStore,
    batches: list[list[RolloutSpec]],
    config: BuildConfig,
    *,
    header: dict[str, Any] | None = None,
    on_batch: Callable[[int, WorkerInfo], None] | None = None,
) -> ShardReport | None:
    """Generate every batch not yet stored; batch k samples with seed ``config.seed + k``.

    Sharded over Ray actors when ``config.workers`` > 1 or ``config.ray_address`` is set
    (``header`` is the store's header, which each actor checks); else in this process."""
    if config.workers > 1 or config.ray_address is not None:
        from persona_axis.pipeline.sharding import generate_sharded

        if header is None:
            raise PersonaAxisError("Sharded generation needs the build header; call build().")
        return generate_sharded(
            store,
            batches,
            config,
            header,
            fingerprint=try_weight_fingerprint(lm.model),
            on_batch=on_batch,
        )
    todo = [k for k in range(len(batches)) if not store.has_batch(k)]
    done = sum(len(batches[k]) for k in range(len(batches)) if k not in set(todo))
    total = sum(map(len, batches))
    with tqdm(
        total=total, initial=done, desc="generate", unit="rollout", disable=not config.progress
    ) as bar:
        for k in todo:
            generate_batch(lm, store, k, batches[k], config)
            bar.update(len(batches[k]))
    return None


def judge_stage(
    store: BuildStore,
    batches: list[list[RolloutSpec]],
    catalog: Catalog,
    judge: RoleJudge,
    progress: bool,
) -> None:
    """Score every role rollout (0-3) batch by batch; other rollouts are not judged."""
    roles = {role.name: role for role in catalog.roles}
    todo = [k for k in range(len(batches)) if not store.has_judgement(k)]
    with tqdm(
        total=len(batches),
        initial=len(batches) - len(todo),
        desc="judge",
        unit="batch",
        disable=not progress,
    ) as bar:
        for k in todo:
            records, _ = store.read_batch(k)
            chosen = [r for r in records if r["kind"] == "role"]
            items = [
                JudgeItem(
                    role=r["name"],
                    role_description=roles[r["name"]].description,
                    system_prompt=r["system"] or "",
                    question=r["question"],
                    answer=r["reply"],
                )
                for r in chosen
            ]
            results = judge.score(items) if items else []
            store.write_judgement(
                k,
                [
                    {"id": r["id"], "score": res.score, "raw": res.raw, "judge": res.judge}
                    for r, res in zip(chosen, results, strict=True)
                ],
            )
            bar.update(1)


def _catalog(config: BuildConfig) -> Catalog:
    return load_catalog(config.catalog).subset(
        n_roles=config.n_roles,
        prompts_per_role=config.prompts_per_role,
        n_questions=config.n_questions,
        n_traits=config.n_traits,
        pairs_per_trait=config.pairs_per_trait,
    )


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = time.perf_counter() - started
