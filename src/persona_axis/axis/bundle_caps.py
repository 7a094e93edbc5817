"""Cap settings inside a bundle: validation, lookup, the recommended setting, and resolution
of a setting to floors along unit directions.

Caps are floors along a unit direction, by default the unit axis of their layer: a cap setting
whose ``notes["direction_keys"]`` is present names, per threshold, the vector holding its
direction (a [d] vector, or a row of an [n_layers, d] one). :meth:`BundleCaps.cap_floors`
resolves this, so consumers never read the notes themselves.
"""

from __future__ import annotations

from torch import Tensor

from persona_axis.axis.bundle_data import BundleData
from persona_axis.axis.calibrate import CAP_RULE, CapSetting, default_recommendation
from persona_axis.errors import PersonaAxisError

DIRECTION_KEYS_NOTE = "direction_keys"
RECOMMENDED = "recommended"
NO_CAP = "none"


class BundleCaps(BundleData):
    """:class:`BundleData` whose cap settings are checked against its vectors."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, setting in self.caps.items():
            if name != setting.name:
                raise PersonaAxisError(
                    f"Cap setting stored under {name!r} is named {setting.name!r}; store each "
                    "setting under its own name (use AxisBundle.add_cap)."
                )
            self._check_cap(setting)

    def cap(self, name: str) -> CapSetting:
        """The cap setting called ``name``; unknown names list what is available."""
        if name not in self.caps:
            available = ", ".join(sorted(self.caps)) or "none"
            raise PersonaAxisError(
                f"No cap setting {name!r} in this bundle; available: {available}. Pick an "
                "available name, or get settings from persona-axis build (it calibrates them) "
                "or persona-axis import (a reference capping config)."
            )
        return self.caps[name]

    def add_cap(self, setting: CapSetting, *, replace: bool = False) -> None:
        """Add (or with ``replace=True`` overwrite) a cap setting, validated against the bundle."""
        if setting.name in self.caps and not replace:
            raise PersonaAxisError(
                f"Cap setting {setting.name!r} already exists; pass replace=True to overwrite it."
            )
        self._check_cap(setting)
        self.caps[setting.name] = setting

    def cap_floors(self, name: str) -> list[tuple[int, Tensor, float]]:
        """``[(layer, unit direction [d] float32, floor)]`` of setting ``name``, in its order.

        Apply at each listed layer, every position: ``p = <h, u>``; where ``p < floor``,
        ``h ← h + (floor − p)·u``. ``u`` is the unit axis unless the setting names another
        direction (imported reference caps whose vector is not the negated axis).
        """
        setting = self.cap(name)
        keys = setting.notes.get(DIRECTION_KEYS_NOTE)
        floors = []
        for index, item in enumerate(setting.thresholds):
            key = "axis" if keys is None else keys[index]
            floors.append((item.layer, self._direction(key, item.layer), item.threshold))
        return floors

    @property
    def recommended_cap(self) -> str | None:
        """Name of the recommended cap setting.

        The manifest's ``recommended_cap`` when it names a stored setting; else the one
        documented fallback, :func:`~persona_axis.axis.calibrate.default_recommendation` (the
        stored setting nearest p75 on a layer range near 70% depth); None without cap settings.
        """
        named = self.manifest.get("recommended_cap")
        if isinstance(named, str) and named in self.caps:
            return named
        return default_recommendation(list(self.caps.values()), self.shape[0])

    def resolve_cap(self, cap: str | None) -> str | None:
        """A cap argument as a stored setting name: None or ``"none"`` give None (no cap);
        ``"recommended"`` gives :attr:`recommended_cap`; other names must be stored."""
        if cap is None or cap == NO_CAP:
            return None
        if cap == RECOMMENDED:
            name = self.recommended_cap
            if name is None:
                raise PersonaAxisError(
                    "This bundle has no cap settings, so it has no recommended cap; pass 'none', "
                    "or use a bundle from persona-axis build (it calibrates caps) or one imported "
                    "with its capping config (persona-axis import)."
                )
            return name
        self.cap(cap)  # raises with the available names
        return cap

    def _check_cap(self, setting: CapSetting) -> None:
        if setting.rule != CAP_RULE:
            raise PersonaAxisError(
                f"Cap setting {setting.name!r} has rule {setting.rule!r}; bundles hold only "
                f"{CAP_RULE!r} (convert reference ceilings with "
                "persona_axis.axis.reference.import_reference_capping)."
            )
        for item in setting.thresholds:
            self._check_layer(item.layer, f"cap setting {setting.name!r}")
        keys = setting.notes.get(DIRECTION_KEYS_NOTE)
        if keys is None:
            return
        if not isinstance(keys, list) or len(keys) != len(setting.thresholds):
            raise PersonaAxisError(
                f"Cap setting {setting.name!r}: notes[{DIRECTION_KEYS_NOTE!r}] must list one "
                "vector key per threshold."
            )
        for key, item in zip(keys, setting.thresholds, strict=True):
            self._direction(key, item.layer)
