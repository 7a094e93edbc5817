"""`persona-axis build`: generate → judge → vectors → axis → space → calibrate → AxisBundle.

Each stage reads what the previous ones stored in the :class:`~persona_axis.pipeline.store.
BuildStore`, so the command can be killed at any moment and rerun: finished batches are kept,
the rest is redone with the same seeds, and the bundle equals an uninterrupted run's.

Generation pools every reply's response activation (all layers, float32) and its mean token
norm in the generation pass itself; nothing runs a second forward over the rollouts except the
per-token calibration sample (projections of single tokens cannot be recovered from means).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.calibrate import calibrate_grid, default_recommendation
from persona_axis.axis.quality import (
    AxisCells,
    CellKey,
    assess,
    block_of,
    cell_key,
    n_blocks_for,
    summary_at,
    unavailable,
    warnings_for,
)
from persona_axis.axis.space import axis_pc1_cosine, persona_space
from persona_axis.axis.vectors import (
    ActivationSums,
    SumCount,
    assistant_axis,
    check_layer,
    cosine_by_layer,
    project,
    role_vectors_from_sums,
    trait_vector_from_sums,
    unit,
)
from persona_axis.catalog import Catalog, load_catalog
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.telemetry import record_projections
from persona_axis.judges import role_judge
from persona_axis.judges.role import JudgeItem, RoleJudge
from persona_axis.models.chat import Message
from persona_axis.models.fingerprint import try_weight_fingerprint
from persona_axis.models.loading import DEFAULT_MODEL, LoadedModel, load_model
from persona_axis.pipeline.config import BuildConfig, default_cap_bands
from persona_axis.pipeline.monitor_sample import SAMPLE_KEY, default_reply_sample
from persona_axis.pipeline.plan import RolloutSpec, make_batches, make_plan
from persona_axis.pipeline.rollouts import generate_batch
from persona_axis.pipeline.store import HEADER, BuildStore, read_json, token_lists

if TYPE_CHECKING:
    from persona_axis.pipeline.sharding import ShardReport, WorkerInfo

STORE_FORMAT = 1
SPACE_COMPONENTS = 10  # components kept in the bundle (all explained-variance ratios are kept)


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
) -> BuildResult:
    """Run (or resume) every stage and save the bundle to ``<out>/bundle``.

    With ``config.workers`` > 1 or a ``config.ray_address``, generation is sharded over Ray
    actors (:mod:`~persona_axis.pipeline.sharding`; ``on_batch`` is its per-batch callback);
    the other stages run here."""
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        lm = lm or load_model(
            None if config.model == "default" else config.model, dtype=config.dtype
        )
        catalog = _catalog(config)
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
        caps, calibration = calibrate(lm, store, batches, axis, config)
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
            "build_settings": config.result_fields(),
            "counts": counts,
            "space": space,
            "rankings": rankings(vectors, axis, target),
            "quality": quality,
            "calibration": calibration,
            SAMPLE_KEY: default_reply_sample(store, len(batches), axis, target),
            "recommended_cap": default_recommendation(list(caps.values()), lm.shape.n_layers),
            "timings": {k: round(v, 2) for k, v in timings.items()},
        },
    )
    path = bundle.save(Path(out) / "bundle")
    return BuildResult(
        bundle=bundle, path=path, timings=timings, summary=summarize(bundle), generation=report
    )


@dataclass
class Analysis:
    """What the build derives from a finished store before calibration."""

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
        axis = assistant_axis(vectors["default"], _prefixed(vectors, "role/"))
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


# -- stages -------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class InRole:
    """Which role rollouts make a role vector: judge scores in ``scores``, or every rollout
    when the build has no judge (``judged`` False; docs/method.md uses score 3 only)."""

    scores: tuple[int, ...]
    judged: bool

    def __call__(self, score: int | None) -> bool:
        return score in self.scores if self.judged else True

    @property
    def keys(self) -> tuple[int | None, ...]:
        """The score keys of the sums that make a role vector (None: not judged)."""
        return self.scores if self.judged else (None,)


GroupKey = tuple[str, str, int | None]
"""(kind, name, judge score or None)."""


@dataclass
class Groups:
    """Streaming sums of response activations: per ``(kind, name, score)`` in ``sums``, and
    per question block (:func:`~persona_axis.axis.quality.cell_key`) for the rollouts the
    axis is built from (default, and role rollouts in role) in ``cells``."""

    sums: ActivationSums[GroupKey] = field(default_factory=ActivationSums)
    cells: ActivationSums[CellKey] = field(default_factory=ActivationSums)
    norm_sum: Tensor | None = None
    norm_count: int = 0
    empty: int = 0

    def count(self, key: tuple[str, str, int | None]) -> int:
        return self.sums.count(key)

    def names(self, kind: str) -> list[str]:
        return sorted({key[1] for key in self.sums.groups if key[0] == kind})

    def by_score(self, name: str) -> dict[int | None, SumCount]:
        """A role's sums per judge score (None: not judged)."""
        return {
            key[2]: part
            for key, part in self.sums.groups.items()
            if key[0] == "role" and key[1] == name
        }

    def mean_norm(self) -> Tensor:
        """Mean token ``‖h‖`` per layer ``[n_layers]`` over default rollouts (steering scale)."""
        if self.norm_sum is None:
            raise PersonaAxisError("No default rollout produced a reply; cannot compute norms.")
        return self.norm_sum / self.norm_count


def accumulate(
    store: BuildStore, n_batches: int, progress: bool, *, in_role: InRole, n_blocks: int
) -> Groups:
    """One streaming pass over the store: sums per group (empty replies are skipped)."""
    groups = Groups()
    for k, records, tensors in tqdm(
        store.iter_batches(n_batches),
        total=n_batches,
        desc="vectors",
        unit="batch",
        disable=not progress,
    ):
        scores = {j["id"]: j["score"] for j in store.read_judgement(k)}
        for row, record in enumerate(records):
            if record["n_tokens"] == 0:
                groups.empty += 1
                continue
            kind = record["kind"]
            score = scores.get(record["id"]) if kind == "role" else None
            acts = tensors["activations"][row]
            groups.sums.add((kind, record["name"], score), acts)
            if kind == "default" or (kind == "role" and in_role(score)):
                block = block_of(record["question_index"], n_blocks)
                groups.cells.add(cell_key(kind, record["name"], block), acts)
            if kind == "default":
                norms = tensors["norms"][row]
                groups.norm_sum = (
                    norms.clone() if groups.norm_sum is None else groups.norm_sum + norms
                )
                groups.norm_count += 1
    return groups


def make_vectors(
    groups: Groups, min_count: int, role_scores: tuple[int, ...] = (3,), *, judged: bool
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Default, role (rollouts scored in ``role_scores``; docs/method.md: 3), role_somewhat
    (score 2) and trait vectors, plus counts, by the tested functions of
    :mod:`persona_axis.axis.vectors`.

    Without a judge (``judged`` False) every role rollout counts as in role.
    """
    default = groups.sums.get([("default", "default", None)])
    if default is None:
        raise PersonaAxisError("No default rollout produced a reply; raise max_new_tokens.")
    vectors: dict[str, Tensor] = {"default": default.mean()}
    role_names = groups.names("role")
    sums = {name: groups.by_score(name) for name in role_names}
    in_role = InRole(role_scores, judged)
    if not sums:
        raise PersonaAxisError("No role rollout produced a reply; raise max_new_tokens.")
    full = role_vectors_from_sums(sums, in_role.keys, min_count)
    vectors |= {f"role/{name}": v for name, v in full.vectors.items()}
    if judged and 2 not in role_scores:
        somewhat = role_vectors_from_sums(sums, (2,), min_count)
        vectors |= {f"role_somewhat/{name}": v for name, v in somewhat.vectors.items()}
    per_role: dict[str, dict[str, int]] = {}
    for name in role_names:
        per_role[name] = {str(s): groups.count(("role", name, s)) for s in (0, 1, 2, 3)}
        per_role[name]["unscored"] = groups.count(("role", name, None))
    kept = sorted(full.vectors)
    if len(kept) < 2:
        raise PersonaAxisError(
            f"Only {len(kept)} role(s) had at least {min_count} in-role replies (scores "
            f"{list(role_scores)}); the "
            "axis needs two or more. Lower --min-role-rollouts, generate more rollouts, or use "
            "another judge (--judge none counts every reply)."
        )
    trait_names = groups.names("trait_pos")
    for name in trait_names:
        pos = groups.sums.get([("trait_pos", name, None)])
        neg = groups.sums.get([("trait_neg", name, None)])
        if pos is not None and neg is not None:
            vectors[f"trait/{name}"] = trait_vector_from_sums(pos, neg)
    counts = {
        "default": default.count,
        "roles": per_role,
        "roles_kept": len(kept),
        "roles_dropped": list(full.dropped),
        "traits": {n: groups.count(("trait_pos", n, None)) for n in trait_names},
        "empty_replies": groups.empty,
        "min_role_rollouts": min_count,
        "role_scores": list(role_scores),
        "judged": judged,
    }
    return vectors, counts


def quality_stage(
    store: BuildStore,
    n_batches: int,
    groups: Groups,
    vectors: dict[str, Tensor],
    config: BuildConfig,
    *,
    judged: bool,
    n_blocks: int,
) -> dict[str, Any]:
    """The axis quality metrics (:func:`persona_axis.axis.quality.assess`): the cells of the
    kept roles, then one pass over the store projecting each default and in-role rollout on
    the axis built without its question block."""
    roles = sorted(_prefixed(vectors, "role/"))
    try:
        cells = AxisCells.from_sums(groups.cells, roles, n_blocks)
    except PersonaAxisError as exc:  # too small a build to split: say so, do not fail
        n_layers = vectors["default"].shape[0]
        return unavailable(str(exc), n_layers, config.target_layer)
    folds = unit(cells.fold_axes())  # [K, L, d]
    in_role = InRole(config.role_scores, judged)
    kept = set(roles)
    projections: dict[str, list[Tensor]] = {"default": [], "role": []}
    for k, records, tensors in store.iter_batches(n_batches):
        scores = {j["id"]: j["score"] for j in store.read_judgement(k)}
        for row, record in enumerate(records):
            kind = record["kind"]
            if record["n_tokens"] == 0 or not (
                kind == "default"
                or (kind == "role" and record["name"] in kept and in_role(scores.get(record["id"])))
            ):
                continue
            fold = folds[block_of(record["question_index"], n_blocks)]
            projections[kind].append((tensors["activations"][row].float() * fold).sum(-1))
    somewhat = _prefixed(vectors, "role_somewhat/")
    owners = [roles.index(name) for name in somewhat if name in kept]
    extra = [v for name, v in somewhat.items() if name in kept]
    return assess(
        cells,
        torch.stack(projections["default"]).numpy(),
        torch.stack(projections["role"]).numpy(),
        torch.stack(extra) if extra else None,
        owners,
        target_layer=config.target_layer,
    )


def describe_space(vectors: dict[str, Tensor], axis: Tensor, target: int) -> dict[str, Any]:
    """Persona space at the target layer (role vectors and the role_somewhat vectors of the same
    roles) and cos(axis, PC1) at every layer; ``components``/``mean`` tensors are returned for
    the bundle's vectors."""
    roles = _prefixed(vectors, "role/")
    points = {
        **roles,
        **{
            f"{k}@somewhat": v
            for k, v in _prefixed(vectors, "role_somewhat/").items()
            if k in roles
        },
    }
    space = persona_space(points, target, default=vectors["default"])
    per_layer = [
        axis_pc1_cosine(
            axis, persona_space(points, layer, n_components=1, default=vectors["default"])
        )
        for layer in range(axis.shape[0])
    ]
    keep = min(SPACE_COMPONENTS, space.components.shape[0])
    ratios = space.explained_variance_ratio.tolist()
    return {
        "layer": target,
        "names": list(space.names),
        "loadings": [[round(x, 5) for x in row] for row in space.loadings[:, :keep].tolist()],
        "default_loading": None
        if space.default_loading is None
        else [round(x, 5) for x in space.default_loading[:keep].tolist()],
        "explained_variance_ratio": [round(x, 6) for x in ratios],
        "components_for_70pct": space.components_for(0.7) if sum(ratios) >= 0.7 else None,
        "cos_axis_pc1": round(axis_pc1_cosine(axis, space), 5),
        "cos_axis_pc1_by_layer": [round(c, 5) for c in per_layer],
        "components": space.components[:keep].clone(),
        "mean": space.mean.clone(),
    }


def rankings(vectors: dict[str, Tensor], axis: Tensor, target: int) -> dict[str, Any]:
    """Roles (by projection) and traits (by cosine) along the axis at the target layer."""
    direction = unit(axis[target])
    roles = {n: float(v[target] @ direction) for n, v in _prefixed(vectors, "role/").items()}
    traits = {
        n: float(cosine_by_layer(v, axis)[target]) for n, v in _prefixed(vectors, "trait/").items()
    }
    default = float(vectors["default"][target] @ direction)
    return {
        "layer": target,
        "default_projection": round(default, 4),
        "roles_by_projection": sorted(
            ((n, round(p, 4)) for n, p in roles.items()), key=lambda x: -x[1]
        ),
        "traits_by_cosine": sorted(
            ((n, round(c, 4)) for n, c in traits.items()), key=lambda x: -x[1]
        ),
    }


def calibrate(
    lm: LoadedModel,
    store: BuildStore,
    batches: list[list[RolloutSpec]],
    axis: Tensor,
    config: BuildConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cap settings from per-response projections of every rollout, plus percentile tables of
    both per-response and per-token projections (the latter on an even sample of rollouts).

    Tables are ``[n_layers][n_percentiles]`` (projections on the unit axis); the per-response
    table also exists for default rollouts and role rollouts alone (``per_response_by_kind``),
    the reference points a drift monitor compares against."""
    projections: list[Tensor] = []
    kinds: list[str] = []
    sample: list[tuple[list[Message], list[int]]] = []
    stride = max(1, sum(map(len, batches)) // max(1, config.token_calibration_rollouts))
    for _, records, tensors in store.iter_batches(len(batches)):
        replies = token_lists(tensors)
        rows = [row for row, record in enumerate(records) if record["n_tokens"] > 0]
        projections.append(project(tensors["activations"][rows], axis))
        kinds += [records[row]["kind"] for row in rows]
        for row in rows:
            record = records[row]
            if record["id"] % stride == 0 and len(sample) < config.token_calibration_rollouts:
                spec = RolloutSpec(**{k: record[k] for k in RolloutSpec.__dataclass_fields__})
                sample.append((spec.messages(), replies[row]))
    per_response = torch.cat(projections)  # [n_rollouts, n_layers]
    per_token = token_projections(lm, axis, sample, config.batch_size, config.progress)
    bands = config.cap_bands or default_cap_bands(lm.shape.n_layers)
    described = (
        f"per-response projections of all {per_response.shape[0]} rollouts "
        "(roles at every score, traits both ways, default)"
    )
    caps = calibrate_grid(per_response, bands, config.cap_percentiles, described)
    token_table = _percentiles(per_token, config.cap_percentiles)
    for setting in caps.values():
        pct_index = list(config.cap_percentiles).index(float(setting.percentile or 0))
        setting.notes["per_token_thresholds"] = [
            round(token_table[t.layer][pct_index], 5) for t in setting.thresholds
        ]
        setting.notes["per_token_rollouts"] = len(sample)
    calibration = {
        "percentiles": list(config.percentiles),
        "per_response": _percentiles(per_response, config.percentiles),
        "per_response_by_kind": {
            kind: _percentiles(
                per_response[torch.tensor([k == kind for k in kinds])], config.percentiles
            )
            for kind in ("default", "role")
            if kind in kinds
        },
        "per_token": _percentiles(per_token, config.percentiles),
        "n_rollouts": int(per_response.shape[0]),
        "n_token_rollouts": len(sample),
        "n_tokens": int(per_token.shape[0]),
        "bands": [list(b) for b in bands],
    }
    return caps, calibration


@torch.no_grad()
def token_projections(
    lm: LoadedModel,
    axis: Tensor,
    sample: list[tuple[list[Message], list[int]]],
    batch_size: int,
    progress: bool,
) -> Tensor:
    """``[n_tokens, n_layers]`` projections of every content token of the sampled rollouts,
    teacher-forced (prompt + the reply's own tokens) in right-padded batches: under a causal
    mask, padding after a sequence leaves its positions and activations untouched."""
    rows: list[Tensor] = []
    layers = list(range(lm.shape.n_layers))
    pad = lm.tokenizer.pad_token_id or 0
    prompts = [lm.chat.render(m, add_generation_prompt=True).input_ids for m, _ in sample]
    sequences = [p + reply for p, (_, reply) in zip(prompts, sample, strict=True)]
    with tqdm(total=len(sample), desc="calibrate", unit="rollout", disable=not progress) as bar:
        for first in range(0, len(sequences), batch_size):
            chunk = sequences[first : first + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, sequence in enumerate(chunk):
                ids[row, : len(sequence)] = torch.tensor(sequence)
                mask[row, : len(sequence)] = 1
            with record_projections(lm, axis, layers, stage="pre") as log:
                lm.stack.module(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
            values = log.all_positions()
            for row, sequence in enumerate(chunk):
                rows.append(values[row, len(prompts[first + row]) : len(sequence)])
            bar.update(len(chunk))
    if not rows:
        raise PersonaAxisError("No rollout with a reply to calibrate on.")
    return torch.cat(rows)


# -- helpers ------------------------------------------------------------------------------------


def _catalog(config: BuildConfig) -> Catalog:
    return load_catalog(config.catalog).subset(
        n_roles=config.n_roles,
        prompts_per_role=config.prompts_per_role,
        n_questions=config.n_questions,
        n_traits=config.n_traits,
        pairs_per_trait=config.pairs_per_trait,
    )


def _prefixed(vectors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in vectors.items() if k.startswith(prefix)}


def _percentiles(values: Tensor, percentiles: tuple[float, ...]) -> list[list[float]]:
    """Per layer, the percentiles of ``values`` ``[n, n_layers]`` (numpy linear, float64)."""
    table = np.percentile(values.double().numpy(), list(percentiles), axis=0, method="linear")
    return [[round(float(x), 5) for x in column] for column in table.T]


def summarize(bundle: AxisBundle) -> dict[str, Any]:
    """Top and bottom roles on the axis, cos(axis, PC1), variance explained, caps."""
    manifest = bundle.manifest
    ranked = manifest["rankings"]["roles_by_projection"]
    traits = manifest["rankings"]["traits_by_cosine"]
    ends = min(5, len(ranked) // 2)  # top and bottom never overlap
    trait_ends = min(3, len(traits) // 2)
    return {
        "model": manifest["model"]["id"],
        "target_layer": bundle.target_layer,
        "roles_kept": manifest["counts"]["roles_kept"],
        "top_roles": ranked[:ends],
        "bottom_roles": ranked[len(ranked) - ends :],
        "default_projection": manifest["rankings"]["default_projection"],
        "cos_axis_pc1": manifest["space"]["cos_axis_pc1"],
        "pc1_variance": manifest["space"]["explained_variance_ratio"][0],
        "traits_top": traits[:trait_ends],
        "traits_bottom": traits[len(traits) - trait_ends :],
        "caps": sorted(bundle.caps),
        "recommended_cap": manifest["recommended_cap"],
        "timings": manifest["timings"],
        **quality_summary(manifest.get("quality"), bundle.target_layer),
    }


def quality_summary(quality: dict[str, Any] | None, layer: int) -> dict[str, Any]:
    """The quality figures at ``layer`` (estimate, low, high), the layer's reason and the
    warnings, for printing; empty when the bundle has no quality section."""
    if not quality:
        return {}
    if "unavailable" in quality:
        return {"target_reason": quality["target_layer"]["reason"], "warnings": quality["warnings"]}
    return {
        "quality": summary_at(quality, layer),
        "target_reason": quality["target_layer"]["reason"],
        "warnings": warnings_for(quality, layer),
    }


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = time.perf_counter() - started
