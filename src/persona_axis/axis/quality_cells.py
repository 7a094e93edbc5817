"""The data axis quality is computed from: the float32 sums (and counts) of the rollouts an axis
is built from (default rollouts, and role rollouts counted in role), per role and per *question
block* (question index modulo :data:`QUESTION_BLOCKS`), and the axes of any subset of roles and
blocks as ratios of pooled sums (docs/method.md: ``default − mean over roles``, each role weighted
once). Residual-stream units; layer L is decoder block L's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from persona_axis.axis.vectors import ActivationSums, SumCount
from persona_axis.errors import PersonaAxisError

QUESTION_BLOCKS = 8
"""Questions are grouped into at most this many blocks (question index mod 8) for the
question splits and the cross-fitting folds."""
Weighting = Literal["role", "rollout"]
CellKey = tuple[str, str, str, int]
"""``("cell", kind, name, question block)``: see :func:`cell_key`."""


@dataclass(frozen=True)
class AxisCells:
    """Sums of the rollouts an axis is built from, per role and question block.

    ``role_sums`` ``[R, K, L, d]`` and ``role_counts`` ``[R, K]``: the in-role rollouts of
    role ``names[r]`` in block ``k``; ``default_sums`` ``[K, L, d]`` and ``default_counts``
    ``[K]``: the default rollouts. float32, residual-stream units.
    """

    names: tuple[str, ...]
    role_sums: Tensor
    role_counts: Tensor
    default_sums: Tensor
    default_counts: Tensor

    def __post_init__(self) -> None:
        r, k = self.role_counts.shape
        if len(self.names) != r or self.role_sums.shape[:2] != (r, k):
            raise PersonaAxisError("AxisCells: role sums, counts and names disagree in shape.")
        if (
            self.default_sums.shape[0] != k
            or self.default_sums.shape[1:] != self.role_sums.shape[2:]
        ):
            raise PersonaAxisError("AxisCells: default and role sums disagree in shape.")
        if r < 2:
            raise PersonaAxisError(
                f"Axis quality needs at least two roles in the axis; got {r}. Keep more roles "
                "(lower --min-role-rollouts or generate more rollouts)."
            )
        if int((self.default_counts > 0).sum()) < 2:
            raise PersonaAxisError(
                "Axis quality needs default replies in at least two question blocks; build with "
                "two or more questions."
            )

    @property
    def n_blocks(self) -> int:
        return int(self.role_counts.shape[1])

    @property
    def n_layers(self) -> int:
        return int(self.role_sums.shape[2])

    @classmethod
    def from_sums(cls, sums: ActivationSums, roles: Sequence[str], n_blocks: int) -> AxisCells:
        """Cells from streaming sums keyed ``("default", block)`` and ``("role", name, block)``
        (see :func:`cell_key`)."""
        some = next(iter(sums.groups.values()), None)
        if some is None:
            raise PersonaAxisError("No rollouts to assess.")
        zero = SumCount(torch.zeros_like(some.total), 0)

        def part(key: CellKey) -> SumCount:
            return sums.groups.get(key, zero)

        role_parts = [[part(cell_key("role", n, b)) for b in range(n_blocks)] for n in roles]
        default_parts = [part(cell_key("default", "default", b)) for b in range(n_blocks)]
        return cls(
            names=tuple(roles),
            role_sums=torch.stack([torch.stack([p.total for p in row]) for row in role_parts]),
            role_counts=torch.tensor([[float(p.count) for p in row] for row in role_parts]),
            default_sums=torch.stack([p.total for p in default_parts]),
            default_counts=torch.tensor([float(p.count) for p in default_parts]),
        )

    @classmethod
    def from_rollouts(
        cls,
        activations: Tensor,
        roles: Sequence[str | None],
        blocks: Sequence[int],
        n_blocks: int,
    ) -> AxisCells:
        """Cells from per-rollout activations ``[n, L, d]``; ``roles[i]`` is the role of
        rollout ``i`` or None for a default rollout; ``blocks[i]`` its question block."""
        sums: ActivationSums[CellKey] = ActivationSums()
        for act, role, block in zip(activations, roles, blocks, strict=True):
            key = (
                cell_key("default", "default", block)
                if role is None
                else cell_key("role", role, block)
            )
            sums.add(key, act)
        names = sorted({r for r in roles if r is not None})
        return cls.from_sums(sums, names, n_blocks)

    def axes(
        self,
        role_weights: Tensor | None = None,
        block_weights: Tensor | None = None,
        weighting: Weighting = "role",
    ) -> Tensor:
        """Axes ``[B, L, d]`` (unnormalised) for ``B`` choices of data.

        ``role_weights`` ``[B, R]`` and ``block_weights`` ``[B, K]`` are multiplicities (0 =
        left out, 2 = drawn twice); None means all ones (``B`` = 1 if both are None). A role
        with no rollout in the chosen blocks drops out. ``weighting="role"`` weights each role
        once (docs/method.md); ``"rollout"`` pools role rollouts (roles weighted by count).
        """
        r, k = self.role_counts.shape
        b = next((w.shape[0] for w in (role_weights, block_weights) if w is not None), 1)
        rw = torch.ones(b, r) if role_weights is None else role_weights.float()
        bw = torch.ones(b, k) if block_weights is None else block_weights.float()
        shape = self.role_sums.shape[2:]
        default_n = bw @ self.default_counts  # [B]
        if bool((default_n <= 0).any()):
            raise PersonaAxisError("A chosen set of question blocks holds no default reply.")
        default = (bw @ self.default_sums.reshape(k, -1)) / default_n[:, None]
        n = bw @ self.role_counts.T  # [B, R] rollouts of each role in the chosen blocks
        weights = rw * (n > 0) * (n if weighting == "rollout" else 1)  # per role
        if bool((weights.sum(1) <= 0).any()):
            raise PersonaAxisError("A chosen set of roles and blocks holds no role reply.")
        # The weighted mean of role means, Σ_r w_r (Σ_k bw_k S_rk / n_r) / Σ_r w_r, is linear in
        # the cell sums S: one [B, R·K] × [R·K, L·d] product instead of B sets of role means.
        per_role = weights / n.clamp(min=1e-12) / weights.sum(1, keepdim=True)
        coefficients = (per_role[:, :, None] * bw[:, None, :]).reshape(b, r * k)
        mean = coefficients @ self.role_sums.reshape(r * k, -1)
        return (default - mean).reshape(b, *shape)

    def axis(self, weighting: Weighting = "role") -> Tensor:
        """The axis from every cell ``[L, d]``: the build's axis."""
        return self.axes(weighting=weighting)[0]

    def fold_axes(self, weighting: Weighting = "role") -> Tensor:
        """``[K, L, d]``: axis ``k`` is built without question block ``k`` (cross-fitting)."""
        return self.axes(block_weights=1 - torch.eye(self.n_blocks), weighting=weighting)


def cell_key(kind: str, name: str, block: int) -> CellKey:
    """The :class:`~persona_axis.axis.vectors.ActivationSums` key of one cell."""
    return ("cell", kind, name, int(block))


def block_of(question_index: int, n_blocks: int) -> int:
    """The question block of a question (its index modulo the number of blocks)."""
    return int(question_index) % n_blocks


def n_blocks_for(n_questions: int) -> int:
    return max(1, min(QUESTION_BLOCKS, n_questions))
