"""The ``sdevp-jax`` console script.

``sdevp-jax sample`` runs a resumable sampling job (:mod:`sdevp_jax.jobs`): by
default the embedded 2-D Gaussian mixture with its exact noise model, any
sampler of the registry, written in chunks to ``OUT/chunks/`` with a manifest,
then ``OUT/samples.npz`` (array ``samples``) and, for 2-D samples, a picture in
``OUT/samples.png``: the samples over contour lines of the exact target density,
and their per-mode weights against the exact ones. Rerunning the same command
resumes an interrupted job, recomputes nothing already written and ends bitwise
equal to an uninterrupted run; a different job (another batch size included)
aimed at the same directory is refused. Files that are not a job's are never overwritten
without ``--force``, and chunks of another job never, with or without it (each chunk carries a
record with the job's id and its SHA-256: see :mod:`sdevp_jax.jobs`). A chunk with a NaN or inf
sample stops the job unless ``--allow-nonfinite``. Every error a user can cause prints one line
``sdevp-jax: error: ...`` and exits non-zero. Compiled samplers go to JAX's persistent compilation cache
(``--cache-dir``, default ``$SDEVP_JAX_CACHE_DIR`` or ``~/.cache/sdevp-jax/jax``;
``--no-cache`` to skip it), so a rerun or a resumed job does not compile again.
The model's schedule comes from ``--config`` (a ``ScoreSdeVpScheduler`` config, or a
discrete scheduler's such as Stable Diffusion's DDIM/PNDM ``scheduler_config.json``), or
``--schedule linear|cosine`` for a continuous one; ``--prediction-type`` says what the
model returns and ``--spacing`` picks the grid. The embedded mixture is exact under
any of them. ``--method`` takes every sampler of the registry -- the SDE predictors, the
ODE solvers and the stochastic ``sde_dpm_solver_pp`` -- and ``--order``, ``--solver-type``,
``--eta``, ``--final-sigmas-type``, ``--[no-]lower-order-final``, ``--third-order`` and
``--thresholding`` (with ``--dynamic-thresholding-ratio``, ``--sample-max-value``) set the
options of the methods they apply to (an error for any other method; see
:func:`sdevp_jax.jobs.solver_defaults`). ``--class K`` draws every sample from class ``K``
of the embedded class-conditional mixture (:func:`sdevp_jax.mixtures.default_class_mixture`: five
modes in three classes), exact ``p(x | K)``; ``--guidance-scale W`` adds classifier-free
guidance with the null class (one batched call of both halves), ``--guidance-interval LO HI``
restricts it to continuous times in ``[LO, HI]`` and ``--guidance-rescale PHI`` applies
CFG-rescale; a user's ``--model`` with ``--class`` is called ``model_fn(x, t, cond)`` (the class
per sample, -1 for the null class). The picture then shows the class's exact density
and weights. ``sdevp-jax info`` prints the backend, devices, versions, the schedule (of the
same options), the embedded model's classes and the methods with their kind.

``sdevp-jax fit-grid --method M --nfe K --out FILE`` fits the times of ``M``'s grid at ``K``
network calls to the model of the same model, schedule, solver and class options as ``sample``
(:func:`sdevp_jax.fit_grid`, ``--algorithm dp`` or ``gradient``, on ``--batch-size`` starting
points drawn from ``--seed``) and writes them with :func:`sdevp_jax.fitting.save_grid`, recording
the model identity (``--model-id``, default the ``--model`` string), the sample shape and the
class and guidance; an existing ``FILE`` is refused without ``--force``. ``sample --grid FILE``
samples on those times: the file is checked against the command's schedule, method and options,
model identity, shape and class (:func:`sdevp_jax.jobs.with_saved_grid`; any difference is an
error that names it), the grid's length is the number of steps, and the job's manifest records
the times, so that a job never resumes on another grid.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np

#: The CLI's own file in a job's directory, beside the job's (refused there without --force when no job owns it).
PICTURE = "samples.png"
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


def _json_tuple(text: str) -> tuple:
    """A JSON array as nested tuples (a static tuple option, e.g. restart's ``[[3, 2, 0.06, 0.3]]``)."""
    import json

    def tuples(value):
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a JSON array, got {text!r}") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a JSON array, got {text!r}")
    return tuples(value)


def _float_arg(accept, requirement: str):
    """An argparse type: a float for which ``accept(value)`` holds, else an error saying ``requirement``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


_positive_float = _float_arg(lambda v: v > 0, "a finite number > 0")


def _event_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 3,32,32, got {text!r}") from None
    if any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"every dimension must be >= 1, got {text!r}")
    return shape


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, spacing: bool = True) -> None:
    """The options that name the model's schedule, prediction type and grid (``sample`` and ``info``; ``fit-grid``
    without ``--spacing``: it fits the grid)."""
    from .config import DISCRETE_CLASSES
    from .denoiser import PREDICTION_TYPES
    from .grids import SPACINGS

    add = parser.add_argument
    add("--config", type=Path, default=None,
        help="a diffusers scheduler_config.json: ScoreSdeVpScheduler's (the linear schedule) or a discrete "
             f"scheduler's ({', '.join(c.removesuffix('Scheduler') for c in DISCRETE_CLASSES)}; e.g. Stable "
             "Diffusion's), whose schedule, prediction type and timestep_spacing it sets (default: the paper's VP)")
    add("--schedule", default=None, choices=["linear", "cosine"],
        help="a continuous noise schedule (default: the --config's; linear without one)")
    add("--cosine-s", type=_non_negative_float, default=None,
        help="the cosine schedule's offset s (default 0.008; with --schedule cosine)")
    add("--prediction-type", default=None, choices=list(PREDICTION_TYPES),
        help="what the model returns (default: the --config's; epsilon without one)")
    if spacing:
        add("--spacing", default=None, choices=list(SPACINGS),
            help="the grid of times: default 'reference' (ScoreSdeVpScheduler's) for the linear schedule, the "
                 "config's timestep_spacing for a discrete one, 'logsnr' otherwise")


def model_options(args: argparse.Namespace) -> dict:
    """The JobSpec fields of the model options: ``scheduler``, ``schedule``, ``prediction_type``, ``spacing``.

    Raises:
      ValueError: contradictory options (``--schedule`` with a discrete ``--config``,
        ``--schedule cosine`` with a ScoreSdeVpScheduler one, a ``--prediction-type`` other
        than a discrete config's, ``--cosine-s`` without ``--schedule cosine``) or a bad config.
      OSError: ``--config`` cannot be read.
    """
    from .config import FIELDS, config_dict, discrete_config_dict, read_config_file, state_from_config

    options: dict = {}
    if args.cosine_s is not None and args.schedule != "cosine":
        raise ValueError("--cosine-s needs --schedule cosine")
    if args.config is not None:
        config, source = read_config_file(args.config)
        state = state_from_config(config, source=source)
        cfg = state.diffusers_config
        if cfg is not None:
            if args.schedule is not None:
                raise ValueError(f"--schedule {args.schedule} contradicts --config {source}: a {cfg.class_name} "
                                 "config fixes the model's (discrete) schedule")
            if args.prediction_type is not None and args.prediction_type != cfg.prediction_type:
                raise ValueError(f"--prediction-type {args.prediction_type} contradicts --config {source}, whose "
                                 f"prediction_type is {cfg.prediction_type!r}")
            options["scheduler"] = discrete_config_dict(cfg)
        else:
            if args.schedule == "cosine":
                raise ValueError(f"--schedule cosine contradicts --config {source}: a ScoreSdeVpScheduler config "
                                 "is the linear schedule")
            saved = config_dict(state)
            options["scheduler"] = {k: saved[k] for k in FIELDS}
    if args.schedule == "cosine":
        options["schedule"] = {"kind": "cosine", "s": 0.008 if args.cosine_s is None else args.cosine_s}
    if args.prediction_type is not None:
        options["prediction_type"] = args.prediction_type
    if getattr(args, "spacing", None) is not None:
        options["spacing"] = args.spacing
    return options


def _solver_option_flags() -> dict:
    """Each solver option's flag and argparse arguments, read from the solver classes (the registry).

    A bool option that is on by default gets ``--no-NAME``, one that is off ``--NAME``, one whose
    default differs between methods both (shown ``--[no-]NAME``);
    an int ``--NAME N`` (>= 1), a float ``--NAME X`` (finite; the solver checks its range), a tuple
    ``--NAME JSON`` (a JSON array, e.g. ``--restarts '[[3, 2, 0.06, 0.3]]'``),
    a string ``--NAME`` with the choices of every solver that takes it. The help is the
    option's own, with the methods it applies to.
    """
    from . import jobs, solvers

    flags = {}
    for name in jobs.SOLVER_FIELDS:
        methods = solvers.methods_with(name)
        fields = [solvers.option_fields(solvers.get(m))[name] for m in methods]
        default = fields[0].default
        applies = f" [{', '.join(methods)}]"
        dash = name.replace("_", "-")
        if isinstance(default, bool) and len({f.default for f in fields}) > 1:  # on for some methods, off for others
            flag = f"--[no-]{dash}"
            kwargs = {"dest": name, "action": argparse.BooleanOptionalAction, "default": None}
        elif isinstance(default, bool):
            flag = f"--no-{dash}" if default else f"--{dash}"
            kwargs = {"dest": name, "action": "store_const", "const": not default, "default": None}
        elif isinstance(default, int):
            flag, kwargs = f"--{dash}", {"type": _int_at_least(1), "default": None}
        elif isinstance(default, float):
            flag, kwargs = f"--{dash}", {"type": _float_arg(lambda v: True, "a finite number"), "default": None}
        elif isinstance(default, tuple):
            flag, kwargs = f"--{dash}", {"type": _json_tuple, "default": None}
        else:
            choices = list(dict.fromkeys(c for f in fields for c in (f.metadata.get("choices") or ())))
            flag, kwargs = f"--{dash}", {"default": None, "choices": choices or None}
        defaults = [f.default for f in fields]
        if len(set(map(repr, defaults))) > 1:  # e.g. order: each method's own default
            applies = " [default: " + ", ".join(f"{m} {d}" for m, d in zip(methods, defaults)) + "]"
        helps = list(dict.fromkeys(f.metadata["help"] for f in fields))
        text = helps[0] if len(helps) == 1 else "; ".join(
            f"{', '.join(m for m, f in zip(methods, fields) if f.metadata['help'] == h)}: {h}" for h in helps)
        flags[name] = (flag, kwargs | {"help": text + applies})
    return flags


#: The solver options' flags, by JobSpec field (from the registry).
_SOLVER_OPTION_FLAGS = _solver_option_flags()
SOLVER_FLAGS = {name: flag for name, (flag, _) in _SOLVER_OPTION_FLAGS.items()}


def add_solver_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every solver (``None`` when not given: the method's default)."""
    for flag, kwargs in _SOLVER_OPTION_FLAGS.values():
        parser.add_argument(flag.replace("[no-]", ""), **kwargs)  # BooleanOptionalAction adds the --no- form


def solver_options(args: argparse.Namespace) -> dict:
    """The JobSpec fields of the solver options given on the command line.

    Raises:
      ValueError: an option given for a method it does not apply to (named by its flag).
    """
    from .jobs import option_methods

    options = {name: getattr(args, name) for name in SOLVER_FLAGS if getattr(args, name) is not None}
    for name in options:
        if name in ("dynamic_thresholding_ratio", "sample_max_value") and not args.thresholding:
            raise ValueError(f"{SOLVER_FLAGS[name]} needs --thresholding")
        methods = option_methods(name)
        if args.method not in methods:
            raise ValueError(f"{SOLVER_FLAGS[name]} applies to --method {', '.join(methods)}; not to {args.method}")
    return options


_unit_float = _float_arg(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def add_condition_arguments(parser: argparse.ArgumentParser) -> None:
    """The class and guidance options of ``sample`` (``None`` when not given)."""
    add = parser.add_argument
    add("--class", dest="class_label", type=_int_at_least(0), default=None, metavar="K",
        help="draw every sample from class K: of the embedded class-conditional mixture (classes 0-2; 'sdevp-jax "
             "info' lists their modes), or passed to a user's model_fn(x, t, cond) as cond (int32, per sample)")
    add("--guidance-scale", type=_non_negative_float, default=None, metavar="W",
        help="classifier-free guidance towards --class with the null class (-1): 1 is the conditional model, 0 the "
             "unconditional one, > 1 sharpens the class (default: no guidance)")
    add("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
        help="guide only at continuous times t in [LO, HI], 0 <= LO < HI <= 1 (Kynkaanniemi et al. 2024); the "
             "conditional model elsewhere (default: every time)")
    add("--guidance-rescale", type=_unit_float, default=None, metavar="PHI",
        help="CFG-rescale (Lin et al. 2024) in [0, 1]: the guided prediction's per-sample std pulled towards the "
             "conditional one's, over each sample's entries (meant for images; with few entries, as in 2-D, the "
             "ratio of two stds of 2 numbers can be large) (default 0)")


#: The condition options' flags, by JobSpec field.
CONDITION_FLAGS = {"class_label": "--class", "guidance_scale": "--guidance-scale",
                   "guidance_interval": "--guidance-interval", "guidance_rescale": "--guidance-rescale"}


def condition_options(args: argparse.Namespace) -> dict:
    """The JobSpec fields of the class and guidance options given on the command line.

    Raises:
      ValueError: guidance without ``--class``, an interval or rescale without
        ``--guidance-scale``, a class outside the embedded model's classes, an interval
        outside ``[0, 1]`` or reversed (each named by its flag).
    """
    from .jobs import DEFAULT_CLASSES

    options = {name: getattr(args, name) for name in CONDITION_FLAGS if getattr(args, name) is not None}
    if "guidance_scale" in options and "class_label" not in options:
        raise ValueError("--guidance-scale needs --class K (the class that guidance steers towards)")
    for name in ("guidance_interval", "guidance_rescale"):
        if name in options and "guidance_scale" not in options:
            raise ValueError(f"{CONDITION_FLAGS[name]} needs --guidance-scale")
    num_classes = len(set(DEFAULT_CLASSES))
    if args.model == "default" and options.get("class_label", 0) >= num_classes:
        raise ValueError(f"--class must be one of the embedded model's classes 0..{num_classes - 1}, "
                         f"got {options['class_label']}")
    if "guidance_interval" in options:
        lo, hi = options["guidance_interval"]
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 1.0):
            raise ValueError(f"--guidance-interval LO HI must satisfy 0 <= LO < HI <= 1 (continuous times), "
                             f"got {lo:g} {hi:g}")
        options["guidance_interval"] = (lo, hi)
    return options


def describe_condition(spec) -> str:
    """``", class K, guidance W in [LO, HI], rescale PHI"`` for a conditional job; ``""`` otherwise."""
    if spec.class_label is None:
        return ""
    text = f", class {spec.class_label}"
    if spec.guidance_scale is not None:
        text += f", guidance {spec.guidance_scale:g}"
        if spec.guidance_interval is not None:
            text += f" in [{spec.guidance_interval[0]:g}, {spec.guidance_interval[1]:g}]"
        if spec.guidance_rescale:
            text += f", rescale {spec.guidance_rescale:g}"
    return text


def describe_classes() -> str:
    """One line: the embedded class-conditional mixture's classes, their modes and priors."""
    import sdevp_jax as sv

    cm = sv.mixtures.default_class_mixture(2)
    classes, weights = np.asarray(cm.classes), np.asarray(cm.mixture.weights, np.float64)
    parts = []
    for c in range(cm.num_classes):
        modes = np.flatnonzero(classes == c)
        parts.append(f"{c} = mode{'s' if len(modes) > 1 else ''} {', '.join(map(str, modes))} "
                     f"(prior {weights[modes].sum():.2g})")
    return f"classes of the embedded model (--class K): {'; '.join(parts)}"


def describe_methods() -> list[str]:
    """One line per registered method: its name, kind, order and network calls."""
    from .samplers import METHODS

    width = max(map(len, METHODS))
    return [f"method {name:<{width}}  {m.kind:<10}  order {m.order}  NFE {m.nfe}" for name, m in METHODS.items()]


def describe_model(spec) -> str:
    """One line: the job's schedule, prediction type and grid."""
    schedule = dict(spec.schedule)
    kind = schedule.pop("kind")
    if kind == "discrete":
        if schedule["trained_betas"] is not None:
            shown = f"trained_betas ({len(schedule['trained_betas'])})"
        elif schedule["beta_schedule"] == "squaredcos_cap_v2":
            shown = f"squaredcos_cap_v2, {schedule['num_train_timesteps']} steps"
        else:
            shown = (f"{schedule['beta_schedule']} {schedule['beta_start']:g}..{schedule['beta_end']:g}, "
                     f"{schedule['num_train_timesteps']} steps")
        origin = spec.scheduler["_class_name"]
        text = f"discrete ({shown}; {origin}, steps_offset {spec.scheduler['steps_offset']})"
    else:
        text = f"{kind} ({', '.join(f'{k}={v:g}' for k, v in schedule.items())}; sampling_eps " \
               f"{spec.scheduler.get('sampling_eps', 1e-3):g})"
    return f"schedule {text}, prediction_type {spec.prediction_type}, spacing {spec.spacing}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sdevp-jax`` and its subcommands."""
    from .samplers import STEP_RULES, list_methods

    parser = argparse.ArgumentParser(prog="sdevp-jax", description="The VP-SDE diffusion scheduler in JAX.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="print the backend, devices, versions and the schedule")
    add_model_arguments(info)
    sample = commands.add_parser(
        "sample",
        help="run a resumable sampling job",
        description="Draw samples in chunks (resumable after a crash, bitwise equal to an uninterrupted run) "
        "and write OUT/samples.npz and, for 2-D samples, OUT/samples.png (samples over the exact target "
        "density, per-mode weights against the exact ones). Each sample's noise depends only on the seed "
        "and its index; another --batch-size gives the same samples to float rounding, not bitwise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = sample.add_argument
    add("--method", default="euler_maruyama",
        choices=list_methods("predictor") + list_methods("ode") + list_methods("sde_solver"),
        help="sampler: a predictor of the reverse SDE, a probability-flow ODE method or the stochastic grid "
             "solver sde_dpm_solver_pp ('sdevp-jax info' lists them with their kind)")
    add("--corrector", default=None, choices=list_methods("corrector"), help="corrector at each time, before the predictor step")
    add("--snr", type=_positive_float, default=0.16, help="the corrector's signal-to-noise ratio")
    add("--corrector-steps", type=_int_at_least(1), default=1, help="corrector steps per timestep")
    add("--step-rule", default="sigma", choices=list(STEP_RULES),
        help="the corrector's step size: 'sigma' (default; 2 a_i (snr sigma(t))^2, per sample), 'snr_batch' "
             "(the paper's code: batch-mean norms, couples the batch), 'snr_sample' (per-sample norms; biased "
             "in low dimension)")
    add_solver_arguments(sample)
    add_condition_arguments(sample)
    add("--steps", type=_int_at_least(1), default=argparse.SUPPRESS,
        help="num_inference_steps of the scheduler (default 1000; with --grid the grid's length)")
    add("--grid", type=Path, default=None, metavar="FILE",
        help="sample on the times of a grid file written by 'sdevp-jax fit-grid' (or sv.fitting.save_grid), "
             "checked against this command's schedule, --method and its options, --model-id, --shape and "
             "--class/guidance; recorded in the job's manifest")
    add("--num-samples", type=_int_at_least(1, 2**32), default=4096, help="number of samples")
    add("--batch-size", type=_int_at_least(1), default=1024,
        help="samples per compiled call and per chunk file (other sizes: same samples to float rounding)")
    # jax.random.key keeps only a seed's low 32 bits unless x64 is enabled.
    add("--seed", type=_int_at_least(0, 2**32 - 1), default=0, help="PRNG seed")
    add_model_arguments(sample)
    add_model_fn_arguments(sample, "the model identity that --grid was fitted for")
    add("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the samples' dtype")
    add("--plot", action=argparse.BooleanOptionalAction, default=None,
        help="write OUT/samples.png, the first two coordinates (default: when samples are 2-D)")
    add("--out", type=Path, default=Path("samples"), help="the job directory (created if missing)")
    add("--force", action="store_true",
        help="overwrite samples.npz / samples.png that are not from a job (never another job's chunks)")
    add("--allow-nonfinite", action="store_true",
        help="write chunks with NaN or inf samples instead of stopping the job there")
    add("--no-progress", action="store_true", help="hide the progress bar")
    add("--coordinator", default=None, metavar="HOST:PORT", help="multi-process run: process 0's address")
    add("--num-processes", type=_int_at_least(1), default=1, help="multi-process run: the number of processes")
    add("--process-id", type=_int_at_least(0), default=0, help="multi-process run: this process's id")
    add("--cache-dir", type=Path, default=None,
        help="JAX's persistent compilation cache: a rerun or resumed job loads the compiled sampler from here "
        "(default: $SDEVP_JAX_CACHE_DIR, else $XDG_CACHE_HOME/sdevp-jax/jax or ~/.cache/sdevp-jax/jax)")
    add("--no-cache", action="store_true", help="do not use the persistent compilation cache")
    add_fit_grid_parser(commands)
    return parser


def add_model_fn_arguments(parser: argparse.ArgumentParser, model_id_help: str) -> None:
    """``--model``, ``--shape`` and ``--model-id`` (``sample`` and ``fit-grid``)."""
    add = parser.add_argument
    add("--model", default="default",
        help="'default' (the embedded mixture, exact under the schedule) or module:function, a model_fn(x, t) "
             "of --prediction-type taking sv.model_time (a discrete schedule's label); model_fn(x, t, cond) with "
             "--class")
    add("--shape", type=_event_shape, default=(2,), help="the shape of one sample, e.g. 3,32,32")
    add("--model-id", default=None, metavar="NAME",
        help=f"{model_id_help}, e.g. a checkpoint's name and hash; without it, the --model string")


def fittable_methods() -> list[str]:
    """The methods whose grid ``fit-grid`` fits: the deterministic fixed-grid ODE solvers (all but ``adaptive``)."""
    from .samplers import list_methods

    return [m for m in list_methods("ode") if m != "adaptive"]


def add_fit_grid_parser(commands) -> None:
    """The ``fit-grid`` subcommand's parser."""
    from .fitting import ALGORITHMS

    fit = commands.add_parser(
        "fit-grid",
        help="fit a time grid to the model for a solver and NFE, for 'sample --grid'",
        description="Fit the times of a --method's grid at --nfe network calls to the model (sv.fit_grid: GITS's "
        "dynamic programme, or gradient descent through the sampler) on --batch-size starting points x_T drawn "
        "from --seed as 'sample' draws them, and write them with what they were fitted for to the JSON file "
        "--out (sv.fitting.save_grid). 'sdevp-jax sample --grid FILE' with the same model, schedule, method and "
        "options samples on them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = fit.add_argument
    add("--method", required=True, choices=fittable_methods(),
        help="the solver that will run the grid: a deterministic fixed-grid ODE method")
    add_solver_arguments(fit)
    add("--nfe", type=_int_at_least(1), required=True,
        help="the solver's network calls per sample on the grid (the grid's length follows: "
             "sv.fitting.num_points_for_nfe)")
    add("--algorithm", default="dp", choices=list(ALGORITHMS),
        help="'dp': GITS's dynamic programme over a fine grid (one first-order step's cost); 'gradient': Adam on "
             "the grid through the compiled solver")
    add("--batch-size", type=_int_at_least(1), default=256, help="the starting points x_T the grid is fitted on")
    add("--seed", type=_int_at_least(0, 2**32 - 1), default=0, help="PRNG seed of the x_T")
    add("--fine-points", type=_int_at_least(2), default=61,
        help="the fine grid's times (Karras-spaced) through which the teacher runs: dp picks the grid among them")
    add("--teacher-substeps", type=_int_at_least(1), default=4,
        help="the teacher's Heun steps between consecutive fine times")
    add("--iterations", type=_int_at_least(1), default=None, help="gradient: Adam steps (default 200)")
    add("--learning-rate", type=_positive_float, default=None,
        help="gradient: Adam's step size on the grid's log-SNR increments (default 0.05)")
    add("--free-end", action="store_true",
        help="gradient, with a solver whose output is the data prediction at the last grid time "
             "(final_sigmas_type 'zero'): fit the last time too")
    add_model_arguments(fit, spacing=False)
    add_model_fn_arguments(fit, "the model identity recorded in the file, which 'sample --grid' checks")
    add_condition_arguments(fit)
    add("--out", type=Path, required=True, metavar="FILE", help="the grid file to write (JSON)")
    add("--force", action="store_true", help="overwrite --out if it exists")


def mode_weights(samples: np.ndarray, mixture) -> tuple[np.ndarray, np.ndarray]:
    """The fraction of ``samples`` that ``sv.mixtures.assign_modes`` gives to each mode, and its binomial standard error.

    For ``n`` samples and a fraction ``p``, the standard error is ``sqrt(p (1 - p) / n)``.
    Non-finite samples count in ``n`` but in no mode.
    """
    import sdevp_jax as sv

    flat = np.asarray(samples, np.float32).reshape(len(samples), -1)
    finite = np.all(np.isfinite(flat), axis=1)
    modes = np.asarray(sv.mixtures.assign_modes(mixture, flat[finite])) if finite.any() else np.zeros(0, int)
    p = np.bincount(modes, minlength=mixture.num_components) / len(flat)
    return p, np.sqrt(p * (1.0 - p) / len(flat))


def target_weights(spec, mixture) -> np.ndarray:
    """The exact per-mode weights of the job's target: ``p(k)``, or ``p(k | c)`` for ``--class c``.

    ``p(k | c) = p(k) / p(c)`` for the class's components (``p(c)`` their total weight), 0
    for the others (:func:`sdevp_jax.mixtures.default_class_mixture`'s grouping). With guidance the
    sampled distribution is not ``p(x | c)``; the picture still shows ``p(x | c)``.
    """
    from .jobs import DEFAULT_CLASSES

    weights = np.asarray(mixture.weights, np.float64)
    if spec.class_label is None:
        return weights
    member = np.asarray(DEFAULT_CLASSES) == spec.class_label
    return np.where(member, weights, 0.0) / weights[member].sum()


def make_figure(samples: np.ndarray, spec):
    """The figure of :func:`plot_samples` (a matplotlib Figure, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import sdevp_jax as sv
    from sdevp_jax import jobs

    flat = np.asarray(samples, np.float32).reshape(len(samples), -1)
    shown = flat[:MAX_PLOTTED, :2]
    finite = shown[np.all(np.isfinite(shown), axis=1)]
    lim = 2.5
    if finite.size:  # widen the view to show stray samples, up to a point
        lim = max(lim, min(float(np.max(np.abs(finite))) * 1.05, 10.0))
    exact = spec.model == "default"
    fig, axes = plt.subplots(1, 2 if exact else 1, figsize=(11, 5) if exact else (6, 5.5), layout="constrained",
                             squeeze=False)
    ax = axes[0, 0]
    coords = "" if flat.shape[1] == 2 else f" (coordinates 1-2 of {flat.shape[1]})"
    if exact:
        # The marginal of a diagonal mixture in two coordinates is the mixture of the
        # components' 2-D marginals, with the same weights: exact, in any dimension.
        mixture = sv.mixtures.default_mixture(flat.shape[1])
        # A class's density p(x | c) is the mixture of its components, their weights renormalised.
        weights = target_weights(spec, mixture)
        kept = weights > 0
        plane = sv.mixtures.make_mixture(weights[kept], np.asarray(mixture.means)[kept, :2],
                                np.asarray(mixture.scales)[kept, :2])
        # The samplers end at t = sampling_eps on ScoreSdeVpScheduler's grid, at t = 0 on every other;
        # the grid solvers' final step to sigma = 0 (final_sigmas_type "zero") at t = 0 on any.
        state = jobs.job_state(spec)
        eps = float(state.sampling_eps) if state.uses_reference_step and spec.final_sigmas_type != "zero" else 0.0
        alpha, sigma = (1.0, 0.0) if eps == 0.0 else (float(v) for v in state.schedule.alpha_sigma(eps))
        axis = np.linspace(-lim, lim, 300, dtype=np.float32)
        gx, gy = np.meshgrid(axis, axis)
        grid = np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)
        density = np.exp(np.asarray(sv.mixtures.diffused_log_prob(plane, grid, alpha, sigma))).reshape(gx.shape)
        # Contours at fixed fractions of the peak, so every mode shows the same rings.
        levels = float(density.max()) * np.array([0.01, 0.05, 0.2, 0.5, 0.8])
        ax.contour(gx, gy, density, levels=levels, colors="tab:blue", linewidths=1.0, zorder=1)
        target = "density" if spec.class_label is None else f"p(x | class {spec.class_label})"
        ax.plot([], [], color="tab:blue", label=f"exact {target} at t = {eps:g}:\n1, 5, 20, 50, 80% of its peak")
    # Translucent enough that the contours show through wherever the dots are dense.
    ax.scatter(shown[:, 0], shown[:, 1], s=3, c="tab:red", alpha=min(0.5, 400.0 / max(len(shown), 1)) + 0.1,
               linewidths=0, zorder=2, label=f"samples ({len(shown)} of {len(flat)} shown)")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="$x_1$", ylabel="$x_2$",
           title=("samples over the target" if exact else "samples (the target of a user's model is unknown)")
           + ("" if spec.class_label is None or not exact else f": p(x | class {spec.class_label})") + coords)
    legend = ax.legend(loc="upper right", fontsize=8, framealpha=0.9, markerscale=3)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    if exact:
        p, se = mode_weights(flat, mixture)
        k = np.arange(mixture.num_components)
        bx = axes[0, 1]
        bx.bar(k - 0.2, weights, width=0.4, color="tab:blue", alpha=0.7,
               label="exact weight" if spec.class_label is None else f"exact weight in p(x | class {spec.class_label})")
        bx.bar(k + 0.2, p, width=0.4, yerr=2 * se, capsize=4, color="tab:red", alpha=0.7,
               label="sampled fraction, ±2 SE (binomial)")
        bx.set(xticks=k, xlabel="mode (nearest component, sv.mixtures.assign_modes)", ylabel="weight",
               title="per-mode weight: sampled vs exact")
        bx.legend(fontsize=8)
    bad = len(flat) - int(np.sum(np.all(np.isfinite(flat), axis=1)))
    fig.suptitle(f"sdevp-jax {spec.method}{'' if spec.corrector is None else ' + ' + spec.corrector}"
                 f"{describe_condition(spec)}: {len(flat)} samples, {spec.steps} steps, seed {spec.seed}"
                 + (f", {bad} non-finite" if bad else ""))
    return fig


def plot_samples(samples: np.ndarray, spec, file: IO[bytes]) -> None:
    """Save a PNG: the samples over the target, and their per-mode weights against the exact ones.

    Left, at most 5000 samples (their first two coordinates) as small translucent
    dots over contour lines of the exact density at ``t = sampling_eps`` (the
    default model's mixture, marginalised to those coordinates). Right, for the
    default model, the fraction of samples nearest each mode against the mode's
    weight, with binomial error bars. A user's model gets the scatter only. With
    ``--class c`` the density and the weights are those of ``p(x | c)`` (with guidance
    too: guidance with a scale other than 1 samples another distribution), and the title
    names the class and the guidance.
    """
    import matplotlib.pyplot as plt

    fig = make_figure(samples, spec)
    fig.savefig(file, format="png", dpi=110)
    plt.close(fig)


def _error(message: str, code: int = 2) -> int:
    print(f"sdevp-jax: error: {message}", file=sys.stderr)
    return code


def _warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, like the errors (``sdevp-jax: warning: ...``)."""
    print(f"sdevp-jax: warning: {message}", file=sys.stderr if file is None else file)


def _job_spec(args: argparse.Namespace):
    """The JobSpec of the command line; ValueError/TypeError/OSError naming the flag or file otherwise."""
    from . import jobs

    options = model_options(args)  # JobSpec's defaults (the paper's VP) unless given
    steps = getattr(args, "steps", None)  # left out: 1000, or the grid's length
    saved = None
    if args.grid is not None:
        if args.spacing is not None:
            raise ValueError(f"--spacing {args.spacing} and --grid exclude each other: the grid file gives the times")
        saved = read_grid(args.grid)
        if steps is not None and steps != len(saved.timesteps):
            raise ValueError(f"--steps {steps} contradicts --grid {args.grid}, a grid of {len(saved.timesteps)} "
                             "times (leave --steps out)")
        steps = len(saved.timesteps)
    elif args.model_id is not None:
        raise ValueError("--model-id names the model that a --grid was fitted for; it needs --grid")
    spec = jobs.JobSpec(
        num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
        steps=1000 if steps is None else steps,
        method=args.method, corrector=args.corrector, snr=args.snr, corrector_steps=args.corrector_steps,
        step_rule=args.step_rule, event_shape=tuple(args.shape), model=args.model, dtype=args.dtype, **options,
        **solver_options(args), **condition_options(args),
    )
    if saved is not None:
        try:
            spec = jobs.with_saved_grid(spec, saved, model=args.model_id)
        except ValueError as err:
            raise ValueError(f"--grid {args.grid}: {err}") from None
    if spec.model == "default" and math.prod(spec.event_shape) < 2:
        raise ValueError(f"--shape {','.join(map(str, spec.event_shape))}: the default model needs at least 2 "
                         "entries per sample")
    plot = (spec.event_shape == (2,)) if args.plot is None else args.plot
    if plot and math.prod(spec.event_shape) < 2:
        raise ValueError("--plot needs samples with at least 2 entries")
    jobs.check_resources(spec)
    if spec.model != "default":  # fail before any work if the user's model cannot be imported
        jobs.load_model(spec, None)
    return spec, plot


#: What a user can cause through the command line: each ends in one line and a non-zero exit.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)


def read_grid(path: Path):
    """The :class:`~sdevp_jax.fitting.SavedGrid` in ``path``, or a ValueError naming ``--grid`` and the file."""
    from . import fitting

    try:
        return fitting.load_grid(path)
    except OSError as err:
        raise ValueError(f"--grid {path}: cannot read it ({err.strerror or err})") from None
    except (ValueError, KeyError, TypeError) as err:
        reason = f"no field {err}" if isinstance(err, KeyError) else _first_line(err).removeprefix(f"{path} ")
        raise ValueError(f"--grid {path}: not a grid file of 'sdevp-jax fit-grid' or sv.fitting.save_grid "
                         f"({reason})") from None


def run_fit_grid(args: argparse.Namespace) -> int:
    """The ``fit-grid`` subcommand; returns the exit code."""
    from . import fitting, jobs, solvers

    out: Path = args.out
    try:
        if (out.exists() or out.is_symlink()) and not args.force:
            raise ValueError(f"--out {out} exists; pass --force to overwrite it")
        gradient = {"iterations": args.iterations, "learning_rate": args.learning_rate,
                    "free_end": True if args.free_end else None}
        if args.algorithm != "gradient":
            given = [name for name, value in gradient.items() if value is not None]
            if given:
                raise ValueError(f"--{given[0].replace('_', '-')} applies to --algorithm gradient, not "
                                 f"{args.algorithm}")
        options = solver_options(args)
        try:
            points = fitting.num_points_for_nfe(args.method, args.nfe, **options)
        except ValueError as err:
            raise ValueError(f"--nfe {args.nfe}: {err}") from None
        if args.fine_points < points:
            raise ValueError(f"--fine-points must be >= the grid's {points} times (--nfe {args.nfe}), "
                             f"got {args.fine_points}")
        # The job that the grid is for: its schedule, model, solver and condition, as 'sample' builds them.
        spec = jobs.JobSpec(num_samples=args.batch_size, batch_size=args.batch_size, seed=args.seed, steps=points,
                            method=args.method, event_shape=tuple(args.shape), model=args.model,
                            **model_options(args), **options, **condition_options(args))
        if spec.model == "default" and math.prod(spec.event_shape) < 2:
            raise ValueError(f"--shape {','.join(map(str, spec.event_shape))}: the default model needs at least 2 "
                             "entries per sample")
        jobs.check_resources(spec)
        import jax

        state = jobs.job_state(spec)
        model_fn = jobs.job_model(spec, state, jobs.load_model(spec, state))
        solver = solvers.make(spec.method, **spec.solver_options())
        start = time.perf_counter()
        grid, info = fitting.fit_grid(
            state, model_fn, jax.random.key(spec.seed), (spec.batch_size, *spec.event_shape), method=solver,
            nfe=args.nfe, algorithm=args.algorithm, cond=jobs.job_cond(spec, spec.batch_size), dtype=spec.dtype,
            fine_points=args.fine_points, teacher_substeps=args.teacher_substeps, return_info=True,
            **{name: value for name, value in gradient.items() if value is not None})
        seconds = time.perf_counter() - start
        fit = {"algorithm": args.algorithm, "batch_size": spec.batch_size, "seed": spec.seed, "nfe": args.nfe,
               "fine_points": args.fine_points, "teacher_substeps": args.teacher_substeps,
               "loss": info.loss, "initial_loss": info.initial_loss, "teacher_nfe": info.teacher_nfe}
        if args.algorithm == "gradient":
            fit |= {"iterations": 200 if args.iterations is None else args.iterations,
                    "learning_rate": 0.05 if args.learning_rate is None else args.learning_rate,
                    "free_end": args.free_end}
        out.parent.mkdir(parents=True, exist_ok=True)
        fitting.save_grid(out, grid, state=state, method=solver, model=args.model_id or spec.model,
                          metadata=jobs.grid_metadata(spec) | {"fit": fit, "versions": jobs.versions()},
                          overwrite=args.force)
    except FileExistsError:  # it appeared while the grid was fitted
        return _error(f"--out {out} exists; pass --force to overwrite it")
    except USER_ERRORS as err:
        return _error(_first_line(err), 1 if isinstance(err, OSError) else 2)
    start_grid = "log-SNR grid" if args.algorithm == "dp" else "starting grid"
    print(f"wrote {out}: {len(grid)} times for {spec.method} at NFE {args.nfe} ({args.algorithm} on "
          f"{spec.batch_size} x_T, {seconds:.1f} s): mean squared error to the teacher {info.loss:.4g} "
          f"({start_grid}: {info.initial_loss:.4g}); times {', '.join(f'{t:.4g}' for t in grid)}")
    if args.algorithm == "dp" and info.loss > info.initial_loss:  # dp's cost is a first-order step's
        print(f"note: the fitted grid's error on the fitting batch is above the log-SNR grid's; dp's cost is that "
              f"of a first-order (DDIM) step, and --algorithm gradient fits {spec.method}'s own steps")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    """The ``sample`` subcommand; returns the exit code."""
    from . import jobs
    from .distributed import ProcessesDisagreeError, together

    if args.coordinator is None and (args.num_processes != 1 or args.process_id != 0):
        return _error("--num-processes/--process-id need --coordinator HOST:PORT")
    if args.no_cache and args.cache_dir is not None:
        return _error("--cache-dir and --no-cache exclude each other")
    if args.process_id >= args.num_processes:
        return _error(f"--process-id must be < --num-processes = {args.num_processes}, got {args.process_id}")
    if args.coordinator is not None:
        # Join first: from here on every check is agreed, so that a process that refuses its
        # options stops the others at once instead of leaving them waiting for it.
        from .distributed import initialize

        try:
            initialize(args.coordinator, args.num_processes, args.process_id)
        except (ValueError, RuntimeError) as err:
            return _error(str(err).strip().splitlines()[0])
    try:
        spec, plot = together("checking the options", lambda: _job_spec(args))
    except ProcessesDisagreeError as err:
        return _error(str(err))
    except USER_ERRORS as err:
        return _error(_first_line(err))
    out: Path = args.out

    from ._cache import default_cache_dir

    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())

    def check_cache():
        if cache_dir is not None and not cache_dir.is_dir():
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ValueError(f"--cache-dir: cannot create {cache_dir} ({err.strerror or err}); pass another "
                                 "directory or --no-cache") from None

    try:
        together("checking --cache-dir", check_cache)
    except (ProcessesDisagreeError, ValueError) as err:
        return _error(str(err))

    from tqdm import tqdm

    bar = tqdm(unit="samples", unit_scale=True, disable=True if args.no_progress else None, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    written = []

    def picture(samples_path: Path) -> None:
        written.append(samples_path)
        if plot:
            from ._io import atomic_write

            with np.load(samples_path) as data:
                samples = data["samples"].reshape(spec.num_samples, -1)
            written.append(atomic_write(out / PICTURE, lambda f: plot_samples(samples, spec, f)))

    start = time.perf_counter()
    try:
        with bar:
            jobs.run_job(spec, out, progress=progress, cache_dir=cache_dir, allow_nonfinite=args.allow_nonfinite,
                         force=args.force, outputs=(PICTURE,), finalize=picture)
    except USER_ERRORS as err:  # files that cannot be written (JobWriteError is one) and failed processes: 1
        return _error(_first_line(err), 1 if isinstance(err, (OSError, ProcessesDisagreeError)) else 2)
    seconds = time.perf_counter() - start
    import jax

    if jax.process_index() != 0:
        return 0
    defaults = jobs.solver_defaults(spec.method, thresholding=bool(spec.thresholding))
    method = spec.method + "".join(f", {k} {v}" for k, v in spec.solver_options().items() if v != defaults[k])
    grid = "" if spec.timesteps is None else f" of --grid {args.grid}"
    print(f"wrote {' and '.join(map(str, written))}: {spec.num_samples} samples, {method}{describe_condition(spec)}, "
          f"{spec.steps} steps{grid}, seed {spec.seed}, in {seconds:.1f} s")
    return 0


def _first_line(err: BaseException) -> str:
    """An exception as one line: its message's first line (OSErrors with their file), else its type."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def run_info(args: argparse.Namespace) -> int:
    """The ``info`` subcommand: backend, devices, versions, the schedule of the model options, the classes."""
    from importlib.metadata import version

    import jax

    import sdevp_jax
    from sdevp_jax import jobs

    try:  # the job of the model options, to show their schedule, prediction type and grid
        spec = jobs.JobSpec(num_samples=1, batch_size=1, seed=0, steps=1, **model_options(args))
    except USER_ERRORS as err:
        return _error(_first_line(err))
    print(f"sdevp_jax {sdevp_jax.__version__}")
    print(f"jax {jax.__version__}, jaxlib {version('jaxlib')}")
    print(f"backend {jax.default_backend()}, processes {jax.process_count()}, x64 {jax.config.jax_enable_x64}")
    for device in jax.devices():
        print(f"device {device.id}: {device.device_kind} ({device.platform})")
    print(describe_model(spec))
    print(describe_classes())
    print("\n".join(describe_methods()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sdevp-jax``.

    Args:
      argv: the arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
      The exit code: 0 on success, 2 for a usage error, a refused output
      directory or a bad configuration, 1 if the output directory cannot be created.
    """
    import warnings

    with warnings.catch_warnings():  # warnings as one line while the command runs, as they were after
        warnings.showwarning = _warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "info":
        return run_info(args)
    if args.command == "fit-grid":
        return run_fit_grid(args)
    return run_sample(args)


if __name__ == "__main__":
    raise SystemExit(main())
