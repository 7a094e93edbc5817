"""The tolerant build comparison (tests/support/build_equality.py) still tells builds apart."""

from __future__ import annotations

import pytest

from support.build_equality import assert_json_close, printed_unit


def test_printed_unit() -> None:
    assert printed_unit("0.0254") == pytest.approx(1e-4)
    assert printed_unit("3.0") == pytest.approx(0.1)
    assert printed_unit("1.5e-05") == pytest.approx(1e-6)


def test_json_comparison_can_fail() -> None:
    """The tolerant comparison still tells different builds apart."""
    assert_json_close({"t": [0.46831, 2]}, {"t": [0.4683, 2]})  # rounded the other way
    assert_json_close({"w": "cosine 0.47 at layer 2"}, {"w": "cosine 0.48 at layer 2"})
    for want, got in [
        ({"t": 0.5}, {"t": 0.52}),  # a different threshold
        ({"t": 1}, {"t": 2}),  # integers (counts, layers) are exact
        ({"w": "at layer 2"}, {"w": "at layer 3"}),  # so are integers in text
        ({"w": "cosine 0.40"}, {"w": "cosine 0.45"}),  # printed digits, not float repr
        ({"w": "roles"}, {"w": "traits"}),
        ({"hash": "88e594171"}, {"hash": "88e594172"}),  # hashes and versions are text
        ({"v": "0.1.0"}, {"v": "0.1.1"}),
        ({"cap": "layers_2:3-p75"}, {"cap": "layers_2:3-p74"}),
        ({"t": [1.0]}, {"t": [1.0, 1.0]}),
        ({"a": 1.0}, {"b": 1.0}),
        ({"t": True}, {"t": 1}),
    ]:
        with pytest.raises(AssertionError):
            assert_json_close(want, got)
