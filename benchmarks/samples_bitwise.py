"""Record the samples of every method and option on small problems, or compare two records bit for bit.

A refactoring of the solvers or loops that keeps their arithmetic must keep these
samples bit for bit; one that changes it must say by how much. Run the recorder with
each version of the package (a checkout of each on ``PYTHONPATH``), then compare::

    PYTHONPATH=/path/to/old python benchmarks/samples_bitwise.py record /tmp/old.npz
    PYTHONPATH=.            python benchmarks/samples_bitwise.py record /tmp/new.npz
    python benchmarks/samples_bitwise.py compare /tmp/old.npz /tmp/new.npz

Every case is jitted as a user would (``jax.jit`` with the model static) and runs on
the default (CPU) backend in float32; the problems are the README's: the default
mixture, its class-conditional version with classifier-free guidance, the linear
schedule's reference and log-SNR grids, the cosine schedule, and a discrete
(Stable Diffusion) schedule with each prediction type.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import sdevp_jax as sv

mx = getattr(sv, "mixtures", sv)  # the toy mixtures' namespace; the top level in releases before it

SHAPE = (16, 2)


def _states():
    linear = sv.create_state()
    sd = sv.create_state(schedule=sv.schedules.from_diffusers("scaled_linear", 0.00085, 0.012, 1000))
    yield "ref40", sv.set_timesteps(linear, 40)
    yield "logsnr12", sv.set_timesteps(linear, 12, spacing="logsnr")
    yield "cosine12", sv.set_timesteps(sv.create_state(schedule=sv.schedules.CosineSchedule(0.008)), 12)
    for prediction_type in sv.PREDICTION_TYPES:
        state = sv.set_timesteps(sd.replace(prediction_type=prediction_type), 12)
        yield f"sd12_{prediction_type}", state


ODE_CASES = [
    ("euler", {}), ("heun", {}), ("dpm_solver", {}), ("dpm_solver", {"order": 2}),
    ("ddim", {}), ("ddim", {"eta": 1.0}), ("ddim", {"final_sigmas_type": "last"}),
    ("dpm_solver_pp", {}), ("dpm_solver_pp", {"order": 3}), ("dpm_solver_pp", {"order": 3, "third_order": "diffusers"}),
    ("dpm_solver_pp", {"solver_type": "heun"}), ("dpm_solver_pp", {"lower_order_final": False}),
    ("dpm_solver_pp", {"thresholding": True, "sample_max_value": 1.5}),
    ("sde_dpm_solver_pp", {}), ("sde_dpm_solver_pp", {"order": 1}), ("sde_dpm_solver_pp", {"solver_type": "heun"}),
    ("unipc", {}), ("unipc", {"order": 3}), ("unipc", {"solver_type": "bh1", "final_sigmas_type": "last"}),
    ("unipc", {"predict_x0": False}),
]
SDE_CASES = [
    {}, {"predictor": "reverse_diffusion"}, {"predictor": "ancestral"},
    {"corrector": "langevin"}, {"corrector": "langevin", "step_rule": "snr_batch", "corrector_steps": 2},
    {"predictor": "reverse_diffusion", "corrector": "langevin", "step_rule": "snr_sample"},
    {"denoise": False},
]
INVERT_CASES = [("ddim", {}), ("dpm_solver_pp", {"order": 3}), ("unipc", {}), ("dpm_solver", {}), ("heun", {})]


def _name(options):
    return ",".join(f"{k}={v}" for k, v in sorted(options.items())) or "default"


def record() -> dict:
    out = {}
    key = jax.random.key(0)
    for label, state in _states():
        model = mx.make_mixture_eps_fn(state, mx.default_mixture())
        if state.prediction_type != "epsilon":
            eps_model = model

            def model(x, t, _eps=eps_model, _state=state):
                # the mixture's exact eps, converted to this state's prediction type
                tc = sv.time_from_model_time(_state, t).reshape((-1, 1))
                alpha, sigma = _state.schedule.alpha_sigma(tc)
                eps = _eps(x, t)
                if _state.prediction_type == "v_prediction":
                    return alpha * eps - sigma * x
                return (x - sigma * eps) / alpha
        full = label == "logsnr12"  # every option on one grid; the common ones on the others
        for method, options in ODE_CASES:
            if not full and (options or method == "sde_dpm_solver_pp"):
                continue
            fn = jax.jit(lambda s, k, m=method, o=options, f=model: sv.sample_ode(s, f, k, SHAPE, method=m, **o))
            out[f"ode/{label}/{method}/{_name(options)}"] = np.asarray(fn(state, key))
        for options in SDE_CASES:
            if label.startswith("ref") or not options:
                fn = jax.jit(lambda s, k, o=options, f=model: sv.sample(s, f, k, SHAPE, **o))
                out[f"sde/{label}/{_name(options)}"] = np.asarray(fn(state, key))
        x0 = mx.sample_mixture(mx.default_mixture(), jax.random.key(1), SHAPE[0])
        for method, options in INVERT_CASES if full or label.startswith("ref") else INVERT_CASES[:1]:
            fn = jax.jit(lambda s, x, m=method, o=options, f=model: sv.invert_ode(s, f, x, method=m, **o))
            out[f"invert/{label}/{method}/{_name(options)}"] = np.asarray(fn(state, x0))
    state = sv.set_timesteps(sv.create_state(), 25)
    model = mx.make_mixture_eps_fn(state, mx.default_mixture())
    out["adaptive/linear"] = np.asarray(jax.jit(lambda k: sv.sample_ode(state, model, k, SHAPE, method="adaptive"))(key))
    cm = mx.default_class_mixture()
    guided = sv.cfg(mx.make_class_model(state, cm), 3.0, sv.NULL_CLASS)
    labels = jnp.arange(SHAPE[0]) % 3
    for method in ("dpm_solver_pp", "unipc", "ddim"):
        out[f"cfg/{method}"] = np.asarray(jax.jit(
            lambda k, c, m=method: sv.sample_ode(state, guided, k, SHAPE, method=m, cond=c))(key, labels))
    out["cfg/sde"] = np.asarray(jax.jit(lambda k, c: sv.sample(state, guided, k, SHAPE, cond=c))(key, labels))
    ref = sv.set_timesteps(sv.create_state(), 100)
    ref_model = mx.make_mixture_eps_fn(ref, mx.default_mixture())
    known = mx.sample_mixture(mx.default_mixture(), jax.random.key(2), SHAPE[0])
    out["inpaint"] = np.asarray(jax.jit(lambda k: sv.inpaint(ref, ref_model, k, known, jnp.array([1, 0])))(key))
    out["inpaint/pc"] = np.asarray(jax.jit(
        lambda k: sv.inpaint(ref, ref_model, k, known, jnp.array([1, 0]), corrector="langevin"))(key))
    return out


def compare(old_path: str, new_path: str) -> int:
    old, new = np.load(old_path), np.load(new_path)
    missing = sorted(set(old.files) ^ set(new.files))
    if missing:
        print("cases in one record only:", missing)
    differ = 0
    for name in sorted(set(old.files) & set(new.files)):
        a, b = old[name], new[name]
        if a.tobytes() == b.tobytes():
            continue
        differ += 1
        scale = max(float(np.max(np.abs(a))), 1e-30)
        print(f"{name}: max |diff| {float(np.max(np.abs(a - b))):.3g} (relative to max |x| {scale:.3g})")
    total = len(set(old.files) & set(new.files))
    print(f"{total - differ} of {total} cases bitwise equal")
    return 1 if differ or missing else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"] and len(sys.argv) == 3:
        np.savez(sys.argv[2], **record())
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
