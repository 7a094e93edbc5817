"""Resumption under stress: SIGKILL a small build at 20 random points, resume after each, and
check that the final bundle equals an uninterrupted run's with no rollout lost or duplicated.

The build: a tiny random Llama and the four-role test catalog (tests/support/small_catalog.py),
batch size 1 so that the plan has 47 batches. The first 16 kills land while batches are
generated (once a random number of batches is stored, plus a random 0-150 ms, so kills also hit
the middle of a batch or of a file write); the last 4 land after generation, at random times in
the judge / vectors / quality / calibrate / save stages. Each round starts a fresh process with
the same settings, as a user rerunning the command would.

    cpu shared python benchmarks/bench_resume_stress.py [--kills 20] [--seed 0] [--out DIR]

Prints one line per kill and a verdict; exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

WORKER = """
import json, sys
from persona_axis.pipeline import BuildConfig, build
build(BuildConfig(**json.loads(sys.argv[1])), sys.argv[2])
"""
DEADLINE_S = 600


def start(settings: dict, out: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(settings), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stored(out: Path) -> int:
    folder = out / "work" / "rollouts"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def timed_run(settings: dict, out: Path) -> tuple[float, float, float]:
    """An uninterrupted run: (seconds to the first stored batch, to the last, to the end)."""
    total = None
    started = time.monotonic()
    worker = start(settings, out)
    first = last = None
    while worker.poll() is None and time.monotonic() - started < DEADLINE_S:
        n = stored(out)
        if n and first is None:
            first = time.monotonic() - started
        if total is None and (out / "work" / "header.json").is_file():
            total = json.loads((out / "work" / "header.json").read_text())["batches"]
        if total and n >= total and last is None:
            last = time.monotonic() - started
        time.sleep(0.005)
    _, err = worker.communicate()
    if worker.returncode != 0:
        raise SystemExit(f"the uninterrupted build failed:\n{err.decode()[-3000:]}")
    end = time.monotonic() - started
    return first or end, last or end, end


def kill_round(settings: dict, out: Path, target: int | None, total: int, delay: float) -> dict:
    """Start the build; SIGKILL it once ``target`` of its ``total`` batches are stored (None:
    all of them), ``delay`` seconds later. Returns what the round saw."""
    before = stored(out)
    goal = total if target is None else target
    started = time.monotonic()
    worker = start(settings, out)
    while worker.poll() is None and stored(out) < goal:
        if time.monotonic() - started > DEADLINE_S:
            break
        time.sleep(0.002)
    time.sleep(delay)
    finished = worker.poll() is not None
    worker.send_signal(signal.SIGKILL)
    _, err = worker.communicate()
    if finished and worker.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"a resumed build failed:\n{err.decode()[-3000:]}")
    return {
        "target": target,
        "delay_s": round(delay, 3),
        "stored_before": before,
        "stored_after": stored(out),
        "bundle": (out / "bundle" / "manifest.json").is_file(),
        "killed": not finished,
        "seconds": round(time.monotonic() - started, 1),
    }


def compare(reference: Path, resumed: Path) -> list[str]:
    """Every difference between two finished build directories, plus lost or duplicated
    rollout ids in the resumed one."""
    from safetensors.torch import load_file

    problems = []
    for kind in ("rollouts", "judge", "activations"):
        names = sorted(p.name for p in (reference / "work" / kind).iterdir())
        got = sorted(p.name for p in (resumed / "work" / kind).iterdir())
        if names != got:
            problems.append(f"work/{kind}: files {sorted(set(names) ^ set(got))} differ")
            continue
        for name in names:
            if (reference / "work" / kind / name).read_bytes() != (
                resumed / "work" / kind / name
            ).read_bytes():
                problems.append(f"work/{kind}/{name} differs")
    ids = [
        r["id"]
        for path in sorted((resumed / "work" / "rollouts").glob("*.json"))
        for r in json.loads(path.read_text())["rollouts"]
    ]
    total = json.loads((resumed / "work" / "header.json").read_text())["rollouts"]
    lost = sorted(set(range(total)) - set(ids))
    duplicated = len(ids) - len(set(ids))
    if lost or duplicated:
        problems.append(f"rollouts lost: {lost}, duplicated: {duplicated}")
    want = load_file(str(reference / "bundle" / "vectors.safetensors"))
    have = load_file(str(resumed / "bundle" / "vectors.safetensors"))
    if want.keys() != have.keys() or any(not bool((want[k] == have[k]).all()) for k in want):
        problems.append("bundle vectors differ")
    if (reference / "bundle" / "caps.json").read_bytes() != (
        resumed / "bundle" / "caps.json"
    ).read_bytes():
        problems.append("bundle caps differ")
    manifests = []
    for directory in (reference, resumed):
        manifest = json.loads((directory / "bundle" / "manifest.json").read_text())
        manifest.pop("timings"), manifest.pop("created_utc")
        manifests.append(manifest)
    if manifests[0] != manifests[1]:
        problems.append("bundle manifests differ (beyond timings and creation time)")
    leftovers = [str(p) for p in resumed.rglob("*.tmp")] + [
        str(p) for p in resumed.iterdir() if p.name.startswith(".")
    ]
    if leftovers:
        problems.append(f"temporary files left behind: {leftovers}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Keep the build folders here.")
    args = parser.parse_args()
    from support.small_catalog import tiny_build_config

    root = args.out or Path(tempfile.mkdtemp(prefix="resume-stress-"))
    config = tiny_build_config(root / "setup").with_overrides(
        batch_size=1,
        judge={"backend": "heuristic"},
        role_scores=(0, 1, 2, 3),
        token_percentile_rollouts=16,
    )
    settings = asdict(config)
    first, last, end = timed_run(settings, root / "reference")
    n_batches = stored(root / "reference")
    print(
        f"uninterrupted: {n_batches} batches; first stored after {first:.1f} s, last after "
        f"{last:.1f} s, finished after {end:.1f} s"
    )
    rng = random.Random(args.seed)
    during = max(0, args.kills - 4)
    targets = sorted(rng.sample(range(1, n_batches - 1), during))
    plan = [(t, rng.uniform(0, 0.15)) for t in targets]
    plan += [(None, rng.uniform(0, 0.8 * (end - last))) for _ in range(args.kills - during)]
    resumed = root / "resumed"
    kills = []
    for index, (target, delay) in enumerate(plan, 1):
        if (resumed / "bundle" / "manifest.json").is_file():
            print(f"kill {index}: the build had already finished; no interruption left to try")
            break
        seen = kill_round(settings, resumed, target, n_batches, delay)
        kills.append(seen)
        where = "after generation" if target is None else f"at {target} batches"
        print(
            f"kill {index:2d} {where:>18} + {seen['delay_s']:.3f} s: stored "
            f"{seen['stored_before']:2d} -> {seen['stored_after']:2d}, "
            f"{'killed' if seen['killed'] else 'FINISHED before the kill'}"
        )
    final = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(settings), str(resumed)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        check=False,
    )
    if final.returncode != 0:
        raise SystemExit(f"the final resume failed:\n{final.stderr.decode()[-3000:]}")
    problems = compare(root / "reference", resumed)
    real = sum(k["killed"] for k in kills)
    summary = {"kills": real, "rounds": kills, "problems": problems, "batches": n_batches}
    (root / "stress.json").write_text(json.dumps(summary, indent=1))
    verdict = "IDENTICAL to the uninterrupted run" if not problems else "DIFFERENT"
    print(
        f"{real} real SIGKILLs, then a final resume: {verdict}; 0 lost or duplicated rollouts"
        if not problems
        else f"{real} real SIGKILLs: {verdict}:\n" + "\n".join(problems)
    )
    print(f"details: {root / 'stress.json'}")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
