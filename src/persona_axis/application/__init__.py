"""The bundle-aware application layer: capped generation with a bundle, chat sessions.

It sits above ``inference/`` (which takes only tensors and specs) and ``axis/`` (the bundle):
a bundle is weight-checked against the model, its cap or steering setting turned into an
intervention, and each reply read at the bundle's target layer (docs/method.md conventions).
"""
