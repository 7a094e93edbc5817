"""The Assistant Axis and what is derived from it: vectors, persona space, cap calibration,
quality metrics, and the AxisBundle artifact with its import/export formats (docs/method.md)."""
