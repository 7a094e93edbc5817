"""Equality of two builds across processes, thread counts and hosts.

What "equal" means (:func:`assert_same_build`). Compared exactly: the stored rollouts (prompts,
sampled token ids and replies) and judge records, and every integer. Float noise moves a
sampled token only when its uniform draw lies within rounding of a boundary of the nucleus's
cumulative distribution, which ``sample_tokens`` takes in token-id order for that reason (in
rank order, a Zen 4 host's 2-thread build of the tiny model sampled another token than its
1-thread build: noise had swapped two near-equal tokens). Floats computed in another process
are not bit-identical: each of two local actors runs torch with ``cores // workers`` threads,
CPU kernels split some reductions by thread count and by instruction set (AVX2, AVX-512, AMX),
so sums are taken in another order and the last bits differ. On an Intel AVX-512/AMX host, a
sharded build's ``caps.json`` differed from the one-process build's in one digit, with byte-
identical rollouts. So activations and vectors are compared with rtol = atol = 1e-5, and the
numbers of ``caps.json`` and ``manifest.json`` (derived from those floats, some rounded for
print) within :data:`JSON_RTOL`/:data:`JSON_ATOL` plus one unit in their last printed digit;
their other fields (names, counts, settings, text around numbers) must be equal.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

TENSOR_TOL = 1e-5  # rtol and atol on stored activations, norms and bundle vectors
# Bundle numbers are projections and statistics of those tensors: a 1e-5 change in an
# activation moves a projection on the unit axis by at most 1e-5 * sqrt(d) in the worst case.
JSON_RTOL = JSON_ATOL = 1e-4
# A number standing alone in text, not part of a name, hash or version ("layers_2:3-p75",
# "88e594171", "0.1.0"); exponents as Python prints them ("1e-05").
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]\d+)?(?![\w.])")


def printed_unit(text: str) -> float:
    """One unit in the last digit of a number as printed ("0.0254" -> 1e-4, "3.0" -> 0.1)."""
    mantissa, _, exponent = text.lower().partition("e")
    return 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))


def numbers_close(want: str, got: str) -> bool:
    """Two printed numbers within the JSON tolerance plus one unit in their last printed digit
    (a value rounded for the manifest may round the other way when its last float bits
    differ). Integers, which count or name things, must be equal."""
    if not any(c in text.lower() for text in (want, got) for c in ".e"):
        return want == got
    slack = min(printed_unit(want), printed_unit(got))  # the longer one shows the rounding
    return math.isclose(float(want), float(got), rel_tol=JSON_RTOL, abs_tol=JSON_ATOL + slack)


def assert_json_close(want: Any, got: Any, where: str = "") -> None:
    """Equal JSON, except that numbers (also numbers inside text) may differ by the stated
    tolerance; booleans, integers, keys, lengths and all other text must be equal."""
    if isinstance(want, dict) and isinstance(got, dict):
        assert want.keys() == got.keys(), where
        for key in want:
            assert_json_close(want[key], got[key], f"{where}.{key}")
    elif isinstance(want, list) and isinstance(got, list):
        assert len(want) == len(got), where
        for k, (a, b) in enumerate(zip(want, got, strict=True)):
            assert_json_close(a, b, f"{where}[{k}]")
    elif isinstance(want, str) and isinstance(got, str):
        assert NUMBER.split(want) == NUMBER.split(got), (where, want, got)
        for a, b in zip(NUMBER.findall(want), NUMBER.findall(got), strict=True):
            assert numbers_close(a, b), (where, want, got)
    elif isinstance(want, float) or isinstance(got, float):
        assert not isinstance(want, bool) and not isinstance(got, bool), where
        assert isinstance(want, int | float) and isinstance(got, int | float), where
        assert numbers_close(repr(float(want)), repr(float(got))), (where, want, got)
    else:  # int, bool, None: exact
        assert type(want) is type(got) and want == got, (where, want, got)


def assert_tensors_close(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Integer tensors (token ids, lengths) equal; float tensors within TENSOR_TOL."""
    assert want.keys() == got.keys()
    for key, tensor in want.items():
        assert tensor.dtype == got[key].dtype and tensor.shape == got[key].shape, key
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, got[key], rtol=TENSOR_TOL, atol=TENSOR_TOL)
        else:
            assert torch.equal(tensor, got[key]), key


def assert_same_build(want: Path, got: Path) -> None:
    """The same build (see the module docstring): rollout and judge files byte for byte,
    tensors and bundle numbers within the stated tolerances."""
    work = [want / "work", got / "work"]
    names = sorted(p.name for p in (work[0] / "rollouts").iterdir())
    assert names == sorted(p.name for p in (work[1] / "rollouts").iterdir())
    for kind in ("rollouts", "judge"):
        assert sorted(p.name for p in (work[0] / kind).iterdir()) == sorted(
            p.name for p in (work[1] / kind).iterdir()
        ), kind
        for item in (work[0] / kind).iterdir():
            assert item.read_bytes() == (work[1] / kind / item.name).read_bytes(), item.name
    assert (work[0] / "header.json").read_bytes() == (work[1] / "header.json").read_bytes()
    for name in names:
        tensors = name.replace(".json", ".safetensors")
        assert_tensors_close(*(load_file(str(w / "activations" / tensors)) for w in work))
    assert_tensors_close(
        *(load_file(str(d / "bundle" / "vectors.safetensors")) for d in (want, got))
    )
    caps = [json.loads((d / "bundle" / "caps.json").read_text()) for d in (want, got)]
    assert_json_close(caps[0], caps[1], "caps")
    manifests = [json.loads((d / "bundle" / "manifest.json").read_text()) for d in (want, got)]
    for manifest in manifests:  # wall-clock facts of each run
        manifest.pop("timings"), manifest.pop("created_utc")
    assert_json_close(manifests[0], manifests[1], "manifest")
