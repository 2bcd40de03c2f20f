"""The ``sdevp-jax`` console script.

``sdevp-jax sample`` draws samples of the embedded 2-D Gaussian mixture with the
VP-SDE scheduler and its exact noise-prediction model, and writes them to
``OUT/samples.npz`` (array ``samples``, shape ``(num_samples, 2)``, float32) and a
plot over the target density to ``OUT/samples.png``. Existing files are never
overwritten without ``--force``, and each file is written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np

OUTPUT_NAMES = ("samples.npz", "samples.png")
MAX_PLOTTED = 5000


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` that parses an int in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sdevp-jax`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="sdevp-jax", description="The VP-SDE diffusion scheduler in JAX."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sample = commands.add_parser(
        "sample",
        help="sample the embedded 2-D Gaussian mixture",
        description="Sample the embedded 2-D Gaussian mixture with the exact noise model, "
        "and write OUT/samples.npz and OUT/samples.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = sample.add_argument
    add("--steps", type=_int_at_least(1), default=1000, help="number of reverse-SDE steps")
    add("--num-samples", type=_int_at_least(1, 2**32), default=4096, help="number of samples")
    add("--batch-size", type=_int_at_least(1), default=1024, help="samples per compiled call")
    # jax.random.key keeps only a seed's low 32 bits unless x64 is enabled.
    add("--seed", type=_int_at_least(0, 2**32 - 1), default=0, help="PRNG seed")
    add("--out", type=Path, default=Path("samples"), help="output directory (created if missing)")
    add("--force", action="store_true", help="overwrite existing output files")
    add("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via a temporary file in its directory and ``os.replace``."""
    tmp = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp.name, 0o666 & ~umask)  # the mode a plain open() would give
        os.replace(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise


def draw_samples(
    steps: int, num_samples: int, batch_size: int, seed: int, progress: bool = True
) -> np.ndarray:
    """Sample the default mixture in chunks of one compiled batch size.

    Every chunk has the full batch size (the last one is cut after the call), so
    the sampler compiles once; sample ``b`` depends only on ``(seed, b)``, so the
    result does not depend on ``batch_size``.

    Returns:
      The samples, shape ``(num_samples, 2)``, float32.
    """
    import jax
    from tqdm import tqdm

    import sdevp_jax as sv

    state = sv.set_timesteps(sv.create_state(), steps)
    model_fn = sv.make_mixture_eps_fn(state, sv.default_mixture())
    sample_fn = jax.jit(sv.sample, static_argnums=(1, 3))
    key = jax.random.key(seed)
    batch = min(batch_size, num_samples)
    chunks = []
    with tqdm(total=num_samples, unit="samples", disable=None if progress else True) as bar:
        for offset in range(0, num_samples, batch):
            x = sample_fn(state, model_fn, key, (batch, 2), index_offset=np.uint32(offset))
            take = min(batch, num_samples - offset)
            chunks.append(np.asarray(x, dtype=np.float32)[:take])
            bar.update(take)
    return np.concatenate(chunks, axis=0)


def plot_samples(samples: np.ndarray, steps: int, file: IO[bytes]) -> None:
    """Save a PNG scatter of (at most 5000) samples over the density at ``t = sampling_eps``."""
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import sdevp_jax as sv

    state = sv.create_state()
    mixture = sv.default_mixture()
    eps, bmin, bmax = state.sampling_eps, state.beta_min, state.beta_max
    alpha, sigma = sv.sde.alpha(eps, bmin, bmax), sv.sde.sigma(eps, bmin, bmax)

    shown = samples[:MAX_PLOTTED]
    means, scales = np.asarray(mixture.means), np.asarray(mixture.scales)
    lim = float(np.max(np.abs(means)) + 4.0 * np.max(scales))
    finite = shown[np.all(np.isfinite(shown), axis=1)]
    if finite.size:  # widen the view to show stray samples, up to a point
        lim = max(lim, min(float(np.max(np.abs(finite))) * 1.05, 10.0))
    axis = np.linspace(-lim, lim, 300, dtype=np.float32)
    gx, gy = np.meshgrid(axis, axis)
    grid = jnp.asarray(np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1))
    log_density = np.asarray(sv.diffused_log_prob(mixture, grid, alpha, sigma))
    density = np.exp(log_density).reshape(gx.shape)

    fig, ax = plt.subplots(figsize=(6, 6))
    filled = ax.contourf(gx, gy, density, levels=30, cmap="viridis")
    fig.colorbar(filled, ax=ax, fraction=0.046, pad=0.04, label=f"target density at t = {eps:g}")
    ax.scatter(shown[:, 0], shown[:, 1], s=2, c="white", alpha=0.6, linewidths=0)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="$x_1$", ylabel="$x_2$")
    ax.set_title(f"VP-SDE: {len(samples)} samples, {steps} steps ({len(shown)} shown)")
    fig.tight_layout()
    fig.savefig(file, format="png", dpi=120)
    plt.close(fig)


def run_sample(args: argparse.Namespace) -> int:
    """The ``sample`` subcommand; returns the exit code."""
    out: Path = args.out
    paths = [out / name for name in OUTPUT_NAMES]
    if not args.force:
        for path in paths:
            if path.exists():
                msg = f"sdevp-jax: error: {path} exists; pass --force to overwrite it"
                print(msg, file=sys.stderr)
                return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"sdevp-jax: error: cannot create output directory {out}: {err}", file=sys.stderr)
        return 1

    start = time.perf_counter()
    samples = draw_samples(
        args.steps, args.num_samples, args.batch_size, args.seed, progress=not args.no_progress
    )
    seconds = time.perf_counter() - start
    npz_path, png_path = paths
    _atomic_write(npz_path, lambda f: np.savez(f, samples=samples))
    _atomic_write(png_path, lambda f: plot_samples(samples, args.steps, f))
    print(
        f"wrote {npz_path} and {png_path}: {args.num_samples} samples, "
        f"{args.steps} steps, seed {args.seed}, sampled in {seconds:.1f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sdevp-jax``.

    Args:
      argv: the arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
      The exit code: 0 on success, 2 for a usage error or an output file that
      exists without ``--force``, 1 if the output directory cannot be created.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return run_sample(args)


if __name__ == "__main__":
    raise SystemExit(main())
