"""Prefix-cache isolation: a request's vLLM ``cache_salt`` from its intervention.

vLLM's prefix cache reuses a prompt's key/value blocks by a hash of their tokens, chained from
the first block, into which a per-request salt is mixed. An intervention changes the keys and
values of every layer after it, so requests with different interventions must not share blocks:
their salt is ``"persona-axis:" + sha256`` of the intervention (every layer, kind, number,
position rule and direction, float32 bytes, in order). Requests without one get no salt and share
the ordinary cache; requests with equal interventions share theirs. docs/vllm-backend.md §3.
"""

from __future__ import annotations

import hashlib
import json

from persona_axis.inference.interventions import InterventionSpec

PREFIX = "persona-axis:"


def cache_salt(spec: InterventionSpec | None) -> str | None:
    """The salt for a request under ``spec``; None for no intervention."""
    if spec is None or not spec.interventions:
        return None
    digest = hashlib.sha256()
    for item in spec.interventions:
        numbers = [item.layer, item.kind, item.coefficient, item.value, item.floor, item.ceiling]
        digest.update(json.dumps([*numbers, item.positions]).encode())
        digest.update(item.direction.detach().float().contiguous().cpu().numpy().tobytes())
    return PREFIX + digest.hexdigest()
