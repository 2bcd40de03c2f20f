r"""Regenerate ``tests/golden/discrete_parity.npz``: trajectories of diffusers' DDIM and DDPM schedulers.

Run from the repository root, in an environment with torch and diffusers::

    pip install diffusers torch==2.13.0
    python tests/golden/make_discrete_parity_golden.py

The model is exact and closed form, so a test without torch can re-run it: data
:math:`x_0 \sim N(\mu, s^2 I)` in ``D = 3`` dimensions, diffused as
:math:`x = a_n x_0 + \sigma_n \epsilon` with :math:`a_n = \sqrt{\bar\alpha_n}`,
:math:`\sigma_n = \sqrt{1 - \bar\alpha_n}` from the scheduler's own float32
``alphas_cumprod`` at the training label ``n``. With :math:`d = \bar\alpha_n s^2 + (1 - \bar\alpha_n)`
and :math:`r = (x - a_n\mu)/d`, the posterior means are

.. math::

    \hat\epsilon = \sigma_n r, \qquad \hat x_0 = \mu + a_n s^2 r \;(= (x - \sigma_n\hat\epsilon)/a_n), \qquad
    \hat v = a_n\hat\epsilon - \sigma_n\hat x_0

(Salimans & Ho 2022 for :math:`v`), computed in that order in the dtype of ``x``
(:func:`model_output`; tests/test_discrete_parity.py repeats it operation for operation).

The file holds

* ``mu``, ``s``, ``x_T`` (float32, shape ``(4, 3)``, from ``numpy.random.default_rng(X_T_SEED)``);
* ``alphas_cumprod/<beta_schedule>``: diffusers' float32 ``alphas_cumprod``;
* ``noise/<num_inference_steps>``: float32, shape ``(steps, 4, 3)``: the noise DDPM's ``step`` ``k``
  draws with ``generator=torch.Generator().manual_seed(NOISE_SEED + k)`` (the same for every case
  with that step count; the step at label 0 draws and adds none, diffusers' ``if t > 0``, so
  there the test compares the mean);
* ``cases``: one JSON string per case: ``name``, ``scheduler`` (``"DDIM"``/``"DDPM"``),
  ``beta_schedule``, ``beta_start``, ``beta_end``, ``prediction_type``, ``timestep_spacing``,
  ``num_inference_steps``, ``steps_offset`` and ``final_label``: the label whose
  ``alphas_cumprod`` the last step goes to (``0`` for DDIM with ``set_alpha_to_one=False``,
  ``-1`` for DDPM, meaning :math:`\bar\alpha = 1`);
* per case, under ``<name>/``: ``labels`` (``scheduler.timesteps``, int64), ``record`` (the step
  indices ``k`` after which ``x`` is recorded: every step, or every tenth and the last for the
  1000-step cases, to keep the file small), ``x`` (float32, diffusers as it runs: ``step`` ``k``'s
  ``prev_sample``) and ``x64`` (float64: the same steps with ``alphas_cumprod`` and the sample
  in float64 -- the same float32 ``alphas_cumprod`` values, the same ``x_T`` and noise -- so that
  ``|x - x64|`` measures diffusers' own float32 rounding; the float64 DDPM run gets the float32
  noise through a patched ``randn_tensor``, since a float64 draw from the same generator differs);
* ``versions``.

DDIM runs with ``eta = 0``, ``clip_sample=False``, ``set_alpha_to_one=False``; DDPM with
``clip_sample=False``, ``variance_type="fixed_large"`` (noise variance :math:`1 - \bar\alpha_t/\bar\alpha_{t'}`).
Checked here: every step goes from a label to the next label of ``timesteps`` (DDIM's
``prev = t - N // n`` is that label for these spacings), the last one to ``final_label``; and the
noise recovered by re-drawing is the noise the step added.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np

from _golden import write_npz  # noqa: E402  (beside this script)
import torch  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "discrete_parity.npz")
NUM_TRAIN_TIMESTEPS = 1000
BATCH, DIM = 4, 3
MU = np.array([0.5, -1.0, 0.25], dtype=np.float32)
S = np.float32(0.7)
X_T_SEED = 20240610
NOISE_SEED = 1000

#: beta_schedule -> (beta_start, beta_end): DDPM, Stable Diffusion, iDDPM (the last two unused there).
SCHEDULES = {
    "linear": (1e-4, 0.02),
    "scaled_linear": (0.00085, 0.012),
    "squaredcos_cap_v2": (1e-4, 0.02),
}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: (scheduler, timestep_spacing, num_inference_steps, steps_offset) for every schedule and prediction type.
#: DDIM's prev = t - N // n is the next label only for leading and trailing with n dividing N (and
#: leading with offset 0 would end with a step from label 0 to label 0), so DDIM runs those two;
#: DDPM steps to the next label of its grid for every spacing.
GRIDS = (
    ("DDIM", "leading", 10, 1),
    ("DDIM", "trailing", 20, 0),
    ("DDPM", "leading", 10, 1),
    ("DDPM", "trailing", 20, 0),
    ("DDPM", "linspace", 10, 0),
)
#: DDPM on the training grid (every label 999..0), once per schedule, prediction types in turn.
TRAINING_GRID = (
    ("linear", "epsilon"),
    ("scaled_linear", "v_prediction"),
    ("squaredcos_cap_v2", "sample"),
)


def model_output(x: torch.Tensor, label: int, alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The exact prediction of type ``prediction_type`` for N(MU, S^2 I) data at ``label``, in ``x``'s dtype."""
    abar = alphas_cumprod[label].to(x.dtype)
    mu = torch.from_numpy(MU).to(x.dtype)
    s2 = torch.tensor(S, dtype=x.dtype) * torch.tensor(S, dtype=x.dtype)
    a = abar.sqrt()
    sigma = (1.0 - abar).sqrt()
    r = (x - a * mu) / (abar * s2 + (1.0 - abar))
    eps = sigma * r
    x0 = mu + a * s2 * r
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return a * eps - sigma * x0


def make_scheduler(kind: str, beta_schedule: str, prediction_type: str, spacing: str, offset: int):
    start, end = SCHEDULES[beta_schedule]
    common = dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=start,
        beta_end=end,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
        timestep_spacing=spacing,
        steps_offset=offset,
    )
    if kind == "DDIM":
        return DDIMScheduler(set_alpha_to_one=False, **common)
    return DDPMScheduler(variance_type="fixed_large", **common)


def to_float64(sched) -> None:
    """Make ``sched`` compute in float64 from the same (float32) ``alphas_cumprod`` values."""
    sched.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
    if isinstance(sched, DDIMScheduler):
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.to(torch.float64)
    else:
        sched.one = sched.one.to(torch.float64)


def ddpm_noise(k: int) -> torch.Tensor:
    """The noise DDPM's step ``k`` draws from ``torch.Generator().manual_seed(NOISE_SEED + k)``."""
    gen = torch.Generator().manual_seed(NOISE_SEED + k)
    return randn_tensor((BATCH, DIM), generator=gen, dtype=torch.float32)


@contextlib.contextmanager
def fixed_ddpm_noise(z: torch.Tensor):
    """DDPM's ``step`` draws ``z`` (cast to the requested dtype) instead of from its generator."""
    original = scheduling_ddpm.randn_tensor
    scheduling_ddpm.randn_tensor = lambda shape, generator=None, device=None, dtype=None: z.to(dtype)
    try:
        yield
    finally:
        scheduling_ddpm.randn_tensor = original


def check_grid(sched, kind: str, labels: np.ndarray) -> None:
    """Each step goes to the next label of ``labels``; the last to ``alphas_cumprod[0]`` (DDIM) or 1 (DDPM)."""
    assert np.all(np.diff(labels) < 0) and labels[-1] >= 0, labels
    n = len(labels)
    for i, t in enumerate(labels):
        if kind == "DDIM":
            prev = int(t) - NUM_TRAIN_TIMESTEPS // n
            if i + 1 < n:
                assert prev == labels[i + 1], (labels, i, prev)
            else:
                assert prev < 0, (labels, prev)  # -> final_alpha_cumprod = alphas_cumprod[0]
                assert torch.equal(sched.final_alpha_cumprod, sched.alphas_cumprod[0])
        else:
            prev = int(sched.previous_timestep(int(t)))
            assert prev == (labels[i + 1] if i + 1 < n else -1), (labels, i, prev)


def run(kind, beta_schedule, prediction_type, spacing, steps, offset, x_t, dtype, noise=None):
    """The scheduler's trajectory in ``dtype``: ``(labels, xs, noise)``, ``xs[k]`` after step ``k``."""
    sched = make_scheduler(kind, beta_schedule, prediction_type, spacing, offset)
    sched.set_timesteps(steps)
    labels = sched.timesteps.numpy().copy()
    if dtype == torch.float32:
        check_grid(sched, kind, labels)
    else:
        to_float64(sched)
    ac = sched.alphas_cumprod
    x = torch.from_numpy(x_t).to(dtype)
    xs, drawn = [], []
    for k, t in enumerate(labels):
        out = model_output(x, int(t), ac, prediction_type)
        if kind == "DDIM":
            x = sched.step(out, int(t), x, eta=0.0).prev_sample
        elif dtype == torch.float32:
            gen = torch.Generator().manual_seed(NOISE_SEED + k)
            new = sched.step(out, int(t), x, generator=gen).prev_sample
            z = ddpm_noise(k)
            # The re-drawn z is the noise the step added: the patched step that adds z is bitwise the same
            # (at label 0 the step adds none, and z is not used).
            with fixed_ddpm_noise(z):
                assert torch.equal(sched.step(out, int(t), x).prev_sample, new)
            drawn.append(z.numpy())
            x = new
        else:
            with fixed_ddpm_noise(torch.from_numpy(noise[k])):
                x = sched.step(out, int(t), x).prev_sample
        assert x.dtype == dtype
        xs.append(x.numpy().copy())
    return labels, np.stack(xs), (np.stack(drawn) if drawn else None)


def main() -> None:
    x_t = np.random.default_rng(X_T_SEED).standard_normal((BATCH, DIM)).astype(np.float32)
    out: dict[str, np.ndarray] = {"mu": MU, "s": np.asarray(S), "x_T": x_t}
    for beta_schedule in SCHEDULES:
        sched = make_scheduler("DDPM", beta_schedule, "epsilon", "leading", 0)
        assert sched.alphas_cumprod.dtype == torch.float32
        out[f"alphas_cumprod/{beta_schedule}"] = sched.alphas_cumprod.numpy()

    cases = []
    for beta_schedule in SCHEDULES:
        for prediction_type in PREDICTION_TYPES:
            for kind, spacing, steps, offset in GRIDS:
                cases.append((kind, beta_schedule, prediction_type, spacing, steps, offset))
    for beta_schedule, prediction_type in TRAINING_GRID:
        cases.append(("DDPM", beta_schedule, prediction_type, "leading", NUM_TRAIN_TIMESTEPS, 0))

    specs = []
    for kind, beta_schedule, prediction_type, spacing, steps, offset in cases:
        name = f"{kind}/{beta_schedule}/{prediction_type}/{spacing}{steps}"
        labels, xs, noise = run(kind, beta_schedule, prediction_type, spacing, steps, offset, x_t, torch.float32)
        if noise is not None:
            key = f"noise/{steps}"
            if key in out:
                assert np.array_equal(out[key], noise), key
            out[key] = noise
        _, xs64, _ = run(kind, beta_schedule, prediction_type, spacing, steps, offset, x_t, torch.float64, noise)
        record = np.arange(steps)
        if steps > 100:
            record = np.unique(np.concatenate([record[9::10], record[-1:]]))
        out[f"{name}/labels"] = labels
        out[f"{name}/record"] = record
        out[f"{name}/x"] = xs[record]
        out[f"{name}/x64"] = xs64[record]
        start, end = SCHEDULES[beta_schedule]
        specs.append(json.dumps(dict(
            name=name, scheduler=kind, beta_schedule=beta_schedule, beta_start=start, beta_end=end,
            prediction_type=prediction_type, timestep_spacing=spacing, num_inference_steps=steps,
            steps_offset=offset, final_label=0 if kind == "DDIM" else -1,
        )))
        err = np.max(np.abs(xs.astype(np.float64) - xs64))
        print(f"{name}: {steps} steps, max |x32 - x64| = {err:.3g}, max |x| = {np.max(np.abs(xs64)):.3g}")
    out["cases"] = np.array(specs)
    write_npz(PATH, out)


if __name__ == "__main__":
    main()
