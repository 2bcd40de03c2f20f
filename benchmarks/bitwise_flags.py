"""Do XLA CPU flags make sv.sample bitwise across batch sizes, and what do they cost?

Each setting runs in its own process (XLA_FLAGS is read once, at start-up), the
settings interleaved in rounds. A child reports, for the exact eps of the default
mixture in a few dimensions: how many samples of batches 1, 7, 256 and 1000
differ in any bit from the same samples in a batch of 1024, and the time per
step of a jitted 200-step ``sv.sample`` (best of ``--repeats``) at a few shapes.
The table gives, per setting and shape, the median time over rounds with its
min-max, and the ratio to the default's median.

    python benchmarks/bitwise_flags.py --rounds 3 --force
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

SETTINGS = {
    "default": "",
    "no YNNPACK fusions": "--xla_cpu_experimental_ynn_fusion_type=",
    "no FMA (AVX)": "--xla_cpu_max_isa=AVX",
    "both": "--xla_cpu_max_isa=AVX --xla_cpu_experimental_ynn_fusion_type=",
}
SHAPES = ((2, 4096), (64, 1024), (3072, 64))  # (D, batch) timed
STEPS = 200
OUT = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's sdevp_jax


def child(repeats: int) -> dict:
    import time

    import jax

    import sdevp_jax as sv

    state = sv.set_timesteps(sv.create_state(), STEPS)
    key = jax.random.key(0)
    result = {"differing": {}, "ms_per_step": {}}
    for dim in (2, 3, 64):
        model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(dim))

        def draw(batch):
            return np.asarray(jax.jit(lambda k: sv.sample(state, model_fn, k, (batch, dim)))(key))

        ref = draw(1024)
        result["differing"][f"{dim}-D"] = sum(int(np.sum(np.any(draw(b) != ref[:b], axis=1))) for b in (1, 7, 256, 1000))
    for dim, batch in SHAPES:
        model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(dim))
        fn = jax.jit(lambda k: sv.sample(state, model_fn, k, (batch, dim)))
        fn(key).block_until_ready()
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            fn(jax.random.key(i)).block_until_ready()
            times.append(time.perf_counter() - start)
        result["ms_per_step"][f"{dim}-D x {batch}"] = 1e3 * min(times) / STEPS
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.repeats)))
        return 0
    from sdevp_jax._io import atomic_write

    runs = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, flags in SETTINGS.items():
            env = dict(os.environ, XLA_FLAGS=flags)
            proc = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                                  env=env, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import jax

    lines = [f"Machine: {platform.machine()} ({os.cpu_count()} cores), jax {jax.__version__}, CPU backend; "
             f"{STEPS} Euler-Maruyama steps, {args.rounds} rounds, best of {args.repeats} per round.", "",
             "| setting | XLA_FLAGS | samples differing from batch 1024 (2-D / 3-D / 64-D) | "
             + " | ".join(f"ms/step {dim}-D x {batch}" for dim, batch in SHAPES) + " |",
             "|---" * (3 + len(SHAPES)) + "|"]
    base = {k: float(np.median([r["ms_per_step"][k] for r in runs["default"]])) for k in runs["default"][0]["ms_per_step"]}
    for name, flags in SETTINGS.items():
        differing = " / ".join(str(max(r["differing"][d] for r in runs[name])) for d in ("2-D", "3-D", "64-D"))
        cells = []
        for k in base:
            t = [r["ms_per_step"][k] for r in runs[name]]
            med = float(np.median(t))
            cells.append(f"{med:.3f} ({min(t):.3f}-{max(t):.3f}), x{med / base[k]:.2f}")
        shown = f"`{flags}`" if flags else "(none)"
        lines.append(f"| {name} | {shown} | {differing} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "bitwise_flags.md", lambda f: f.write(text.encode()), overwrite=args.force)
    atomic_write(args.out / "bitwise_flags.json", lambda f: f.write(json.dumps(runs, indent=1).encode()),
                 overwrite=args.force)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
