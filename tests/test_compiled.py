"""The compiled samplers are accelerator-clean: checks on the lowered program, on CPU.

For ``sv.sample`` with every registered solver that steps through a fixed grid (the
registry, read here: a new solver is checked without an edit) and a predictor +
corrector configuration, the StableHLO that ``jax.jit(...).lower(...)`` emits must have

* no host round trip: no callback custom_call (``jax.debug.callback``,
  ``jax.pure_callback``, ``io_callback`` all lower to one), no infeed/outfeed,
  send/recv;
* no float64 value while x64 is off;
* one loop over the steps, whose trip count is a constant equal to the number
  of steps (``lax.scan`` lowers to ``stablehlo.while`` whose ``cond`` region
  compares the counter with a constant); every other loop (threefry's rounds) has
  a trip count that does not change with the step count;
* no array whose size grows with the step count except the 1-D timestep grid
  and its 1-D transforms (log-SNR, sigma): the lowered programs for ``N`` and
  ``2N`` steps differ only in such 1-D shapes, and the compiled temporary memory
  grows by at most a few 1-D grids' bytes.

Donation: ``sample``/``sample_ode`` take no sample buffer (``x_T`` is drawn
inside from the key), so there is nothing to donate; the scan carries ``x`` and
XLA updates it in place, which the temporary-memory check bounds instead.

And ``jax.export``: a jitted sampler exported at a fixed shape, serialized,
deserialized and called gives bitwise the samples of the jitted function.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import sdevp_jax as sv

# N and 2N steps; no dimension of the sample, nor threefry's 5 rounds, equals N, 2N or a neighbour.
N = 23  # > beta_max = 20, as the corrector needs
BATCH, EVENT = 8, (64,)
CONFIGS = {
    "sample pc": ("sample", dict(predictor="euler_maruyama", corrector="langevin")),
    "ode dpm_solver": ("sample_ode", dict(method="dpm_solver")),
} | {
    # every fixed-grid solver (the adaptive one's loop has a data-dependent trip count by design)
    f"solver {name}": ("sample", dict(solver=name)) for name, cls in sv.solvers.REGISTRY.items()
    if cls.kind != "corrector" and name != "adaptive"
}
HOST_OPS = ("stablehlo.infeed", "stablehlo.outfeed", "stablehlo.send", "stablehlo.recv")


def sampler(config, steps):
    """``(jitted f(state, key), state)`` for one configuration; the model is the embedded 64-D mixture."""
    name, kwargs = CONFIGS[config]
    state = sv.set_timesteps(sv.create_state(), steps)
    model_fn = sv.mixtures.make_mixture_eps_fn(state, sv.mixtures.default_mixture(int(np.prod(EVENT))))
    fn = getattr(sv, name)
    return jax.jit(lambda st, key: fn(st, model_fn, key, (BATCH, *EVENT), **kwargs)), state


@functools.lru_cache(maxsize=None)
def lowered(config, steps):
    """The lowered program (shared by the tests: each lowers and compiles once per configuration)."""
    f, state = sampler(config, steps)
    return f.lower(state, jax.random.key(0))


def lowered_text(config, steps) -> str:
    return lowered(config, steps).as_text()


@functools.lru_cache(maxsize=None)
def compiled(config, steps):
    return lowered(config, steps).compile()


def while_trip_counts(text: str) -> list[int]:
    """The constant each ``stablehlo.while``'s condition compares its counter with, in program order.

    A while whose condition is not ``compare LT, counter, constant`` (a loop with a
    data-dependent trip count) is returned as -1.
    """
    counts = []
    for match in re.finditer(r"stablehlo\.while\(.*?\n\s*cond \{\n(.*?)\n\s*\} do \{", text, re.S):
        cond = match.group(1)
        const = re.search(r"(%\S+) = stablehlo\.constant dense<(\d+)> : tensor<i(?:32|64)>", cond)
        compare = re.search(r"stablehlo\.compare\s+LT, %\S+, (%\S+),", cond)
        counts.append(int(const.group(2)) if const and compare and compare.group(1) == const.group(1) else -1)
    assert len(counts) == text.count("stablehlo.while("), "a while loop's condition could not be parsed"
    return counts


def tensor_shapes(text: str) -> set[tuple[int, ...]]:
    """Every static tensor shape in the program (element types dropped)."""
    shapes = set()
    for dims in re.findall(r"tensor<((?:\d+x)*)[a-z]", text):
        shapes.add(tuple(int(d) for d in dims.split("x") if d))
    return shapes


@pytest.mark.parametrize("config", CONFIGS)
def test_a_second_trace_lowers_to_the_same_program(config):
    """The persistent compilation cache keys on the program: tracing again must not change it
    (a per-step ``checkify.debug_check`` did: its error codes are numbered per process)."""
    f, state = sampler(config, N)
    again = f.lower(state, jax.random.key(0)).as_text()
    assert again == lowered_text(config, N)


@pytest.mark.parametrize("config", CONFIGS)
def test_no_host_callbacks_or_transfers(config):
    text = lowered_text(config, N)
    targets = set(re.findall(r"stablehlo\.custom_call @([\w.]+)", text))
    assert not {t for t in targets if re.search(r"callback|host|python", t, re.I)}, targets
    # UniPC solves its 2x2 and 3x3 order conditions with jnp.linalg.solve: LAPACK's LU on CPU (a device
    # kernel, not a host round trip); nothing else may call out
    assert not {t for t in targets if not t.startswith("lapack_")}, f"unexpected custom calls {targets}"
    assert not [op for op in HOST_OPS if op in text]


@pytest.mark.parametrize("config", CONFIGS)
def test_no_float64_when_x64_is_off(config):
    assert not jax.config.jax_enable_x64
    assert "f64" not in lowered_text(config, N)
    assert "f64" not in compiled(config, N).as_text()


@pytest.mark.parametrize("config", CONFIGS)
def test_one_loop_with_a_static_trip_count_equal_to_the_steps(config):
    n = N
    def steps(k):  # the solver's grid has k points (an ODE solver steps between them) or k + 1 (an SDE's)
        state = sv.set_timesteps(sv.create_state(), k)
        kwargs = CONFIGS[config][1]
        solver = sv.solvers.make(kwargs.get("solver", kwargs.get("method", kwargs.get("predictor"))))
        return solver.num_steps(solver.times(state, jnp.float32).shape[0])
    counts_n, counts_2n = while_trip_counts(lowered_text(config, n)), while_trip_counts(lowered_text(config, 2 * n))
    assert -1 not in counts_n
    assert len(counts_n) == len(counts_2n)
    changed = [i for i, (a, b) in enumerate(zip(counts_n, counts_2n)) if a != b]
    assert len(changed) == 1, (counts_n, counts_2n)  # exactly one loop depends on the step count ...
    assert (counts_n[changed[0]], counts_2n[changed[0]]) == (steps(n), steps(2 * n))  # ... and runs once per step
    assert counts_n.count(steps(n)) == 1


@pytest.mark.parametrize("config", CONFIGS)
def test_only_the_1d_grid_grows_with_the_steps(config):
    n = N
    only_2n = tensor_shapes(lowered_text(config, 2 * n)) - tensor_shapes(lowered_text(config, n))
    assert only_2n, "the grid's shape should differ"  # the test would be vacuous otherwise
    assert all(len(s) == 1 and 2 * n - 1 <= s[0] <= 2 * n + 1 for s in only_2n), only_2n


@pytest.mark.parametrize("config", CONFIGS)
def test_compiled_temporary_memory_does_not_grow_with_the_steps(config):
    """Temp bytes at 2N vs N steps: at most 8 float32 grids more, 8 * 4 * N bytes.

    With a (8, 64) sample, stacking one per-step array would add 8 * 64 * 4 = 2048
    bytes per step, 64 times that bound's 32 bytes per step.
    """
    temp = [compiled(config, steps).memory_analysis().temp_size_in_bytes for steps in (N, 2 * N)]
    assert temp[1] - temp[0] <= 8 * 4 * N, temp


def test_jax_export_round_trip_is_bitwise():
    """Export at a fixed shape, serialize to bytes, deserialize, call: the same bits as the jitted sampler."""
    pytest.importorskip("flatbuffers", reason="jax.export's serialization needs flatbuffers")
    f, state = sampler("sample pc", N)
    key_data = jax.random.key_data(jax.random.key(7))
    jitted = jax.jit(lambda data: f(state, jax.random.wrap_key_data(data)))
    blob = export.export(jitted)(key_data).serialize()
    assert isinstance(blob, (bytes, bytearray))
    restored = export.deserialize(blob)
    assert restored.in_avals[0].shape == key_data.shape and restored.out_avals[0].shape == (BATCH, *EVENT)
    got, want = restored.call(key_data), jitted(key_data)
    assert got.dtype == want.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
