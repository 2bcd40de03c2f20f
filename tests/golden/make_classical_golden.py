r"""Regenerate ``tests/golden/classical.npz``: diffusers' classical discrete schedulers (EulerDiscrete,
EulerAncestralDiscrete, LMSDiscrete, PNDM, HeunDiscrete, KDPM2Discrete, KDPM2AncestralDiscrete) sampling loops, in
float64.

Run from the repository root, with torch and diffusers in one Python and JAX (for sdevp_jax's noise) in another::

    pip install diffusers==0.42.1 torch==2.13.0 scipy
    python tests/golden/make_classical_golden.py --jax-python python3

Stable Diffusion's schedule (``scaled_linear``, 0.00085 to 0.012, 1000 labels). The schedulers run in float64:
their ``alphas_cumprod`` is recomputed in float64, their module sees a ``torch`` whose ``float32`` is float64
(their steps cast the sample to ``torch.float32``), and after ``set_timesteps`` their float32 ``sigmas`` are
recomputed in float64 as ``set_timesteps`` computes them -- ``np.interp`` of the float64 training sigmas at its
own (float32) labels, then 0 (on the sigma grids of ``use_karras_sigmas``, ``use_exponential_sigmas`` and
``use_beta_sigmas``: the scheduler's own ``_convert_to_karras`` (...) of those float64 sigmas at the labels of the
config without the option, :func:`float64_sigma_grid`; the labels, fractional, stay diffusers' float32 ones) -- and
checked to round to diffusers' own; for the two-call schedulers their
interleaved tables too (Heun's repeated sigmas; KDPM2's log-midpoints ``sigmas_interpol`` and their labels by the
scheduler's own ``_sigma_to_t`` on the float64 training log-sigmas; KDPM2 ancestral's ``sigmas_up`` and
``sigmas_down``), whose midpoint labels diffusers would otherwise round to float32.

The model is closed form at any (fractional) label ``n``, as both sides compute it: with
:math:`\rho_n` the training sigmas :math:`\sqrt{(1 - \bar\alpha)/\bar\alpha}` interpolated linearly in the label
(diffusers' interpolation, ``np.interp``), :math:`a^2 = 1/(1 + \rho_n^2)`, :math:`\sigma^2 = 1 - a^2`, data
:math:`N(\mu, s^2 I)` (:data:`MU` = 0.5, :data:`S` = 0.8): :math:`\hat\epsilon = \sigma(x - a\mu)/(a^2 s^2 +
\sigma^2)` (or :math:`v = a\hat\epsilon - \sigma\hat x_0`). The model's input is diffusers'
``scale_model_input`` of its sample, :math:`\bar x/\sqrt{1 + \rho^2}`, the VP sample :math:`x` (PNDM's sample
is :math:`x` itself; its ``alphas_cumprod`` and ``final_alpha_cumprod`` are replaced by their float64 values).

sdevp_jax starts from ``x_T`` at :math:`\alpha_{\max}`; diffusers' loop starts from the sample ``x_T/alpha_max``
(its ``init_noise_sigma`` scales the prior draw by :math:`\rho_{\max}` for ``linspace`` and ``trailing`` and
:math:`\sqrt{1 + \rho_{\max}^2}` for ``leading``; the golden compares the steps from the same start). The
stochastic schedulers' noise is sdevp_jax's own per-sample draws (``x_T`` too), made by ``--jax-python``: step
``k`` adds slot ``1 + k`` of each sample's stream from ``key(SEED)``.

The file holds ``x_T`` (``(8, 3)``), ``noise``, ``seed``, ``train_sigmas`` (float64) and per case
``<scheduler>/<option>/<order>/<steps>``: ``config`` (the JSON of the scheduler's fields), ``labels`` (diffusers'
``timesteps``; PNDM's grid, ``_timesteps``), ``sigmas`` (float64, the last 0) and ``final`` (the last ``prev_sample``); and ``lms_quad`` /
``lms_exact``: diffusers' ``get_lms_coefficient`` (scipy's quad) and the closed form, for every step and order
of a 10-step grid; ``config/<class>/default``: ``save_config``'s file of each of :data:`NEW_CLASSES` with its
defaults.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PATH = os.path.join(HERE, "classical.npz")
MU, S, D, B, SEED, MAX_STEPS = 0.5, 0.8, 3, 8, 5, 40
BASE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

# (scheduler, option, fields, order (LMS; else 1), steps)
CASES = [
    ("EulerDiscrete", "linspace", {}, 1, 10),
    ("EulerDiscrete", "linspace", {}, 1, 25),
    ("EulerDiscrete", "leading", {"timestep_spacing": "leading", "steps_offset": 1}, 1, 10),
    ("EulerDiscrete", "trailing", {"timestep_spacing": "trailing"}, 1, 10),
    ("EulerDiscrete", "v_prediction", {"prediction_type": "v_prediction"}, 1, 10),
    ("EulerAncestralDiscrete", "linspace", {}, 1, 10),
    ("EulerAncestralDiscrete", "linspace", {}, 1, 25),
    ("EulerAncestralDiscrete", "leading", {"timestep_spacing": "leading", "steps_offset": 1}, 1, 10),
    ("EulerAncestralDiscrete", "v_prediction", {"prediction_type": "v_prediction"}, 1, 10),
]
CASES += [("LMSDiscrete", "linspace", {}, order, steps) for order in (1, 2, 3, 4) for steps in (10, 25)]
CASES += [
    ("LMSDiscrete", "trailing", {"timestep_spacing": "trailing"}, 4, 10),
    ("LMSDiscrete", "v_prediction", {"prediction_type": "v_prediction"}, 4, 10),
]
#: the classes whose configs sdevp_jax loads because of this golden (their default save_config files are stored)
NEW_CLASSES = ("EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
               "KDPM2AncestralDiscreteScheduler")
SD_PNDM = {"timestep_spacing": "leading", "steps_offset": 1}  # Stable Diffusion 1.x's PNDMScheduler fields
CASES += [
    ("PNDM", "plms", {**SD_PNDM, "skip_prk_steps": True}, 4, 10),
    ("PNDM", "plms", {**SD_PNDM, "skip_prk_steps": True}, 4, 25),
    ("PNDM", "plms_alpha_to_one", {**SD_PNDM, "skip_prk_steps": True, "set_alpha_to_one": True}, 4, 10),
    ("PNDM", "plms_offset_0", {"skip_prk_steps": True}, 4, 10),
    ("PNDM", "plms_v_prediction", {**SD_PNDM, "skip_prk_steps": True, "prediction_type": "v_prediction"}, 4, 10),
    ("PNDM", "prk", SD_PNDM, 4, 10),
    ("PNDM", "prk", SD_PNDM, 4, 30),  # 33 labels a step: the midpoint is 16 labels below the start
    ("PNDM", "prk_alpha_to_one", {**SD_PNDM, "set_alpha_to_one": True}, 4, 10),
]
CASES += [(name, option, fields, 1, steps) for name in ("HeunDiscrete", "KDPM2Discrete", "KDPM2AncestralDiscrete")
          for option, fields, steps in (("linspace", {}, 10), ("linspace", {}, 25),
                                        ("leading", {"timestep_spacing": "leading", "steps_offset": 1}, 10),
                                        ("v_prediction", {"prediction_type": "v_prediction"}, 10))]
CASES += [("HeunDiscrete", "clip_sample", {"clip_sample": True, "clip_sample_range": 1.2}, 1, 10)]
#: the sigma grids (use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas) of the classes that space them between
#: the noise levels of their label grid's ends (on trailing labels, label 99's at 10 steps, not label 0's)
SIGMA_FIELDS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
CASES += [(name, field.removeprefix("use_"), {field: True}, 4 if name == "LMSDiscrete" else 1, 10)
          for name in ("EulerDiscrete", "HeunDiscrete", "LMSDiscrete") for field in SIGMA_FIELDS]
CASES += [(name, "karras_sigmas_trailing", {"use_karras_sigmas": True, "timestep_spacing": "trailing"},
           4 if name == "LMSDiscrete" else 1, 10) for name in ("EulerDiscrete", "HeunDiscrete", "LMSDiscrete")]
CASES += [("EulerDiscrete", "karras_sigmas", {"use_karras_sigmas": True}, 1, 25),
          ("EulerDiscrete", "exponential_sigmas_v_prediction",
           {"use_exponential_sigmas": True, "prediction_type": "v_prediction"}, 1, 10)]
MODULES = {"EulerDiscrete": "scheduling_euler_discrete", "EulerAncestralDiscrete": "scheduling_euler_ancestral_discrete",
           "LMSDiscrete": "scheduling_lms_discrete", "PNDM": "scheduling_pndm",
           "HeunDiscrete": "scheduling_heun_discrete", "KDPM2Discrete": "scheduling_k_dpm_2_discrete",
           "KDPM2AncestralDiscrete": "scheduling_k_dpm_2_ancestral_discrete"}


def jax_noise(path: str) -> None:
    """(Under the JAX Python.) x_T and the noise as sv.sample_ode draws them from ``key(SEED)``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from sdevp_jax.loops import make_sample_keys, per_sample_normal

    keys = make_sample_keys(jax.random.key(SEED), B, 0)
    x_t = per_sample_normal(keys, 0, (D,), jnp.float64)
    noise = jnp.stack([per_sample_normal(keys, 1 + k, (D,), jnp.float64) for k in range(MAX_STEPS)])
    np.savez(path, x_T=np.asarray(x_t), noise=np.asarray(noise))


def acp64() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)


def train_sigmas() -> np.ndarray:
    return ((1.0 - acp64()) / acp64()) ** 0.5


def model(x: np.ndarray, label: float, prediction_type: str) -> np.ndarray:
    rho = np.interp(float(label), np.arange(1000), train_sigmas())
    a2 = 1.0 / (1.0 + rho * rho)
    a, sigma = np.sqrt(a2), np.sqrt(1.0 - a2)
    eps = sigma * (x - a * MU) / (a2 * S * S + sigma * sigma)
    if prediction_type == "epsilon":
        return eps
    x0 = MU + a * S * S * (x - a * MU) / (a2 * S * S + sigma * sigma)
    return a * eps - sigma * x0


def setup(torch, diffusers, name: str, fields: dict, steps: int):
    from _golden import Float32As64

    module = importlib.import_module(f"diffusers.schedulers.{MODULES[name]}")
    module.torch = Float32As64(torch)
    sched = getattr(diffusers, f"{name}Scheduler")(**BASE, **fields)
    sched.alphas_cumprod = torch.tensor(acp64(), dtype=torch.float64)
    sched.set_timesteps(steps)
    if any(fields.get(f) for f in SIGMA_FIELDS):  # its float32 labels (Heun casts them with the wrapped torch)
        sched.timesteps = sched.timesteps.to(torch.float32).to(torch.float64)
    labels = sched.timesteps.numpy()
    if name in TWO_CALL_TABLES:  # the grid's labels: every other entry of the interleaved timesteps
        labels = labels[::2].copy()
    if name == "PNDM":  # alphas_cumprod at its labels, no sigmas; the last step's target in float64 too
        sched.final_alpha_cumprod = torch.tensor(1.0 if fields.get("set_alpha_to_one") else acp64()[0])
        labels = np.asarray(sched._timesteps)[::-1].astype(np.int64)  # its grid (its model calls repeat labels, PRK
        # adds midpoints)
        return module, sched, labels, np.concatenate([train_sigmas()[labels], [0.0]])
    sigmas = np.concatenate([np.interp(labels.astype(np.float64), np.arange(1000), train_sigmas()), [0.0]])
    if any(fields.get(f) for f in SIGMA_FIELDS):  # diffusers' labels (float32) are its own; its sigmas in float64
        sigmas = np.concatenate([float64_sigma_grid(sched, fields, steps), [0.0]])
    if name in TWO_CALL_TABLES:  # their interleaved tables, recomputed in float64
        for field, table in TWO_CALL_TABLES[name](sched, labels.astype(np.float64), sigmas).items():
            ours, theirs = np.asarray(table), getattr(sched, field).numpy().astype(np.float64)
            used = np.isfinite(theirs)  # KDPM2's first midpoint is log(0) - inf: NaN, never read
            assert ours.shape == theirs.shape and np.allclose(ours[used], theirs[used], rtol=1e-5, atol=1e-6), field
            setattr(sched, field, torch.tensor(ours, dtype=torch.float64))
        return module, sched, labels, sigmas
    assert np.allclose(sigmas, sched.sigmas.numpy(), rtol=1e-6, atol=0), "sigmas changed"
    sched.sigmas = torch.tensor(sigmas, dtype=torch.float64)
    return module, sched, labels, sigmas


def float64_sigma_grid(sched, fields: dict, steps: int) -> np.ndarray:
    """The sigma grid as ``set_timesteps`` computes it, in float64: the float64 training sigmas interpolated at the
    (float32) labels of the same config without the sigma option, respaced by the scheduler's own
    ``_convert_to_karras`` (``_exponential``, ``_beta``) between the first and last of them."""
    plain = type(sched)(**{k: v for k, v in sched.config.items() if k not in SIGMA_FIELDS and not k.startswith("_")})
    plain.set_timesteps(steps)
    in_sigmas = np.interp(plain.timesteps.numpy().astype(np.float64), np.arange(1000), train_sigmas())
    from _golden import converted_sigmas

    return converted_sigmas(sched, fields, in_sigmas, steps)


def _pairs(values, head, tail):
    """diffusers' ``cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])`` (``head``/``tail``: the slice it repeats)."""
    middle = np.repeat(values[head:len(values) + tail if tail else None], 2)
    return np.concatenate([values[:1], middle, values[-1:]])


def _sigma_to_t(sched, sigmas):
    log_sigmas = np.log(train_sigmas())
    return np.array([sched._sigma_to_t(s, log_sigmas) for s in sigmas], dtype=np.float64)


def heun_tables(sched, labels, sigmas):
    """HeunDiscreteScheduler.set_timesteps' sigmas (each inner one twice) and timesteps."""
    return {"sigmas": np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]]),
            "timesteps": np.concatenate([labels[:1], np.repeat(labels[1:], 2)])}


def kdpm2_tables(sched, labels, sigmas):
    """KDPM2DiscreteScheduler.set_timesteps': the log-midpoints sqrt(sigma_k sigma_{k-1}) and their labels."""
    with np.errstate(divide="ignore", invalid="ignore"):
        interpol = np.exp(0.5 * (np.log(sigmas) + np.log(np.roll(sigmas, 1))))
    interpol[~np.isfinite(interpol)] = 0.0
    t_interpol = _sigma_to_t(sched, interpol)
    timesteps = np.concatenate([labels[:1], np.stack([t_interpol[1:-1], labels[1:]], axis=-1).reshape(-1)])
    return {"sigmas": _pairs(sigmas, 1, 0), "sigmas_interpol": _pairs(interpol, 1, 0), "timesteps": timesteps}


def kdpm2_ancestral_tables(sched, labels, sigmas):
    """KDPM2AncestralDiscreteScheduler.set_timesteps': sigma up and down, the log-midpoints of sigma and sigma down
    (the next sigma), and their labels."""
    following = np.append(sigmas[1:], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.nan_to_num((following**2 * (sigmas**2 - following**2) / sigmas**2) ** 0.5)
        down = (following**2 - up**2) ** 0.5
        down[-1] = 0.0
        interpol = np.exp(0.5 * (np.log(sigmas) + np.log(down)))
    interpol[-2:] = 0.0
    t_interpol = _sigma_to_t(sched, interpol)
    timesteps = np.concatenate([labels[:1], np.stack([t_interpol[:-2], labels[1:]], axis=-1).reshape(-1)])
    return {"sigmas": _pairs(sigmas, 1, 0), "sigmas_interpol": _pairs(interpol, 1, 0), "sigmas_up": _pairs(up, 1, 0),
            "sigmas_down": _pairs(down, 1, 0), "timesteps": timesteps}


TWO_CALL_TABLES = {"HeunDiscrete": heun_tables, "KDPM2Discrete": kdpm2_tables,
                   "KDPM2AncestralDiscrete": kdpm2_ancestral_tables}


def run(torch, diffusers, name: str, fields: dict, order: int, steps: int, x_t, noise):
    module, sched, labels, sigmas = setup(torch, diffusers, name, fields, steps)
    draws = iter(noise)
    module.randn_tensor = lambda shape, **kw: torch.tensor(next(draws), dtype=torch.float64)
    x = torch.tensor(x_t * np.sqrt(1.0 + sigmas[0] ** 2), dtype=torch.float64)  # the sample x / alpha
    if name == "PNDM":  # PNDM's sample is x itself
        x = torch.tensor(x_t, dtype=torch.float64)
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        out = torch.tensor(model(x_in.numpy(), float(t), fields.get("prediction_type", "epsilon")))
        kwargs = {"order": order} if name == "LMSDiscrete" else {}
        x = sched.step(out, t, x, **kwargs).prev_sample
    return labels, sigmas, x.numpy()


def lms_tables(torch, diffusers):
    """diffusers' LMS coefficients (scipy's quad) and the closed form, at every step and order of 10 steps."""
    _, sched, _, sigmas = setup(torch, diffusers, "LMSDiscrete", {}, 10)
    quad, exact = np.zeros((10, 4, 4)), np.zeros((10, 4, 4))
    for t in range(10):
        for order in range(1, min(t + 1, 4) + 1):
            for j in range(order):
                quad[t, order - 1, j] = sched.get_lms_coefficient(order, t, j)
                nodes = [sigmas[t - m] for m in range(order)]
                poly = np.poly1d([1.0])
                for m in range(order):
                    if m != j:
                        poly = poly * np.poly1d([1.0, -nodes[m]]) / (nodes[j] - nodes[m])
                anti = poly.integ()
                exact[t, order - 1, j] = anti(sigmas[t + 1]) - anti(sigmas[t])
    return quad, exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jax-python", default="python3")
    parser.add_argument("--noise", help=argparse.SUPPRESS)  # (internal) write the JAX draws here and stop
    args = parser.parse_args()
    if args.noise:
        jax_noise(args.noise)
        return
    import torch

    import diffusers
    from _golden import write_npz

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "noise.npz")
        env = dict(os.environ, PYTHONPATH=ROOT)
        subprocess.run([args.jax_python, os.path.abspath(__file__), "--noise", path], check=True, env=env)
        with np.load(path) as data:
            x_t, noise = data["x_T"], data["noise"]
    torch.set_default_dtype(torch.float64)
    arrays = {"x_T": x_t, "noise": noise, "train_sigmas": train_sigmas(), "seed": np.array(SEED)}
    for name, option, fields, order, steps in CASES:
        key = f"{name}/{option}/{order}/{steps}"
        labels, sigmas, final = run(torch, diffusers, name, fields, order, steps, x_t, noise)
        assert np.all(np.isfinite(final)), key
        arrays.update({f"{key}/config": np.array(json.dumps(fields)), f"{key}/labels": labels,
                       f"{key}/sigmas": sigmas, f"{key}/final": final})
    arrays["lms_quad"], arrays["lms_exact"] = lms_tables(torch, diffusers)
    for name in NEW_CLASSES:  # the save_config file of each class this golden adds to the loadable ones
        with tempfile.TemporaryDirectory() as tmp:
            getattr(diffusers, name)().save_config(tmp)
            with open(os.path.join(tmp, "scheduler_config.json")) as f:
                arrays[f"config/{name}/default"] = np.array(f.read())
    print("LMS coefficients, max |quad - closed form| / max |closed form|:",
          np.max(np.abs(arrays["lms_quad"] - arrays["lms_exact"])) / np.max(np.abs(arrays["lms_exact"])))
    write_npz(PATH, arrays)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
