"""sdevp_jax.distributed on several devices of one process: sample_on_devices, and the out_shardings pattern.

The device count is fixed when JAX starts, so every multi-device check runs in a
child process with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``: this file
run as a script (``python tests/test_devices.py N CASE ...``), which prints one JSON
line. One child per device count runs all of that count's cases.

A case is a model of :mod:`device_models` (the embedded mixture, a hand-written
mixture with exp / log / softmax, a Flax MLP, a Flax conv net, and two models under
``sv.cfg`` with a per-sample class) and a method (each predictor of ``sample``,
each ODE and SDE solver of ``sample_ode``, at one device count or more). The child compares the BITS of
``sample_on_devices``'s output with single-device calls of ``piece_size`` rows at each
piece's ``index_offset`` (a plain ``jax.jit(draw, static_argnums=1)`` called with
uncommitted inputs, on the default device), and for the ``spmd`` cases measures
how far ``jax.jit(..., out_shardings=batch_sharding())`` is from those calls.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # a child: the device count must be set before JAX starts
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(sys.argv[1])}"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functools
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import device_models as dm
import sdevp_jax as sv

STEPS = 24  # reverse_diffusion needs N > beta_max = 20; compile time does not grow with N (one lax.scan)
PIECE = 8
PIECES_PER_DEVICE = 2
PERTURBATION = 2.0**-22  # relative: 2 ulps of float32 at 1.0
METHODS = sv.list_methods("predictor") + sv.list_methods("ode") + sv.list_methods("sde_solver")
COUNTS = (1, 2, 4, 8)


def bits(x) -> np.ndarray:
    x = np.asarray(x)
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def digest(x) -> str:
    return hashlib.sha256(bits(x).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ the child


def run_case(case: str, helper: bool, spmd: bool) -> dict:
    """One model/method on every local device; what the parent asserts, as JSON-able values.

    ``helper``: sample_on_devices against the single-device calls of its pieces (bits);
    ``spmd``: the out_shardings program against the same calls, and the effect of a 2-ulp
    perturbation of the model's output on them.
    """
    name, method = case.split("/")
    state = sv.set_timesteps(sv.create_state(), STEPS)
    model = dm.MODELS[name](sv, state)
    devices = jax.local_devices()
    num = PIECE * PIECES_PER_DEVICE * len(devices)
    cond = jnp.asarray(dm.make_cond(num)) if model.guided else None
    key = jax.random.key(7)
    draw = dm.make_draw(sv, state, model, method)

    def pieces(model_fn):
        single = jax.jit(dm.make_draw(sv, state, model._replace(model_fn=model_fn), method), static_argnums=1)
        return np.concatenate([np.asarray(single(key, PIECE, np.uint32(p * PIECE),
                                                 None if cond is None else cond[p * PIECE:(p + 1) * PIECE]))
                               for p in range(num // PIECE)])

    reference = pieces(model.model_fn)
    out = {"digest": digest(reference), "finite": bool(np.all(np.isfinite(reference)))}
    if helper:
        x = sv.distributed.sample_on_devices(draw, key, num, piece_size=PIECE, cond=cond)
        out.update(bitwise=bool(np.array_equal(bits(x), bits(reference))), shape=list(x.shape),
                   sharding_ok=x.sharding == sv.distributed.batch_sharding(devices),
                   shards=sorted((s.device.id, s.index[0].start or 0) for s in x.addressable_shards))
    if spmd:
        whole = jax.jit(lambda k, c: draw(k, num, np.uint32(0), c), out_shardings=sv.distributed.batch_sharding())
        out["spmd_diff"] = float(np.max(np.abs(np.asarray(whole(key, cond)) - reference)))
        if model.guided:
            perturbed = lambda x, t, c: model.model_fn(x, t, c) * jnp.float32(1 + PERTURBATION)  # noqa: E731
        else:
            perturbed = lambda x, t: model.model_fn(x, t) * jnp.float32(1 + PERTURBATION)  # noqa: E731
        out["perturbed_diff"] = float(np.max(np.abs(pieces(perturbed) - reference)))
    return out


def child(cases: list[str], spmd_cases: list[str]) -> dict:
    """``cases`` through sample_on_devices; ``spmd_cases`` through the out_shardings program."""
    result = {"devices": len(jax.devices()), "cases": {}}
    for case in dict.fromkeys(cases + spmd_cases):
        result["cases"][case] = run_case(case, case in cases, case in spmd_cases)
    return result


# ----------------------------------------------------------------------------------------------- the parent


def run_child(count: int, cases: tuple[str, ...], spmd_cases: tuple[str, ...] = ()) -> dict:
    result = dm.run_child(__file__, [str(count), ",".join(cases), ",".join(spmd_cases)])
    assert result["devices"] == count, result
    return result


def check_bitwise(result: dict, count: int) -> None:
    for case, r in result["cases"].items():
        assert r["bitwise"], (count, case)
        assert r["finite"], (count, case)
        assert r["sharding_ok"] and r["shape"][0] == PIECE * PIECES_PER_DEVICE * count, (count, case, r)
        # device d holds the contiguous block of its pieces
        assert r["shards"] == [[d, d * PIECE * PIECES_PER_DEVICE] for d in range(count)], (count, case, r)


#: Per device count, the cases of sample_on_devices' bitwise test. Each device compiles a case's program once,
#: and the reference's plain single-device call (uncommitted inputs) once more, so a case at ``count`` devices
#: costs ``count + 1`` compilations (about 1 s each on a 2-core VM). What the test checks is that the program
#: compiled for each device gives the bits of the default device's, which depends on the ops: so every method
#: runs at one count of 2 or more (predictors, fixed-step, multistep, single-step, adaptive and stochastic
#: solvers), every model at 2 devices and again at 4 or 8, and three cases at 1 device.
COUNT_CASES = {
    1: ["flax_conv/euler_maruyama", "hand_mixture/adaptive", "cfg_flax_mlp/unipc"],
    2: ["toy_mixture/euler_maruyama", "hand_mixture/dpm_solver_pp", "flax_mlp/euler", "flax_conv/ddim",
        "cfg_class_mixture/ancestral", "cfg_flax_mlp/dpm_solver_pp_2s"],
    4: ["hand_mixture/reverse_diffusion", "flax_mlp/unipc", "cfg_class_mixture/dpm_solver"],
    8: ["toy_mixture/adaptive", "flax_conv/sde_dpm_solver_pp", "cfg_flax_mlp/heun"],
}
#: a method registered after these lists were drawn up runs at 2 devices on the embedded mixture
COUNT_CASES[2] += [f"toy_mixture/{m}" for m in METHODS
                   if not any(case.endswith(f"/{m}") for n in (2, 4, 8) for case in COUNT_CASES[n])]


# The out_shardings pattern: one program partitioned over the devices. Its tolerance, as the invariance tests
# derive theirs, from the change P that perturbing the model's output by 2 ulps (relative 2**-22) makes to the
# single-device samples: float rounding of the model amplified by the sampler's dynamics. Fixed-step samplers:
# 2 P (measured |SPMD - single| / P: 0.06 to 0.72 over 2, 4 and 8 devices). The adaptive solver's
# accept/reject decisions move with rounding, so P is one draw of that effect, not a bound: 8 P (measured
# ratios 0.32 to 2.08). A wrong noise stream or a misplaced shard would be off by O(1).
SPMD_CASES = ("hand_mixture/euler_maruyama", "hand_mixture/adaptive", "flax_conv/heun")


SPMD_COUNTS = (2, 8)


@functools.lru_cache(maxsize=None)
def count_child(count: int) -> dict:
    """One child per device count for the two slow tests: the bitwise cases of ``COUNT_CASES`` through
    sample_on_devices and, at 2 and 8 devices, the ``SPMD_CASES`` through the out_shardings program (a case
    in both lists is run once with both checks). Each test reads only its own cases' entries."""
    return run_child(count, tuple(COUNT_CASES[count]), SPMD_CASES if count in SPMD_COUNTS else ())


@pytest.mark.slow
@pytest.mark.parametrize("count", COUNTS)
def test_pieces_are_bitwise_single_device_calls(count):
    """1, 2, 4 and 8 forced CPU devices, the cases of ``COUNT_CASES``: the output of sample_on_devices is
    bitwise the single-device calls of its pieces, each device holding its own pieces."""
    result = count_child(count)
    bitwise = {case: result["cases"][case] for case in COUNT_CASES[count]}
    assert len(bitwise) == len(COUNT_CASES[count])
    check_bitwise({**result, "cases": bitwise}, count)


@pytest.mark.slow
@pytest.mark.parametrize("count", SPMD_COUNTS)
def test_out_shardings_equals_single_device_calls_to_rounding(count):
    """jit(..., out_shardings=batch_sharding()) on ``count`` forced CPU devices against the single-device calls
    of its shards: within the tolerance above, and not bitwise for the hand-written softmax mixture (as the
    module docstring of sdevp_jax.distributed says)."""
    result = count_child(count)
    result = {**result, "cases": {case: result["cases"][case] for case in SPMD_CASES}}
    for case, r in result["cases"].items():
        tolerance = (8.0 if case.endswith("/adaptive") else 2.0) * r["perturbed_diff"]
        assert r["finite"] and 0 < tolerance < 1e-1, (case, r)
        assert r["spmd_diff"] <= tolerance, (case, r)
    assert result["cases"]["hand_mixture/euler_maruyama"]["spmd_diff"] > 0, result


# --------------------------------------------------------------------------------------- host-side checks


def _draw(key, batch, index_offset, cond):
    return jnp.zeros((batch, 2), jnp.float32) + index_offset.astype(jnp.float32)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_samples": 12, "piece_size": 8}, ValueError, r"num_samples must be a multiple of piece_size \* len"),
    ({"num_samples": 0, "piece_size": 8}, ValueError, "num_samples must be an int >= 1"),
    ({"num_samples": 8.0, "piece_size": 8}, TypeError, "num_samples must be an int"),
    ({"num_samples": 8, "piece_size": 0}, ValueError, "piece_size must be an int >= 1"),
    ({"num_samples": 8, "piece_size": True}, TypeError, "piece_size must be an int"),
    ({"num_samples": 8, "piece_size": 8, "index_offset": -1}, ValueError, "index_offset must be an int >= 0"),
    ({"num_samples": 8, "piece_size": 8, "index_offset": 2**32 - 4}, ValueError, r"index_offset \+ num_samples"),
    ({"num_samples": 8, "piece_size": 8, "devices": []}, ValueError, "devices must not be empty"),
    ({"num_samples": 8, "piece_size": 8, "devices": ["cpu:0"]}, TypeError, "devices must hold jax.Device"),
    ({"num_samples": 8, "piece_size": 8, "cond": np.zeros(4)}, ValueError, "cond must have num_samples = 8"),
])
def test_arguments_are_checked_on_the_host(kwargs, error, match):
    with pytest.raises(error, match=match):
        sv.distributed.sample_on_devices(_draw, jax.random.key(0), **kwargs)


def test_one_device_twice_and_a_draw_of_the_wrong_size_are_refused():
    d = jax.devices()[0]
    with pytest.raises(ValueError, match="devices must be distinct"):
        sv.distributed.sample_on_devices(_draw, jax.random.key(0), 16, piece_size=4, devices=[d, d])
    with pytest.raises(TypeError, match="pass \\[device\\]"):
        sv.distributed.sample_on_devices(_draw, jax.random.key(0), 16, piece_size=4, devices=d)
    with pytest.raises(ValueError, match="piece_size = 4 leading rows"):
        sv.distributed.sample_on_devices(lambda k, b, o, c: jnp.zeros((b + 1, 2)), jax.random.key(0), 8,
                                         piece_size=4)


def test_pieces_take_their_offsets_and_cond_rows_in_order():
    """One device, 3 pieces of 2: piece p gets index_offset + 2 p and cond rows [2 p, 2 p + 2); a pytree
    output comes back with the same structure."""
    cond = {"c": np.arange(6, dtype=np.float32)}

    def draw(key, batch, index_offset, cond):
        return {"offset": jnp.full((batch,), index_offset), "cond": cond["c"] * 1.0}

    out = sv.distributed.sample_on_devices(draw, jax.random.key(0), 6, piece_size=2, cond=cond, index_offset=10)
    np.testing.assert_array_equal(np.asarray(out["offset"]), [10, 10, 12, 12, 14, 14])
    np.testing.assert_array_equal(np.asarray(out["cond"]), np.arange(6))


if __name__ == "__main__":
    cases = [c for c in sys.argv[2].split(",") if c]
    spmd = [c for c in sys.argv[3].split(",") if c] if len(sys.argv) > 3 else []
    print(json.dumps(child(cases, spmd)))
