"""The model side of the server: intervention settings, batched generation, per-reply telemetry.

An :class:`Engine` is used by one thread only (the scheduler's worker), except for
:meth:`Engine.setting` and :meth:`Engine.prompt_length`, which only read the bundle and the
tokenizer and are called from request handlers. Every batch runs under one
:class:`~persona_axis.inference.interventions.InterventionSpec` with
:func:`~persona_axis.inference.session.generate_turns`, whose hooks are all removed when it
returns, so
no hook outlives its batch and batches with different settings never share one.

Streaming: while a batch generates, a forward pre-hook on the decoder stack reads the token ids
fed at each decoding step, i.e. the tokens sampled one step earlier, and hands them to a
callback. Text therefore streams token by token, one decoding step behind the sampler; the last
token of a reply (never fed back) arrives with the finished reply.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from persona_axis.axis.bundle import NO_CAP, RECOMMENDED, AxisBundle
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Sampling, stop_ids
from persona_axis.inference.hooks import feeding_tokens
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.session import Turn, generate_turns
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel
from persona_axis.serve.drift import DriftBand

MAX_STEER = 8.0
"""Largest ``|steer|`` accepted, in multiples of the target layer's mean residual norm."""
LOCK_KEY = "persona_axis.serve.generation_lock"
"""``LoadedModel.extra`` entry: a lock held while a batch generates, shared by every engine on
the same model, so two apps serving one model take turns instead of mixing hooks."""


@dataclass(frozen=True)
class Setting:
    """One intervention setting: a cap from the bundle (None = no cap) and a steering multiple
    ``steer`` m (``h ← h + m·n̄_L·â_L`` at the target layer; None = no steering)."""

    cap: str | None = None
    steer: float | None = None

    @property
    def label(self) -> str:
        """The cap name or ``"none"``, for metrics labels (steering is not in the label)."""
        return self.cap or NO_CAP


@dataclass(frozen=True)
class BatchKey:
    """Requests with equal keys may share a batch: same intervention setting, same sampling."""

    setting: Setting
    sampling: Sampling


class Cancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised from the token callback to abandon a batch whose requests were all cancelled."""


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


class Engine:
    """A loaded model with its bundle: resolves settings, runs batches, reports telemetry."""

    def __init__(
        self,
        lm: LoadedModel,
        bundle: AxisBundle,
        *,
        default_cap: str = RECOMMENDED,
        allow_mismatch: bool = False,
    ) -> None:
        bundle.check_against(lm.model, allow_mismatch=allow_mismatch)
        self.lm = lm
        self.bundle = bundle
        self.lock: threading.Lock = lm.extra.setdefault(LOCK_KEY, threading.Lock())
        self.band = DriftBand.from_bundle(bundle)
        self.stops = set(stop_ids(lm))
        self.default = Setting(bundle.resolve_cap(default_cap), None)
        self._mean_norm: float | None = None
        self._specs: dict[Setting, InterventionSpec] = {}
        config = getattr(lm.model.config, "get_text_config", lambda: lm.model.config)()
        positions = getattr(config, "max_position_embeddings", None)
        self.context_length: int | None = int(positions) if positions else None

    @property
    def target_layer(self) -> int:
        return self.bundle.target_layer

    def setting(self, cap: str | None, steer: float | None) -> Setting:
        """Validate a request's ``cap`` (a name in the bundle or ``"none"``; None = the server's
        default) and ``steer`` (a finite multiple with ``|m| ≤ MAX_STEER``; 0 = none)."""
        name = self.default.cap if cap is None else self.bundle.resolve_cap(cap)
        if steer is not None and (not math.isfinite(steer) or abs(steer) > MAX_STEER):
            raise PersonaAxisError(
                f"steer {steer} is out of range; give a multiple of the mean residual norm "
                f"between -{MAX_STEER:g} and {MAX_STEER:g} (+ = toward the Assistant)."
            )
        return Setting(name, steer or None)

    def prompt_length(self, conversation: Sequence[Message]) -> int:
        """Tokens of the rendered prompt (with the assistant header) of ``conversation``."""
        return len(self.lm.chat.render(conversation, add_generation_prompt=True).input_ids)

    def mean_norm(self) -> float:
        """Mean residual norm at the target layer (the bundle's, else estimated once)."""
        if self._mean_norm is None:
            self._mean_norm = float(self.bundle.mean_norms(self.lm)[self.target_layer])
        return self._mean_norm

    def spec(self, setting: Setting) -> InterventionSpec:
        """The interventions of ``setting``: the cap's floors, then the steering addition."""
        found = self._specs.get(setting)
        if found is None:
            found = self.bundle.intervention(setting.cap, setting.steer, lm=self.lm)
            self._specs[setting] = found
        return found

    def floors(self, setting: Setting) -> dict[int, float]:
        """Layer → floor of the cap of ``setting`` (the last floor per layer), residual units."""
        return {
            item.layer: float(item.floor)
            for item in self.spec(setting).interventions
            if item.floor is not None
        }

    @torch.no_grad()
    def run(
        self,
        key: BatchKey,
        conversations: Sequence[Sequence[Message]],
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> list[Turn]:
        """Generate one reply per conversation in one batch under ``key``'s setting.

        ``on_tokens`` gets the fed token ids at each decoding step (see the module docstring);
        raising :class:`Cancelled` from it abandons the batch (hooks are still removed).
        """
        with self.lock:
            spec = self.spec(key.setting)
            if on_tokens is None:
                return generate_turns(self.lm, conversations, spec, key.sampling, self.bundle)
            with feeding_tokens(self.lm.stack.module, on_tokens):
                return generate_turns(self.lm, conversations, spec, key.sampling, self.bundle)

    def telemetry(self, setting: Setting, turn: Turn) -> dict[str, Any]:
        """The ``persona_axis`` object of a response (projections on the unit axis)."""
        zone = None
        if self.band is not None and turn.before is not None:
            zone = self.band.zone(turn.before)
        floors = self.floors(setting)
        cap_layers = [
            {"layer": layer, "before": values[0], "after": values[1], "floor": floors[layer]}
            for layer, values in sorted((turn.cap_layers or {}).items())
        ]
        return {
            "cap": setting.cap,
            "steer": setting.steer,
            "layer": self.target_layer,
            "projection_before": turn.before,
            "projection_after": turn.after,
            "cap_touched_fraction": turn.touched,
            "cap_touched_tokens": turn.touched_tokens,
            "cap_layers": cap_layers,
            "drift": None if zone is None else zone == "drift",
            "zone": zone,
            "band": None if self.band is None else self.band.to_dict(),
        }

    def describe(self) -> dict[str, Any]:
        """What a client needs to pick settings and draw the drift meter."""
        return {
            "target_layer": self.target_layer,
            "default_cap": self.default.cap or NO_CAP,
            "recommended_cap": self.bundle.recommended_cap,
            "caps": {
                name: {"layers": setting.layers, "percentile": setting.percentile}
                for name, setting in sorted(self.bundle.caps.items())
            },
            "band": None if self.band is None else self.band.to_dict(),
            "max_steer": MAX_STEER,
        }
