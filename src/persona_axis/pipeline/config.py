"""Build settings: one frozen dataclass, two presets, and the fields that must match on resume.

Every field changes the result except those in :data:`RUNTIME_FIELDS`; a resumed build whose
result fields differ from the stored ones is refused (the store would mix two experiments).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from persona_axis.errors import PersonaAxisError
from persona_axis.models.dtypes import DtypeChoice, choose_dtype

RUNTIME_FIELDS = frozenset({"progress", "workers", "ray_address", "gpus_per_worker"})
"""Fields that change how a build runs but never what it computes (not stored, not checked)."""
RENAMED_FIELDS = {
    "cap_bands": "cap_layer_ranges",
    "token_calibration_rollouts": "token_percentile_rollouts",
}
"""Result fields older versions stored under other names: old name → today's."""


@dataclass(frozen=True)
class BuildConfig:
    """What `persona-axis build` computes. Sizes of None mean "the whole catalog".

    Sampling follows docs/method.md (temperature 0.7, top_p 0.9, 512 new tokens, thinking off).
    ``activation_dtype`` is how per-rollout activations are stored (float32 or bfloat16: half
    the disk, n_layers × d × 2 bytes per rollout; sums are always taken in float32).
    ``engine`` generates the rollouts: "hf" (our continuous batch, pooling) or "vllm" (the vLLM
    engine, pooling in the same pass; its sampler differs from HF's, so it is a result field).
    ``dtype`` is the model's dtype; "auto" means bfloat16 where the host multiplies it
    natively (AMX, AVX-512-BF16, CUDA) and float32 elsewhere (:meth:`dtype_choice`); a build
    stores and records the dtype it resolved to.
    ``role_scores`` are the judge scores whose rollouts make a role vector (docs/method.md: 3 only).
    ``batch_size`` fixes how rollouts are grouped and seeded (batch k uses seed ``seed + k``),
    so it is part of the result. ``cap_layer_ranges`` are half-open ``(first, stop)`` layer
    ranges; None derives upper-middle ranges from the depth (:func:`default_cap_layer_ranges`).

    ``workers``, ``ray_address`` and ``gpus_per_worker`` only say how generation runs
    (:mod:`persona_axis.pipeline.sharding`): workers > 1 or an address shards the batches over
    Ray actors; each actor with GPUs loads the model with ``device_map="auto"`` over its own.
    They are runtime fields: a build may be resumed with other values.
    """

    model: str = "default"
    model_name: str | None = None
    dtype: str = "float32"
    catalog: str | None = None
    n_roles: int | None = None
    prompts_per_role: int | None = None
    n_questions: int | None = None
    n_traits: int | None = None
    pairs_per_trait: int | None = None
    trait_questions: int | None = 40
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = 16
    judge: dict[str, Any] = field(default_factory=lambda: {"backend": "heuristic"})
    min_role_rollouts: int = 10
    role_scores: tuple[int, ...] = (3,)
    percentiles: tuple[float, ...] = (1.0, 25.0, 50.0, 75.0)
    cap_percentiles: tuple[float, ...] = (25.0, 50.0, 75.0, 99.0)
    cap_layer_ranges: tuple[tuple[int, int], ...] | None = None
    target_layer: int | None = None
    token_percentile_rollouts: int = 2000
    activation_dtype: str = "float32"
    engine: str = "hf"
    progress: bool = True
    workers: int = 1
    ray_address: str | None = None
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_roles", "prompts_per_role", "n_questions", "n_traits", "pairs_per_trait"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "n_traits" else 1):
                raise PersonaAxisError(f"{name} must be at least 1 (or 0 traits), not {value}.")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.min_role_rollouts < 1:
            raise PersonaAxisError("batch_size, max_new_tokens and min_role_rollouts must be ≥ 1.")
        if self.workers < 1 or self.gpus_per_worker < 0:
            raise PersonaAxisError(
                f"workers must be ≥ 1 and gpus_per_worker ≥ 0, not {self.workers} and "
                f"{self.gpus_per_worker}."
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise PersonaAxisError("temperature must be ≥ 0 and top_p in (0, 1].")
        if self.engine not in ("hf", "vllm"):
            raise PersonaAxisError(f"engine must be 'hf' or 'vllm', not {self.engine!r}.")
        if self.engine == "vllm" and (self.workers > 1 or self.ray_address is not None):
            raise PersonaAxisError("engine 'vllm' generates in this process; use workers=1.")
        if self.activation_dtype not in ("float32", "bfloat16"):
            raise PersonaAxisError(
                f"activation_dtype must be float32 or bfloat16, not {self.activation_dtype!r}."
            )
        if not self.role_scores or not set(self.role_scores) <= {0, 1, 2, 3}:
            raise PersonaAxisError(f"role_scores must be judge scores 0-3, not {self.role_scores}.")
        if not isinstance(self.judge, dict) or "backend" not in self.judge:
            raise PersonaAxisError('judge must be a dict with a "backend" key.')
        for pct in (*self.percentiles, *self.cap_percentiles):
            if not 0 <= pct <= 100:
                raise PersonaAxisError(f"Percentile {pct} is outside [0, 100].")

    def result_fields(self) -> dict[str, Any]:
        """The JSON form of every field that changes the result (stored in the build dir)."""
        data = asdict(self)
        for name in RUNTIME_FIELDS:
            data.pop(name)
        data["percentiles"] = list(self.percentiles)
        data["cap_percentiles"] = list(self.cap_percentiles)
        data["role_scores"] = list(self.role_scores)
        ranges = self.cap_layer_ranges
        data["cap_layer_ranges"] = None if ranges is None else [list(r) for r in ranges]
        if self.target_layer is None:  # unset: stored as before the field existed (resumable)
            data.pop("target_layer")
        if self.engine == "hf":  # likewise; a vLLM build's rollouts differ, so it is stored
            data.pop("engine")
        return data

    def dtype_choice(self) -> DtypeChoice:
        """The dtype this build loads the model in, and why: ``dtype`` with "auto" resolved
        for the host that decides (:func:`~persona_axis.models.dtypes.choose_dtype`; the GPUs
        when ``gpus_per_worker`` > 0, else this CPU)."""
        return choose_dtype(self.dtype, "cuda" if self.gpus_per_worker > 0 else "cpu")

    @classmethod
    def from_result_fields(cls, data: dict[str, Any]) -> BuildConfig:
        """The settings a build directory stored (:meth:`result_fields`), back as a config."""
        known = {f.name for f in fields(cls)} - RUNTIME_FIELDS
        data = upgrade_result_fields(data)
        unknown = set(data) - known
        if unknown:
            raise PersonaAxisError(
                f"The build stored settings {sorted(unknown)} this version does not know; "
                "use the persona-axis version that built it."
            )
        values = dict(data)
        for name in ("percentiles", "cap_percentiles", "role_scores"):
            if name in values:
                values[name] = tuple(values[name])
        if values.get("cap_layer_ranges") is not None:
            values["cap_layer_ranges"] = tuple(tuple(r) for r in values["cap_layer_ranges"])
        return cls(**values, progress=False)

    def with_overrides(self, **overrides: Any) -> BuildConfig:
        """A copy with the given fields replaced; None values are ignored (not given)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise PersonaAxisError(
                f"Unknown build settings {sorted(unknown)}; known: {sorted(known)}."
            )
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# A documented subset sized to finish in under three minutes on 2 CPU cores with the default
# model (150 s on the project's AVX2 host on 2026-12-07, docs/axis-quality.md): 12 roles (3
# per category) × 2 prompts × 6 questions, the 5 default prompts × 6 questions, 4 traits × 1
# pair × 2 polarities × 3 questions; 32 new tokens in batches of 32; 100 rollouts for the per-token
# percentiles. dtype float32: "auto" (bfloat16 with AMX or AVX-512-BF16, models/dtypes.py) is
# opt-in on CPUs until bfloat16's speed on such a host is measured; on AVX2 it was 5x slower.
# A 135M model rarely plays a role fully (the offline judge gives most replies a 1), so the
# quick role vectors keep every non-refusal reply (scores 1-3) instead of score 3 only.
_QUICK = BuildConfig(
    batch_size=32,
    n_roles=12,
    prompts_per_role=2,
    n_questions=6,
    n_traits=4,
    pairs_per_trait=1,
    trait_questions=3,
    max_new_tokens=32,
    min_role_rollouts=2,
    role_scores=(1, 2, 3),
    token_percentile_rollouts=100,
)

PRESETS: dict[str, BuildConfig] = {
    "quick": _QUICK,
    # The best axis the default model gives in about 20 minutes on 2 CPU cores, chosen by the
    # study in docs/axis-quality.md from the build's own quality metrics: the default vector
    # (5 prompts × the questions) limits the stability by question, and about 50 roles already
    # give a stable role mean, so the time goes to questions: 48 roles (12 per category) × 1
    # prompt × 24 questions, the 5 default prompts × the same 24 questions (120 replies), 4
    # traits, judge filter, length and dtype as in quick; 1,296 rollouts.
    "standard": replace(
        _QUICK,
        batch_size=16,
        token_percentile_rollouts=200,
        n_roles=48,
        prompts_per_role=1,
        n_questions=24,
        min_role_rollouts=4,
    ),
    # The paper's design: 275 roles × 5 prompts × 240 questions, all traits (5 pairs each, 40
    # questions per trait), temperature 0.7, top_p 0.9, 512 new tokens. Meant for a GPU machine.
    # Activations are stored in bfloat16 here: Qwen3 32B takes 64 × 5120 × 2 bytes = 655 KB per
    # rollout, about 216 GB for the 330,000 rollouts.
    # The model runs in bfloat16 where the GPUs support it ("auto").
    "paper": BuildConfig(activation_dtype="bfloat16", dtype="auto"),
}


def upgrade_result_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of stored result fields with older names (:data:`RENAMED_FIELDS`) renamed to
    today's, so a build directory written by an older version resumes and is read as before."""
    return {RENAMED_FIELDS.get(name, name): value for name, value in data.items()}


def preset(name: str) -> BuildConfig:
    if name not in PRESETS:
        raise PersonaAxisError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]


def default_cap_layer_ranges(n_layers: int) -> tuple[tuple[int, int], ...]:
    """Upper-middle layer ranges to calibrate caps on, as half-open ``(first, stop)``.

    The paper caps 12-20% of the depth in the upper middle (Qwen3 32B: 46-53 of 64; Llama 3.3
    70B: 56-71 of 80). Ranges of 12.5% and 20% of the depth start at the middle layer, at 62.5%
    and at 70% of the depth; duplicates are removed and ranges are clipped to the model.
    """
    ranges: list[tuple[int, int]] = []
    for width_fraction in (0.125, 0.2):
        width = max(1, math.ceil(width_fraction * n_layers))
        for start_fraction in (0.5, 0.625, 0.7):
            first = min(int(start_fraction * n_layers), n_layers - width)
            layer_range = (first, first + width)
            if layer_range not in ranges:
                ranges.append(layer_range)
    return tuple(ranges)
