"""The one judge factory: a judge for role adherence or for harm from a settings dict, and the
settings dict from the command line's judge flags.

Settings: ``{"backend": "heuristic" | "none" | "openai" | "hf", ...}``. ``openai`` and ``hf``
take the chat-backend settings of :func:`~persona_axis.judges.backends.backend_from_config`
(for the judge model) plus ``max_tokens`` and ``retries_on_unparseable`` (the engine's);
``heuristic`` (an OFFLINE keyword stand-in) and ``none`` (role only: every score None) take
none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from persona_axis.errors import PersonaAxisError
from persona_axis.judges.backends import HF_KEYS, OPENAI_KEYS, backend_from_config
from persona_axis.judges.engine import LLM_OPTIONS
from persona_axis.judges.harm import HarmJudge, HeuristicHarmJudge, LLMHarmJudge
from persona_axis.judges.role import HeuristicRoleJudge, LLMRoleJudge, NoJudge, RoleJudge

Purpose = Literal["role", "harm"]
JUDGE_BACKENDS = ("openai", "hf", "heuristic", "none")
OFFLINE = ("heuristic", "none")


def judge_from_config(
    config: Mapping[str, Any], *, purpose: Purpose = "role", model_name: str | None = None
) -> Any:
    """A :class:`~persona_axis.judges.role.RoleJudge` (``purpose="role"``; ``model_name`` is the
    judged model's name, put into the rubric) or a :class:`~persona_axis.judges.harm.HarmJudge`
    (``purpose="harm"``) from ``config`` (see the module docstring)."""
    kind = config.get("backend")
    allowed_kinds = JUDGE_BACKENDS if purpose == "role" else ("openai", "hf", "heuristic")
    if kind not in allowed_kinds:
        raise PersonaAxisError(
            f"Unknown {purpose} judge backend {kind!r}; set 'backend' to one of "
            f"{', '.join(allowed_kinds)} (openai needs --judge-url and --judge-model)."
        )
    if purpose == "role" and not model_name:
        raise PersonaAxisError("A role judge needs the judged model's name (model_name).")
    if kind in OFFLINE:
        extra = sorted(set(config) - {"backend"})
        if extra:
            raise PersonaAxisError(
                f"The {kind} judge takes no settings, but got {', '.join(map(repr, extra))}; "
                "remove them."
            )
        if purpose == "harm":
            return HeuristicHarmJudge()
        return HeuristicRoleJudge(str(model_name)) if kind == "heuristic" else NoJudge()
    allowed = (*(OPENAI_KEYS if kind == "openai" else HF_KEYS), *LLM_OPTIONS)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise PersonaAxisError(
            f"Unknown {kind} judge setting(s) {', '.join(map(repr, unknown))}; "
            f"valid ones are {', '.join(allowed)}."
        )
    try:
        options = {k: int(config[k]) for k in LLM_OPTIONS if k in config}
    except (TypeError, ValueError) as exc:
        raise PersonaAxisError(
            f"Judge settings {', '.join(LLM_OPTIONS)} must be integers: {exc}."
        ) from exc
    backend = backend_from_config({k: v for k, v in config.items() if k not in LLM_OPTIONS})
    if purpose == "harm":
        return LLMHarmJudge(backend, **options)
    return LLMRoleJudge(backend, str(model_name), **options)


def role_judge(config: Mapping[str, Any], model_name: str) -> RoleJudge:
    """:func:`judge_from_config` for role adherence, typed."""
    judge: RoleJudge = judge_from_config(config, purpose="role", model_name=model_name)
    return judge


def harm_judge(config: Mapping[str, Any]) -> HarmJudge:
    """:func:`judge_from_config` for harm, typed."""
    judge: HarmJudge = judge_from_config(config, purpose="harm")
    return judge


def settings_from_flags(
    backend: str | None,
    url: str | None = None,
    model: str | None = None,
    key_env: str = "OPENAI_API_KEY",
    concurrency: int = 8,
) -> dict[str, Any] | None:
    """The judge settings from the CLI's ``--judge``, ``--judge-url``, ``--judge-model``,
    ``--judge-key-env`` and ``--judge-concurrency`` (None: no ``--judge`` given)."""
    if backend is None:
        if url or model:
            raise PersonaAxisError("--judge-url/--judge-model need --judge openai or --judge hf.")
        return None
    if backend == "openai":
        if not url or not model:
            raise PersonaAxisError("--judge openai needs --judge-url and --judge-model.")
        return {
            "backend": "openai",
            "base_url": url,
            "model": model,
            "api_key_env": key_env,
            "concurrency": concurrency,
        }
    if backend == "hf":
        return {"backend": "hf", "model": model or "default"}
    if backend in OFFLINE:
        return {"backend": backend}
    raise PersonaAxisError(
        f"Unknown judge {backend!r}; use one of {', '.join(('heuristic', 'none', 'openai', 'hf'))}."
    )
