"""The model side of the server: named bundles, intervention settings, batches, telemetry.

An :class:`Engine` generates from one thread only (the scheduler's worker), always holding the
model's generation lock (:data:`LOCK_KEY`), and every forward pass installs and removes its own
hooks, so no hook outlives its step. Request handlers only call :meth:`Engine.setting`,
:meth:`Engine.prompt_length`, :meth:`Engine.describe` and the admin methods :meth:`Engine.load`
and :meth:`Engine.unload`, which read or swap the bundle registry (a new dict each time; a
request keeps the :class:`Served` bundle it was admitted with).

:meth:`Engine.row` turns a request into a row of the generation engine
(:mod:`persona_axis.inference.engine`: per-row interventions, sampling and telemetry, every
setting in one batch), the same rows the library's
:func:`~persona_axis.inference.generation.run_conversations` makes.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Hashable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from persona_axis.application.session import Turn
from persona_axis.axis.bundle import NO_CAP, RECOMMENDED, AxisBundle
from persona_axis.drift.profile import drift_rule
from persona_axis.errors import Conflict, NotFound, PersonaAxisError
from persona_axis.inference.engine import RowRequest, Sampling, stop_ids
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.rows import Probe
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel
from persona_axis.serve.drift import ON_DRIFT, RequestDrift, describe_rule

MAX_STEER = 8.0
"""Largest ``|steer|`` accepted, in multiples of the target layer's mean residual norm."""
STEER_DECIMALS = 2
"""``steer`` is rounded to this many decimals, a step of 0.01 (so clients cannot fill the spec
cache with distinct floats; a 0.01 change of m moves the residual by 1% of its mean norm)."""
SPEC_CACHE = 64
"""Intervention specs kept per served bundle (least recently used dropped first)."""
DEFAULT_BUNDLE = "default"
"""The name of the bundle given as plain ``--bundle DIR``."""
BUNDLE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
LOCK_KEY = "persona_axis.serve.generation_lock"
"""``LoadedModel.extra`` entry: a lock held while a batch generates, shared by every engine on
the same model, so two apps serving one model take turns instead of mixing hooks."""


@dataclass(frozen=True)
class Setting:
    """One intervention setting: the served bundle named ``bundle``, a cap from it (None = no
    cap) and a steering multiple ``steer`` m (``h ← h + m·n̄_L·â_L`` at the bundle's target
    layer; None = no steering). ``on_drift``: the request asked for ``cap: "on-drift"``;
    ``cap`` is then the recommended cap until :meth:`Engine.read_drift` decides from the
    history whether it applies."""

    bundle: str
    cap: str | None = None
    steer: float | None = None
    on_drift: bool = False

    @property
    def label(self) -> str:
        """The cap name or ``"none"``, for metrics labels (steering is not in the label)."""
        return self.cap or NO_CAP


class DeltaDecoder:
    """Turns one reply's token ids, fed one at a time, into text increments.

    The text sent so far is always a prefix of ``decode(tokens).strip()`` (the final reply text):
    leading and trailing whitespace is held back, and so is a trailing incomplete UTF-8
    sequence (shown by the decoder as U+FFFD).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: set[int]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """The new text after ``token``; "" when nothing can be sent yet."""
        if self.stopped:
            return ""
        if token in self.stops:
            self.stopped = True
            return ""
        self.tokens.append(token)
        text = str(self.tokenizer.decode(self.tokens, skip_special_tokens=True)).strip()
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def finish(self, final: str) -> str:
        """What is left to send of the ``final`` reply text ("" if decoding ever rewrote text
        already sent, which a streaming client then sees as is)."""
        delta = final[len(self.sent) :] if final.startswith(self.sent) else ""
        self.sent = final
        return delta


class Served:
    """One bundle as served: checked against the model, its default cap, drift rule, specs.

    The steering scale (the target layer's mean residual norm, stored by ``build``; else
    estimated on the model once here, holding the generation ``lock`` since it runs forward
    passes with hooks) is fixed at load, so building a spec never touches the model. Specs are
    cached per (cap, steer), at most :data:`SPEC_CACHE` of them."""

    def __init__(
        self,
        name: str,
        bundle: AxisBundle,
        lm: LoadedModel,
        default_cap: str,
        lock: threading.Lock | None = None,
    ) -> None:
        self.name = name
        self.bundle = bundle
        self.rule = drift_rule(bundle)
        if default_cap == ON_DRIFT:
            bundle.resolve_cap(RECOMMENDED)  # raises when there is none
        self.default_cap = ON_DRIFT if default_cap == ON_DRIFT else bundle.resolve_cap(default_cap)
        self.lm = lm
        self.probe = Probe(bundle.axis, (bundle.target_layer,))
        with lock or threading.Lock():
            self.mean_norm = float(bundle.mean_norms(lm)[bundle.target_layer])
        self._spec = functools.lru_cache(maxsize=SPEC_CACHE)(self._build_spec)

    @property
    def target_layer(self) -> int:
        return self.bundle.target_layer

    def spec(self, setting: Setting) -> InterventionSpec:
        """The interventions of ``setting``: the cap's floors, then the steering addition
        ``m·n̄_L·â_L`` at the target layer (as :meth:`AxisBundle.intervention
        <persona_axis.axis.bundle.AxisBundle.intervention>`, with the norm fixed at load)."""
        return self._spec(setting.cap, setting.steer)

    def _build_spec(self, cap: str | None, steer: float | None) -> InterventionSpec:
        spec = self.bundle.intervention(cap)
        if steer is None:
            return spec
        layer = self.target_layer
        return spec + InterventionSpec.steer(self.bundle.axis, layer, steer, self.mean_norm)

    def describe(self) -> dict[str, Any]:
        """What a client needs to pick settings and draw the drift meter."""
        return {
            "target_layer": self.target_layer,
            "default_cap": self.default_cap or NO_CAP,
            "recommended_cap": self.bundle.recommended_cap,
            "caps": {
                name: {"layers": setting.layers, "percentile": setting.percentile}
                for name, setting in sorted(self.bundle.caps.items())
            },
            "rule": describe_rule(self.rule),
            "max_steer": MAX_STEER,
        }


class Engine:
    """A loaded model with its named bundles: resolves settings, runs batches, reports
    telemetry. The first bundle is the default for requests that name none.

    Bundles can be added and removed while serving (:meth:`load`, :meth:`unload`); a request
    keeps the :class:`Served` bundle it was admitted with, so removing a bundle never affects
    requests in flight.
    """

    def __init__(
        self,
        lm: LoadedModel,
        bundles: AxisBundle | Mapping[str, AxisBundle],
        *,
        default_cap: str = RECOMMENDED,
        allow_mismatch: bool = False,
    ) -> None:
        named = {DEFAULT_BUNDLE: bundles} if isinstance(bundles, AxisBundle) else dict(bundles)
        if not named:
            raise PersonaAxisError("Give at least one bundle to serve (--bundle DIR).")
        self.lm = lm
        self.allow_mismatch = allow_mismatch
        self.lock: threading.Lock = lm.extra.setdefault(LOCK_KEY, threading.Lock())
        self.stops = set(stop_ids(lm))
        self.bundles: dict[str, Served] = {}
        self._registry_lock = threading.Lock()
        for name, bundle in named.items():
            self.load(name, bundle, default_cap=default_cap)
        self.default_bundle = next(iter(named))
        config = getattr(lm.model.config, "get_text_config", lambda: lm.model.config)()
        positions = getattr(config, "max_position_embeddings", None)
        self.context_length: int | None = int(positions) if positions else None

    # -- bundles ------------------------------------------------------------------------------

    def load(self, name: str, bundle: AxisBundle, *, default_cap: str = RECOMMENDED) -> Served:
        """Check ``bundle`` against the model and serve it as ``name`` (a new name)."""
        if not BUNDLE_NAME.fullmatch(name):
            raise PersonaAxisError(
                f"Bundle name {name!r} is not allowed; use letters, digits, '.', '_' or '-' "
                "(at most 64)."
            )
        if name in self.bundles:
            raise Conflict(f"A bundle named {name!r} is already served; unload it first.")
        bundle.check_against(self.lm.model, allow_mismatch=self.allow_mismatch)
        served = Served(name, bundle, self.lm, default_cap, self.lock)
        with self._registry_lock:
            if name in self.bundles:
                raise Conflict(f"A bundle named {name!r} is already served.")
            self.bundles = {**self.bundles, name: served}
        return served

    def unload(self, name: str) -> None:
        """Stop serving bundle ``name`` to new requests (not the default bundle)."""
        self.served(name)
        if name == self.default_bundle:
            raise Conflict(
                f"{name!r} is the default bundle (requests without 'bundle' use it); it cannot "
                "be unloaded."
            )
        with self._registry_lock:
            self.bundles = {key: value for key, value in self.bundles.items() if key != name}

    def served(self, name: str | None) -> Served:
        """The served bundle ``name`` (None = the default); raises naming the available ones."""
        key = self.default_bundle if name is None else name
        found = self.bundles.get(key)
        if found is None:
            raise NotFound(f"No bundle named {key!r} is served; available: {sorted(self.bundles)}.")
        return found

    @property
    def bundle(self) -> AxisBundle:
        """The default bundle."""
        return self.served(None).bundle

    @property
    def target_layer(self) -> int:
        return self.served(None).target_layer

    @property
    def default(self) -> Setting:
        """The default setting of the default bundle."""
        served = self.served(None)
        return Setting(served.name, served.default_cap)

    # -- requests -----------------------------------------------------------------------------

    def setting(self, cap: str | None, steer: float | None, bundle: str | None = None) -> Setting:
        """Validate a request's ``bundle`` (a served name; None = the default), ``cap`` (a name
        in that bundle, ``"none"`` or ``"on-drift"``; None = its default) and ``steer`` (a
        finite multiple with ``|m| ≤ MAX_STEER``, rounded to 0.01 (:data:`STEER_DECIMALS`);
        0 = none)."""
        served = self.served(bundle)
        name = served.default_cap if cap is None else cap
        on_drift = name == ON_DRIFT
        name = served.bundle.resolve_cap(RECOMMENDED if on_drift else name)
        if steer is not None and (not math.isfinite(steer) or abs(steer) > MAX_STEER):
            raise PersonaAxisError(
                f"steer {steer} is out of range; give a multiple of the mean residual norm "
                f"between -{MAX_STEER:g} and {MAX_STEER:g} (+ = toward the Assistant)."
            )
        if steer is not None:
            steer = round(steer, STEER_DECIMALS)
        return Setting(served.name, name, steer or None, on_drift)

    def read_drift(
        self, served: Served, setting: Setting, conversation: Sequence[Message]
    ) -> tuple[RequestDrift, Setting]:
        """The drift rule over the request's earlier turns (:mod:`~persona_axis.serve.drift`;
        one pass up to the rule's layer when there is an earlier assistant turn), and the
        setting to generate with: an on-drift request keeps its cap only while the gate is
        armed."""
        history = any(message["role"] == "assistant" for message in conversation)
        with self.lock if history else nullcontext():
            drift = RequestDrift.read(
                self.lm, served.bundle, served.rule, list(conversation), on_drift=setting.on_drift
            )
        if setting.on_drift and not drift.gate.armed:
            setting = replace(setting, cap=None)
        return drift, setting

    def prompt(self, conversation: Sequence[Message]) -> list[int]:
        """Token ids of the rendered prompt (with the assistant header) of ``conversation``."""
        return list(self.lm.chat.render(conversation, add_generation_prompt=True).input_ids)

    def prompt_length(self, conversation: Sequence[Message]) -> int:
        return len(self.prompt(conversation))

    def row(
        self,
        key: Hashable,
        served: Served,
        setting: Setting,
        sampling: Sampling,
        conversation: Sequence[Message],
    ) -> RowRequest:
        """A continuous-batching row for one request (its spec and the bundle's probe)."""
        spec = served.spec(setting)
        chosen = spec if spec.interventions else None
        return RowRequest(key, self.prompt(conversation), sampling, chosen, served.probe)

    def floors(self, served: Served, setting: Setting) -> dict[int, float]:
        """Layer → floor of the cap of ``setting`` (the last floor per layer), residual units."""
        return {
            item.layer: float(item.floor)
            for item in served.spec(setting).interventions
            if item.floor is not None
        }

    def telemetry(
        self, served: Served, setting: Setting, turn: Turn, drift: RequestDrift | None = None
    ) -> dict[str, Any]:
        """The ``persona_axis`` object of a response (projections on the unit axis); the drift
        rule's reading of the reply after the request's history (``drift``; None: the reply
        alone)."""
        if drift is None:
            drift = RequestDrift.read(self.lm, served.bundle, served.rule, [], on_drift=False)
        reading = drift.telemetry(turn.reply.text, len(turn.reply.token_ids), turn.before)
        floors = self.floors(served, setting)
        cap_layers = [
            {"layer": layer, "before": values[0], "after": values[1], "floor": floors[layer]}
            for layer, values in sorted((turn.cap_layers or {}).items())
        ]
        return {
            "bundle": served.name,
            "cap": setting.cap,
            "steer": setting.steer,
            "layer": served.target_layer,
            "projection_before": turn.before,
            "projection_after": turn.after,
            "cap_touched_fraction": turn.touched,
            "cap_touched_tokens": turn.touched_tokens,
            "cap_layers": cap_layers,
            **reading,
        }

    def describe(self) -> dict[str, Any]:
        """The default bundle's settings (what the web page reads), and every bundle's."""
        bundles = self.bundles
        return {
            **self.served(None).describe(),
            "default_bundle": self.default_bundle,
            "bundles": {name: served.describe() for name, served in sorted(bundles.items())},
        }
