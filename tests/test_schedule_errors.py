"""Bad input to the schedule-aware state: each a ValueError/TypeError naming the argument and its range.

(The schedules' own constructors -- non-monotone alphas_cumprod, betas outside (0, 1), an
unknown beta_schedule -- are in test_schedules.py; diffusers' label spacings in
test_spacings.py; the linear schedule's create_state in test_scheduler.py.)
"""

import numpy as np
import pytest

import sdevp_jax as sv
from sdevp_jax import schedules


def linear():
    return sv.create_state()


def cosine():
    return sv.create_state(schedule=schedules.cosine())


def ddpm():
    return sv.create_state(schedule=schedules.from_diffusers("linear"))


def on_grid(make, n=5):
    return lambda: sv.set_timesteps(make(), n)


T_MAX_COS = r"t_max = 0\.99799"
ZERO = np.zeros((2, 1), np.float32)

CASES = {
    # a time or a label outside the schedule's range
    "model_time t = 0": (lambda: sv.model_time(linear(), 0.0), ValueError, r"t must lie in \(0, t_max = 1\.0\], got 0\.0"),
    "model_time t > 1": (lambda: sv.model_time(linear(), 1.5), ValueError, r"t must lie in \(0, t_max = 1\.0\], got 1\.5"),
    "model_time NaN": (lambda: sv.model_time(linear(), np.array([0.5, np.nan])), ValueError, "t must lie in.*nan"),
    "model_time above cosine t_max": (lambda: sv.model_time(cosine(), 0.999), ValueError, "t must lie in.*" + T_MAX_COS),
    "model_time below label 0": (lambda: sv.model_time(ddpm(), 5e-4), ValueError,
                                 r"t must lie in \[1/num_train_timesteps, 1\], got 0\.0005"),
    "model_time above 1, discrete": (lambda: sv.model_time(ddpm(), 1.01), ValueError, r"t must lie in \[1/num_train"),
    "label -1": (lambda: sv.time_from_model_time(ddpm(), -1), ValueError,
                 r"model_t, a discrete schedule's label, must lie in \[0, num_train_timesteps - 1\] = \[0, 999\], got -1\.0"),
    "label 999.5": (lambda: sv.time_from_model_time(ddpm(), 999.5), ValueError, r"model_t.*\[0, 999\], got 999\.5"),
    "label NaN": (lambda: sv.time_from_model_time(ddpm(), np.nan), ValueError, r"model_t.*got nan"),
    "model_t 0, continuous": (lambda: sv.time_from_model_time(linear(), 0.0), ValueError, r"model_t must lie in \(0, t_max"),
    "model_t above cosine t_max": (lambda: sv.time_from_model_time(cosine(), 0.9995), ValueError,
                                   "model_t must lie in.*" + T_MAX_COS),
    "timesteps reach 0": (lambda: sv.set_timesteps(linear(), timesteps=[1.0, 0.0]), ValueError,
                          r"timesteps must lie in \(0, t_max = 1\.0\], got values from 0\.0 to 1\.0"),
    "timesteps above 1": (lambda: sv.set_timesteps(linear(), timesteps=[1.2, 0.5]), ValueError,
                          r"timesteps must lie in \(0, t_max = 1\.0\], got values from 0\.5 to 1\.2"),
    "timesteps above cosine t_max": (lambda: sv.set_timesteps(cosine(), timesteps=[0.999, 0.5]), ValueError,
                                     "timesteps must lie in.*" + T_MAX_COS),
    "timesteps below label 0": (lambda: sv.set_timesteps(ddpm(), timesteps=[1.0, 5e-4]), ValueError,
                                r"timesteps must lie in \[1/num_train_timesteps, 1\], got values from 0\.0005"),
    "timesteps NaN": (lambda: sv.set_timesteps(linear(), timesteps=[1.0, np.nan]), ValueError, "timesteps must be finite"),
    "a step above cosine t_max": (lambda: sv.step_pred(on_grid(cosine)(), ZERO, ZERO, 0.9995, None, noise=ZERO),
                                  ValueError, r"t must be <= the schedule's " + T_MAX_COS),
    "a step at cosine t = 1 (beta infinite)": (lambda: sv.ancestral(on_grid(cosine)(), ZERO, ZERO, 1.0, None,
                                                                    noise=ZERO), ValueError, "t must be <= "),
    "a step above 1, discrete": (lambda: sv.reverse_diffusion(on_grid(ddpm)(), ZERO, ZERO, 1.5, None, noise=ZERO),
                                 ValueError, r"t must be <= the schedule's t_max = 1\.0, got 1\.5"),
    "t_next not below t": (lambda: sv.step_pred(on_grid(cosine)(), ZERO, ZERO, 0.5, None, noise=ZERO, t_next=0.6),
                           ValueError, r"t_next must be in \[0, t\), got t_next=0\.6, t=0\.5"),
    # timesteps that are not a strictly decreasing 1-D array
    "timesteps increasing": (lambda: sv.set_timesteps(linear(), timesteps=[0.5, 0.7]), ValueError,
                             r"timesteps must be strictly decreasing .*timesteps\[0\] = 0\.5 <= timesteps\[1\] = 0\.7"),
    "timesteps repeated": (lambda: sv.set_timesteps(linear(), timesteps=[0.9, 0.5, 0.5]), ValueError,
                           r"strictly decreasing .*timesteps\[1\] = 0\.5 <= timesteps\[2\] = 0\.5"),
    "timesteps equal in float32": (lambda: sv.set_timesteps(linear(), timesteps=[0.5, 0.5 - 1e-12]), ValueError,
                                   r"strictly decreasing \(in the grid's float dtype\)"),
    "timesteps 2-D": (lambda: sv.set_timesteps(linear(), timesteps=[[1.0, 0.5]]), ValueError,
                      r"timesteps must be a non-empty 1-D array, got shape \(1, 2\)"),
    "timesteps empty": (lambda: sv.set_timesteps(linear(), timesteps=[]), ValueError, "timesteps must be a non-empty 1-D"),
    "timesteps strings": (lambda: sv.set_timesteps(linear(), timesteps=["a"]), TypeError,
                          "timesteps must be an array of real numbers"),
    "num_inference_steps != len(timesteps)": (lambda: sv.set_timesteps(linear(), 3, timesteps=[1.0, 0.5]), ValueError,
                                              r"num_inference_steps = 3 must equal len\(timesteps\) = 2"),
    "spacing and timesteps": (lambda: sv.set_timesteps(linear(), 2, spacing="logsnr", timesteps=[1.0, 0.5]),
                              ValueError, "give spacing or timesteps, not both"),
    # unknown names
    "prediction_type": (lambda: sv.create_state(prediction_type="x0"), ValueError,
                        "prediction_type must be one of 'epsilon', 'v_prediction', 'sample', got 'x0'"),
    "prediction_type None": (lambda: sv.create_state(prediction_type=None), ValueError, "prediction_type must be one of"),
    "prediction_type by replace": (lambda: linear().replace(prediction_type="v"), ValueError,
                                   "prediction_type must be one of .*got 'v'"),
    "spacing": (lambda: sv.set_timesteps(linear(), 3, spacing="ddim"), ValueError,
                "spacing must be one of 'reference', 'time_uniform', .*'trailing', .*'lu_lambdas', got 'ddim'"),
    "spacing not a string": (lambda: sv.set_timesteps(linear(), 3, spacing=3), ValueError, "spacing must be one of"),
    "schedule": (lambda: sv.create_state(schedule="cosine"), TypeError,
                 "schedule must be None or a schedule from sv.schedules .*got str"),
    # a spacing where it does not apply
    "label spacing, linear": (lambda: sv.set_timesteps(linear(), 3, spacing="leading"), ValueError,
                              "spacing='leading' picks training labels and needs a discrete schedule.*LinearSchedule"),
    "label spacing, cosine": (lambda: sv.set_timesteps(cosine(), 3, spacing="trailing"), ValueError,
                              "spacing='trailing' .*needs a discrete schedule.*CosineSchedule"),
    "reference, cosine": (lambda: sv.set_timesteps(cosine(), 3, spacing="reference"), ValueError,
                          "spacing='reference' .*linear schedule only.*CosineSchedule"),
    "reference, discrete": (lambda: sv.set_timesteps(ddpm(), 3, spacing="reference"), ValueError,
                            "spacing='reference' .*linear schedule only.*DiscreteSchedule"),
    "label spacing, more steps than labels": (lambda: sv.set_timesteps(ddpm(), 1001, spacing="leading"), ValueError,
                                              r"num_inference_steps must be in \[1, num_train_timesteps\] = \[1, 1000\]"),
    "label spacing, negative steps_offset": (lambda: sv.set_timesteps(ddpm(), 10, spacing="leading", steps_offset=-1),
                                             ValueError, "steps_offset must be an int >= 0, got -1"),
    # sampling_eps and num_train_timesteps against the schedule
    "sampling_eps above cosine t_max": (lambda: sv.create_state(schedule=schedules.cosine(), sampling_eps=0.999),
                                        ValueError, r"sampling_eps must be in the open interval \(0, 0\.99799"),
    "sampling_eps 0, cosine": (lambda: sv.create_state(schedule=schedules.cosine(), sampling_eps=0.0), ValueError,
                               r"sampling_eps must be in the open interval \(0, "),
    "sampling_eps below label 0": (lambda: sv.create_state(schedule=schedules.from_diffusers("linear"),
                                                           sampling_eps=1e-4), ValueError,
                                   r"sampling_eps must be in \[1/num_train_timesteps, 1\) = \[0\.001, 1\), got 0\.0001"),
    "sampling_eps 1, discrete": (lambda: sv.create_state(schedule=schedules.from_diffusers("linear"), sampling_eps=1.0),
                                 ValueError, r"sampling_eps must be in \[1/num_train_timesteps, 1\)"),
    "sampling_eps by replace": (lambda: ddpm().replace(sampling_eps=1e-4), ValueError,
                                r"sampling_eps must be in \[1/num_train_timesteps, 1\)"),
    "num_train_timesteps vs discrete schedule": (
        lambda: sv.create_state(schedule=schedules.from_diffusers("linear"), num_train_timesteps=2000), ValueError,
        "num_train_timesteps = 2000 must equal the discrete schedule's N_train = 1000"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_error(case):
    call, error, match = CASES[case]
    with pytest.raises(error, match=match):
        call()


def test_the_good_neighbours_of_the_bad_cases_pass():
    """The boundaries themselves are accepted: the errors above are about the range, not the call."""
    assert float(sv.model_time(ddpm(), 1e-3)) == pytest.approx(0.0, abs=1e-3)    # label 0
    assert float(sv.time_from_model_time(ddpm(), 999)) == 1.0
    assert float(sv.model_time(cosine(), cosine().schedule.t_max)) == pytest.approx(0.998, abs=1e-4)
    sv.set_timesteps(ddpm(), timesteps=[1.0, 1e-3])
    sv.set_timesteps(ddpm(), 1000, spacing="leading", steps_offset=0)
    sv.create_state(schedule=schedules.from_diffusers("linear"), sampling_eps=1e-3, num_train_timesteps=1000)
    state = on_grid(cosine)()
    sv.step_pred(state, ZERO, ZERO, float(state.timesteps[0]), None, noise=ZERO)  # t = t_max, rounded to float32
