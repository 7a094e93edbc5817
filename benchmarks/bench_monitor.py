"""The drift monitor on long conversations and on many 15-turn ones: time and peak memory.

``long``: one conversation of about N tokens (``--tokens``; made by concatenating the turns of
our labelled dev conversations, ``evaldata/monitor/*_dev.jsonl``), read by

- ``windowed``: today's monitor: the context policy (window = trained positions − 1/16, keep
  1/4, 1,024-token chunks through the KV cache), target layer plus the recommended cap's layers;
- ``windowed-target``: the same, target layer only (either with ``@N``: N-token chunks);
- ``single-pass``: the monitor before the context policy: one forward pass over the whole
  rendering (positions past the model's 8,192 and attention buffers that grow with the square
  of the length), run under a time limit (``--timeout``) and an address-space limit
  (``--single-pass-memory-gib``) so it cannot take the machine down.

``many``: ``--conversations`` conversations of 15 turns (about 1,900 tokens each, messages from
the same dev files, cut to 400 characters), read one per pass (batch 1) and batched (batch 8),
today's monitor vs the single pass.

Every variant runs in a fresh subprocess (model loaded first, then the kernel's peak-RSS mark
reset, so "activation memory" is the peak RSS after loading minus the RSS after loading), in
alternating order over ``--rounds``; times are medians. Run under ``cpu exclusive``.

    cpu exclusive python benchmarks/bench_monitor.py long --bundle B --tokens 2000 8000 --rounds 3
    cpu exclusive python benchmarks/bench_monitor.py many --bundle B --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, peak_rss_mib, reset_peak_rss, rss_mib

ROOT = Path(__file__).resolve().parent.parent
DEV = [ROOT / "evaldata" / "monitor" / name for name in ("benign_dev.jsonl", "drifting_dev.jsonl")]
FIFTEEN = 15
CUT = 400


def dev_turns() -> list[tuple[str, str]]:
    """(user, assistant) pairs of the dev conversations, in file order."""
    pairs = []
    for path in DEV:
        for line in path.read_text().splitlines():
            messages = [m for m in json.loads(line)["messages"] if m["role"] != "system"]
            for user, reply in zip(messages[::2], messages[1::2], strict=False):
                if user["role"] == "user" and reply["role"] == "assistant":
                    pairs.append((user["content"], reply["content"]))
    return pairs


def long_conversation(lm: Any, tokens: int) -> list[dict[str, str]]:
    """Dev turns concatenated (cycling) until the rendering holds at least ``tokens``."""
    pairs = dev_turns()
    messages: list[dict[str, str]] = []
    index = 0
    while True:
        user, reply = pairs[index % len(pairs)]
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        index += 1
        if index % 4 == 0 and len(lm.chat.render(messages).input_ids) >= tokens:
            return messages


def fifteen_turn_conversations(n: int) -> list[list[dict[str, str]]]:
    pairs = dev_turns()
    out = []
    for number in range(n):
        chosen = [pairs[(number * 7 + i) % len(pairs)] for i in range(FIFTEEN)]
        out.append(
            [
                {"role": role, "content": text[:CUT]}
                for user, reply in chosen
                for role, text in (("user", user), ("assistant", reply))
            ]
        )
    return out


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process; prints its JSON result."""
    import torch

    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.context import ContextPolicy
    from persona_axis.drift.monitor import default_extra_layers, monitor
    from persona_axis.drift.projections import projections_from_tokens
    from persona_axis.drift.rule import DriftRule
    from persona_axis.models import load_model

    if args.memory_limit_gib:
        limit = int(args.memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(args.threads)
    bundle = AxisBundle.load(args.bundle)
    lm = load_model(bundle.model_id, dtype=args.dtype)
    target = bundle.target_layer
    variant, _, chunk = args.variant.partition("@")
    extra = [] if variant.endswith("target") else default_extra_layers(bundle)
    layers = sorted({target, *extra})
    if args.job == "long":
        conversations = [long_conversation(lm, args.tokens)]
    else:
        conversations = fifteen_turn_conversations(args.conversations)
    n_tokens = [len(lm.chat.render(c).input_ids) for c in conversations]
    base = rss_mib()
    reset_peak_rss()
    started = time.perf_counter()
    if variant.startswith("single-pass"):
        rendered = [lm.chat.render(c) for c in conversations]
        projections_from_tokens(
            lm,
            bundle.axis,
            [r.input_ids for r in rendered],
            [[s.segments for s in r.role_spans("assistant")] for r in rendered],
            layers,
            batch_size=args.batch_size,
        )
    else:
        rule = DriftRule(target, None, None)
        policy = ContextPolicy(chunk_tokens=int(chunk)) if chunk else ContextPolicy()
        monitor(
            lm,
            bundle,
            conversations,
            extra_layers=extra,
            rule=rule,
            policy=policy,
            batch_size=args.batch_size,
        )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "activation_mib": peak_rss_mib() - base,
        "tokens": n_tokens,
        "layers": layers,
    }


def child(args: argparse.Namespace, variant: str, **extra: Any) -> dict[str, Any]:
    """Run one variant in a fresh process; its result or why it did not finish."""
    command = [sys.executable, __file__, args.job, "--one", "--variant", variant]
    command += ["--bundle", str(args.bundle), "--dtype", args.dtype, "--threads", str(args.threads)]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"stopped after the {args.timeout} s time limit"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {
            "failed": f"exit {done.returncode} after {time.perf_counter() - started:.0f} s: "
            f"{last[:160]}"
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results if "failed" not in r]
    if not ok:
        return {"failed": results[0]["failed"]}
    return {
        "seconds": statistics.median(r["seconds"] for r in ok),
        "activation_mib": statistics.median(r["activation_mib"] for r in ok),
        "tokens": ok[0]["tokens"],
        "rounds": len(ok),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=["long", "many"])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, nargs="+", default=[2000, 8000, 32000, 64000])
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--memory-limit-gib", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--single-pass-memory-gib",
        type=float,
        default=12.0,
        help="address-space limit of the single-pass variant (so it cannot exhaust the machine)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.tokens = args.tokens[0]
        print(json.dumps(run_one(args)))
        return
    print(f"# {machine()}, dtype {args.dtype}", flush=True)
    if args.job == "long":
        variants = args.variants or ["windowed", "windowed-target", "single-pass"]
        for tokens in args.tokens:
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for round_index in range(args.rounds):
                shift = round_index % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    limit = args.single_pass_memory_gib if variant == "single-pass" else 0
                    runs[variant].append(
                        child(args, variant, tokens=tokens, memory_limit_gib=limit)
                    )
            for variant, results in runs.items():
                row = {"job": "long", "target_tokens": tokens, "variant": variant}
                print(json.dumps({**row, **summarise(results)}), flush=True)
    else:
        variants = args.variants or ["windowed:1", "windowed:8", "single-pass:1", "single-pass:4"]
        runs = {v: [] for v in variants}
        for round_index in range(args.rounds):
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                name, batch = variant.rsplit(":", 1)
                limit = args.single_pass_memory_gib if name == "single-pass" else 0
                runs[variant].append(
                    child(
                        args,
                        name,
                        conversations=args.conversations,
                        batch_size=batch,
                        memory_limit_gib=limit,
                    )
                )
        for variant, results in runs.items():
            summary = summarise(results)
            if "seconds" in summary:
                summary["seconds_per_conversation"] = summary["seconds"] / args.conversations
                summary["mean_tokens"] = statistics.fmean(summary.pop("tokens"))
            print(json.dumps({"job": "many", "variant": variant, **summary}), flush=True)


if __name__ == "__main__":
    main()
