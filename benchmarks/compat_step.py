"""sdevp_jax.compat inside diffusers 0.39's FlaxStableDiffusionPipeline (the tiny random pipeline of
tests/flax_pipeline.py): each adapter's agreement with the pipeline's own Flax scheduler (or with sv.sample_ode
where diffusers has no runnable Flax class), and the CPU time per step of the Flax scheduler, the adapter and
sv.sample_ode in the same pipeline, interleaved in rounds.

Time per step: the jitted generation (text encoder, denoising loop, VAE decoder) at 10 and at 30 steps;
(t30 - t10) / 20 removes what does not depend on the step count. CPU time is the process's
(``time.process_time``: all threads), wall time beside it. Needs the flax-pipeline extra.

    python benchmarks/compat_step.py --rounds 3 --force
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import flax_pipeline as fp  # noqa: E402

import sdevp_jax as sv  # noqa: E402
from sdevp_jax import compat  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STEPS = (10, 30)
SD_DDIM = dict(fp.SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
CASES = [  # label, adapter, config, options, Flax class (None: against sample_ode)
    ("DDIM", compat.DDIMAdapter, SD_DDIM, {}, "FlaxDDIMScheduler"),
    ("DPM-Solver++ 2M", compat.DPMSolverMultistepAdapter, fp.SD_SCHEDULE, {"flax_labels": True},
     "FlaxDPMSolverMultistepScheduler"),
    ("DPM-Solver++ 3M", compat.DPMSolverMultistepAdapter, dict(fp.SD_SCHEDULE, solver_order=3),
     {"flax_labels": True}, "FlaxDPMSolverMultistepScheduler"),
    ("Euler (leading)", compat.EulerDiscreteAdapter, dict(fp.SD_SCHEDULE, timestep_spacing="leading"), {},
     "FlaxEulerDiscreteScheduler"),
    ("UniPC bh2, order 2", compat.UniPCMultistepAdapter, fp.SD_SCHEDULE, {}, None),
    ("LMS, order 4", compat.LMSDiscreteAdapter, fp.SD_SCHEDULE, {}, None),
]


def generator(parts, scheduler, state):
    """The pipeline's own _generate, jitted: (steps) -> images."""
    pipe, params = fp.pipeline(parts, scheduler, state)
    ids = pipe.prepare_inputs(["a photo of a cat", "a red dog"])
    gen = jax.jit(pipe._generate, static_argnums=(3, 4, 5))
    return lambda steps: gen(ids, params, jax.random.key(0), steps, fp.HEIGHT, fp.WIDTH, jnp.float32(7.5))


def ode_generator(parts, adapter):
    """sv.sample_ode on the adapter's grid with the pipeline's guided UNet, from the pipeline's latents, decoded."""
    model_fn = fp.guided_model(parts)
    vae, _, _, _, params = parts
    # the pipeline's start: its latents times init_noise_sigma; a sigma-space adapter's sample is x_VP / alpha
    fns = {}

    def start(steps):
        x = fp.initial_latents() * adapter.create_state().init_noise_sigma
        return x * adapter.stepper(steps).grid.alpha[0] if adapter.sigma_space else x

    def run(steps):
        if steps not in fns:
            state = adapter.stepper(steps).state
            method, options = state.diffusers_config.solver_options()

            def gen(x):
                latents = sv.sample_ode(state, model_fn, None, x.shape, x_init=x, method=method, **options)
                image = vae.apply({"params": params["vae"]}, latents / vae.config.scaling_factor,
                                  method=vae.decode).sample
                return (image / 2 + 0.5).clip(0, 1).transpose(0, 2, 3, 1)

            fns[steps] = jax.jit(gen)
        return fns[steps](start(steps))

    return run


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="compat_step")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    out_json, out_md = RESULTS / f"{args.name}.json", RESULTS / f"{args.name}.md"
    if out_json.exists() and not args.force:
        sys.exit(f"{out_json} exists: pass --force to overwrite")
    fp.quiet()
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        parts = fp.components(Path(tempfile.mkdtemp()))
        agreement = []
        for label, adapter, config, options, flax_name in CASES:
            ours = adapter(**config, **options)
            got = generator(parts, ours, ours.create_state())
            if flax_name is not None:
                import diffusers

                flax = getattr(diffusers, flax_name)(**config)
                want, against = generator(parts, flax, flax.create_state()), flax_name
            else:
                want, against = ode_generator(parts, ours), "sv.sample_ode, same grid"
            row = {"adapter": type(ours).__name__, "case": label, "against": against}
            for steps in STEPS:
                row[f"rel_{steps}"] = rel(got(steps), want(steps))
            if flax_name is not None:  # the float32 floor: the Flax scheduler's jitted run against its unjitted one
                pipe, params = fp.pipeline(parts, flax, flax.create_state())
                row["floor_30"] = rel(fp.images(pipe, params, 30), want(30))
            agreement.append(row)
            print(row, flush=True)

        import diffusers

        dpm = dict(fp.SD_SCHEDULE)
        ours = compat.DPMSolverMultistepAdapter(**dpm, flax_labels=True)
        flax = diffusers.FlaxDPMSolverMultistepScheduler(**dpm)
        impls = {"Flax scheduler (FlaxDPMSolverMultistepScheduler)": generator(parts, flax, flax.create_state()),
                 "adapter (DPMSolverMultistepAdapter)": generator(parts, ours, ours.create_state()),
                 "sv.sample_ode (dpm_solver_pp, same grid)": ode_generator(parts, ours)}
        for fn in impls.values():  # compile both step counts first
            for steps in STEPS:
                jax.block_until_ready(fn(steps))
        times = {name: {steps: {"cpu": [], "wall": []} for steps in STEPS} for name in impls}
        for _ in range(args.rounds):
            for name, fn in impls.items():
                for steps in STEPS:
                    cpu, wall = time.process_time(), time.perf_counter()
                    jax.block_until_ready(fn(steps))
                    times[name][steps]["cpu"].append(time.process_time() - cpu)
                    times[name][steps]["wall"].append(time.perf_counter() - wall)
    per_step = {}
    for name, t in times.items():
        per_step[name] = {kind: [(b - a) / (STEPS[1] - STEPS[0]) * 1e3 for a, b in zip(t[STEPS[0]][kind],
                                                                                        t[STEPS[1]][kind])]
                          for kind in ("cpu", "wall")}
    machine = os.environ.get("SV_MACHINE", f"{platform.machine()}, {os.cpu_count()} cores (2-core VM shared with "
                                           f"other jobs)")
    record = {"machine": machine, "jax": jax.__version__, "diffusers": diffusers.__version__,
              "command": "python benchmarks/compat_step.py " + " ".join(sys.argv[1:]), "rounds": args.rounds,
              "batch": 2, "latents": [4, 8, 8], "agreement": agreement, "per_step_ms": per_step}
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = out_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out_json)
    lines = [f"# sdevp_jax.compat in diffusers {diffusers.__version__}'s FlaxStableDiffusionPipeline", "",
             f"`{record['command']}` on {machine}, JAX {jax.__version__}; the tiny random pipeline of "
             f"tests/flax_pipeline.py (batch 2, latents 4x8x8, guidance 7.5).", "",
             "## Agreement (max |a - b| / max |b| on the images)", "",
             "| adapter | case | against | 10 steps | 30 steps | floor at 30 steps (the Flax scheduler, jitted "
             "pipeline vs unjitted) |", "|---|---|---|---|---|---|"]
    for row in agreement:
        floor = f"{row['floor_30']:.1e}" if "floor_30" in row else "-"
        lines.append(f"| `{row['adapter']}` | {row['case']} | `{row['against']}` | {row['rel_10']:.1e} | "
                     f"{row['rel_30']:.1e} | {floor} |")
    lines += ["", f"## Time per step, ms ((t30 - t10) / 20; median of {args.rounds} interleaved rounds, each "
              "round's values listed)", "", "| implementation | CPU time | wall time |", "|---|---|---|"]
    for name, v in per_step.items():
        cpu, wall = v["cpu"], v["wall"]
        lines.append(f"| {name} | {np.median(cpu):.1f} ({', '.join(f'{c:.1f}' for c in cpu)}) | "
                     f"{np.median(wall):.1f} ({', '.join(f'{w:.1f}' for w in wall)}) |")
    tmp = out_md.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out_md)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
