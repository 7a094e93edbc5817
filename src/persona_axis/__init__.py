"""persona-axis: compute, monitor and stabilise the Assistant Axis of chat models.

Conventions used across the package (see METHOD.md):
- layer L is the output of decoder block L, 0-based (= Hugging Face ``hidden_states[L + 1]``);
- projections are taken on the unit axis, in float32;
- caps are floors along +axis (higher projection = more Assistant-like).
"""

from persona_axis.errors import PersonaAxisError

__version__ = "0.1.0"

__all__ = ["PersonaAxisError", "__version__"]
