"""Grid fits with and without fitted model times (``sv.fit_grid(..., fit_model_times=True)``) on held-out x_T.

The protocol of ``benchmarks/fitted_grids.py`` (its held-out teacher and metrics are imported
from there): Stable Diffusion's schedule, the exact default mixture of each ``--dims``; fits on
``--fit-batch`` x_T from key 0 (teacher: 61 Karras times, 4 Heun steps between them),
``--iterations`` Adam steps from the log-SNR grid; the RMS to a finer teacher (8 Heun steps
between the 61 times, then the data prediction at ``sampling_eps``) and the sliced W2 to as many
exact samples, on ``--eval-sets`` held-out sets of ``--eval-batch`` x_T (keys 1000 + r). The
rows: the fixed grids (``logsnr``, ``karras``, ``time_quadratic``, Align Your Steps), the
grid-only gradient fit and the grid + model-time fit. Prints a markdown table per (dim, method)::

    python benchmarks/fitted_model_times.py --eval-sets 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import sdevp_jax as sv  # noqa: E402
from sdevp_jax import fitting  # noqa: E402
from accuracy_vs_nfe import sliced_w2  # noqa: E402
from fitted_grids import FIXED, held_out, sd_state, unit_directions  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--solvers", nargs="+", default=["dpm_solver_pp", "ipndm"])
    parser.add_argument("--nfes", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    parser.add_argument("--fit-batch", type=int, default=256)
    parser.add_argument("--eval-batch", type=int, default=2000)
    parser.add_argument("--eval-sets", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--directions", type=int, default=64)
    args = parser.parse_args(argv)
    state = sd_state()
    print(f"command: python benchmarks/fitted_model_times.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    for dim in args.dims:
        mixture = sv.mixtures.default_mixture(dim)
        model_fn = sv.mixtures.make_mixture_eps_fn(state, mixture)
        directions = unit_directions(args.directions, dim)
        sets = []
        for r in range(args.eval_sets):
            x_T, target, _ = held_out(state, model_fn, jax.random.key(1000 + r), args.eval_batch, dim, 8)
            exact = np.asarray(sv.mixtures.sample_mixture(mixture, jax.random.key(2000 + r), args.eval_batch))
            sets.append((x_T, target, exact))
        for method in args.solvers:
            table = {}
            for nfe in args.nfes:
                n = fitting.num_points_for_nfe(method, nfe)
                candidates = {s: (np.asarray(sv.set_timesteps(state, n, spacing=s).timesteps, np.float64), None)
                              for s in FIXED}
                candidates["ays"] = (sv.grids.align_your_steps(state, n), None)
                for name, shift in (("gradient (grid only)", False), ("gradient + model times", True)):
                    start = time.perf_counter()
                    out = sv.fit_grid(state, model_fn, jax.random.key(0), (args.fit_batch, dim), method=method,
                                      nfe=nfe, algorithm="gradient", iterations=args.iterations,
                                      fit_model_times=shift)
                    grid, times = out if shift else (out, None)
                    candidates[name] = (grid, times)
                    print(f"dim {dim} {method} nfe {nfe} {name}: fitted in {time.perf_counter() - start:.1f} s; "
                          f"grid {np.round(grid, 4).tolist()}"
                          + ("" if times is None else f" model times {np.round(times, 4).tolist()}"), flush=True)
                for name, (grid, times) in candidates.items():
                    st = sv.set_timesteps(state, timesteps=grid, model_times=times)
                    run_fn = jax.jit(lambda x, st=st: sv.sample_ode(st, model_fn, jax.random.key(0), x.shape,
                                                                    method=method, x_init=x))
                    rms, sw2 = [], []
                    for x_T, target, exact in sets:
                        out = run_fn(x_T)
                        rms.append(float(jnp.sqrt(jnp.mean(jnp.sum(jnp.square(out - target), axis=1)))))
                        sw2.append(sliced_w2(np.asarray(out, np.float64), exact, directions))
                    table.setdefault(name, {})[nfe] = (float(np.mean(rms)), float(np.mean(sw2)))
            best = {nfe: min(table[s][nfe][0] for s in (*FIXED, "ays")) for nfe in args.nfes}
            print(f"\n**{dim}-D, `{method}`**, RMS to the teacher (sliced W2 to exact samples):\n")
            print("| grid | " + " | ".join(f"NFE {nfe}" for nfe in args.nfes) + " |")
            print("|---|" + "---|" * len(args.nfes))
            for name, cells in table.items():
                print(f"| {name} | " + " | ".join(f"{cells[nfe][0]:.3f} ({cells[nfe][1]:.3f})" for nfe in args.nfes)
                      + " |")
            ratio = {nfe: table["gradient + model times"][nfe][0] / best[nfe] for nfe in args.nfes}
            print("| grid + model times / best fixed | " + " | ".join(f"{ratio[nfe]:.2f}" for nfe in args.nfes)
                  + " |\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
