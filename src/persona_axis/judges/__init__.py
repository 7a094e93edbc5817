"""Judges: chat backends (OpenAI-compatible, local HF), one LLM-judge engine, and its two
rubrics (role adherence 0-3, harm categories) with offline heuristic stand-ins; one factory."""

from persona_axis.judges.factory import (
    harm_judge,
    judge_from_config,
    role_judge,
    settings_from_flags,
)

__all__ = ["harm_judge", "judge_from_config", "role_judge", "settings_from_flags"]
