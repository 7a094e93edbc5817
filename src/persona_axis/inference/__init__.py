"""Running a model with hooks: span capture, generation, interventions, live telemetry. It takes
tensors and specs and knows nothing of bundles (those are `axis/` and `application/`).

Layer L is the output of decoder block L, 0-based (= Hugging Face ``hidden_states[L + 1]``);
projections are on the unit axis in float32 (docs/method.md).
"""
