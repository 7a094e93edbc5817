"""The build's sample for the drift monitor: its default replies' projections, by prompt.

Every build answers each question under each of the model's default system prompts (no role).
Those replies are the model as the Assistant, so they give the drift monitor its benign profile at
no extra cost: their level, their spread, and how much two replies under the same prompt differ
(the change a benign conversation shows from turn to turn). This module only reads the numbers
from the build store; :meth:`persona_axis.drift.profile.BenignProfile.from_build`
turns them into the benign profile the bundle ships with.

The sample is stored in the manifest as ``monitor_sample``: the layer, and per default prompt
the content-token-mean projections (unit axis, residual-stream units, float32) and content
token counts of its replies, in question order.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from persona_axis.axis.vectors import project
from persona_axis.pipeline.store import BuildStore

SAMPLE_KEY = "monitor_sample"


def default_reply_sample(
    store: BuildStore, n_batches: int, axis: Tensor, layer: int
) -> dict[str, Any] | None:
    """The default replies' projections at ``layer`` per default prompt (module doc); None
    when the build has no default reply with content. Reads the store only up to the last
    batch holding default rollouts (they come first in the plan)."""
    by_prompt: dict[int, dict[str, list[float]]] = {}
    for _, records, tensors in store.iter_batches(n_batches):
        rows = [i for i, r in enumerate(records) if r["kind"] == "default" and r["n_tokens"] > 0]
        if rows:
            values = project(tensors["activations"][rows, layer], axis, layer).tolist()
            for row, value in zip(rows, values, strict=True):
                entry = by_prompt.setdefault(records[row]["prompt_index"], {"x": [], "n": []})
                entry["x"].append(round(float(value), 6))
                entry["n"].append(int(records[row]["n_tokens"]))
        if all(r["kind"] != "default" for r in records):
            break
    if not by_prompt:
        return None
    return {
        "layer": layer,
        "projections": [by_prompt[p]["x"] for p in sorted(by_prompt)],
        "n_tokens": [by_prompt[p]["n"] for p in sorted(by_prompt)],
    }
