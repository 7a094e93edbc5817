"""Evaluations of capping: persona-jailbreak harm, capability, role susceptibility, the sweep.

Every evaluation compares conditions (no intervention vs a named cap setting of an AxisBundle,
or steering) on the same seeded prompts, and reports rates with Wilson 95% intervals. Runs on
the embedded 135M default model are smoke-sized: their absolute numbers are low and noisy and
say little about large chat models; use a GPU and a real judge model for paper-size runs.
"""
