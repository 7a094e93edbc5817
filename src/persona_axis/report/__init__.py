"""The HTML report of a bundle: persona space, axis rankings, caps, drift; one self-contained
file (charts are PNGs embedded as base64 data URIs, styles inline, no scripts, no network)."""

from persona_axis.report.page import build_report, write_report

__all__ = ["build_report", "write_report"]
