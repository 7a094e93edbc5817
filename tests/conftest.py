"""Shared fixtures: the embedded SmolLM2 model (session-scoped: it loads once per run).

Tiny random models with test templates come from :mod:`support.tiny_models` (cached per process).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download; set before HF imports

import pytest
import torch

from persona_axis.models import LoadedModel, load_model

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm() -> LoadedModel:
    """The embedded default model, SmolLM2-135M-Instruct, float32."""
    return load_model()
