"""``persona-axis validate`` as a library call: a finished build's axis quality metrics,
recomputed from its store, at the target layer, with the warnings and whether the bundle's
manifest holds the same figures (docs/axis-quality.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_axis import files
from persona_axis.axis.quality import summary_at, warnings_for
from persona_axis.pipeline.stages import assess_build


@dataclass(frozen=True)
class Validation:
    """``quality`` (the full metrics, as the build writes ``manifest["quality"]``), the target
    ``layer`` and why it was chosen (``reason``); ``unavailable`` says why the build is too small
    to assess (then ``figures`` and ``warnings`` are empty); ``figures`` maps each metric at the
    layer to (estimate, low, high) of its bootstrap 95% interval; ``matches_manifest`` is None
    when the build holds no bundle yet or cannot be assessed."""

    quality: dict[str, Any]
    layer: int
    reason: str
    unavailable: str | None
    figures: dict[str, tuple[float, float, float]]
    warnings: list[str]
    matches_manifest: bool | None

    @property
    def worrying(self) -> bool:
        """Whether a warning other than a note was raised (unstable or barely separating)."""
        return any(not w.startswith("note") for w in self.warnings)


def validate_build(build_dir: str | Path) -> Validation:
    """Recompute and check the quality metrics of the build in ``build_dir`` (the ``--out`` of
    ``persona-axis build``, or the bundle inside it); no model is loaded."""
    root = Path(build_dir)
    if not (root / "work").is_dir() and (root.parent / "work").is_dir():
        root = root.parent  # given the bundle inside a build directory
    quality = assess_build(root)
    layer = quality["target_layer"]["layer"]
    reason = quality["target_layer"]["reason"]
    if "unavailable" in quality:
        return Validation(quality, layer, reason, quality["unavailable"], {}, [], None)
    manifest = root / "bundle" / "manifest.json"
    matches = None
    if manifest.is_file():
        stored = files.read_json(manifest, fix="rerun persona-axis build").get("quality")
        matches = stored == quality
    figures = summary_at(quality, layer)
    warnings = warnings_for(quality, layer)
    return Validation(quality, layer, reason, None, figures, warnings, matches)
