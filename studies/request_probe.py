"""Fit the request probe for an existing bundle and save a copy that carries it.

Bundles built before the probe existed lack it; this fits it exactly as a build does
(:func:`persona_axis.drift.request_probe.request_probe` on the package's labelled request
conversations, read by the bundle's model at ``--dtype``) and prints its provenance, including
the grouped cross-validated accuracy on those conversations:

    python studies/request_probe.py /tmp/zen4/quick-float32/bundle /tmp/zen4/probe-quick-float32 \
        --dtype float32 [--layer L]

``--layers-report 10,15,19,22`` also prints the cross-validated accuracy at other layers (the
probe is always stored at ``--layer``, default the bundle's target layer).
"""

from __future__ import annotations

import argparse
import json
import time

from persona_axis.axis.bundle import AxisBundle
from persona_axis.drift.request_probe import (
    fit_request_probe,
    labelled_chats,
    read_requests,
    request_probe,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("out")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--layer", type=int)
    parser.add_argument("--layers-report", default="")
    args = parser.parse_args()
    bundle = AxisBundle.load(args.bundle)
    lm = bundle.load_model(dtype=args.dtype)
    started = time.perf_counter()
    probe = request_probe(lm, bundle, layer=args.layer)
    seconds = time.perf_counter() - started
    print(json.dumps({"layer": probe.layer, "seconds": round(seconds, 1), **probe.provenance}))
    probe.store(bundle)
    bundle.save(args.out)
    chats = labelled_chats()
    for layer in [int(x) for x in args.layers_report.split(",") if x]:
        requests = read_requests(lm, bundle, [c.messages for c in chats], layer)
        other = fit_request_probe(requests, [c.performed for c in chats], layer)
        facts = other.provenance
        print(f"layer {layer}: cv accuracy {facts['cv_accuracy']}, C {facts['C']}")


if __name__ == "__main__":
    main()
