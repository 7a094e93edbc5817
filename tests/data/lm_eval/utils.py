"""Datasets of the offline lm-eval test tasks, read from the JSON files beside this file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).parent


def _load(name: str) -> dict[str, datasets.Dataset]:
    rows = json.loads((HERE / name).read_text())
    return {"test": datasets.Dataset.from_list(rows)}


def load_mc(**kwargs: Any) -> dict[str, datasets.Dataset]:
    return _load("mc.json")


def load_gen(**kwargs: Any) -> dict[str, datasets.Dataset]:
    return _load("gen.json")
