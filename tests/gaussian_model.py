"""The closed-form model the diffusers goldens share: data N(mu, s^2 I) on a discrete schedule, at integer labels.

At label ``n`` with :math:`a^2 =` ``alphas_cumprod[n]`` and :math:`\\sigma^2 = 1 - a^2`, the exact noise prediction
is :math:`\\hat\\epsilon = \\sigma(x - a\\mu)/(a^2 s^2 + \\sigma^2)` and the posterior mean
:math:`\\hat x_0 = \\mu + a s^2 (x - a\\mu)/(a^2 s^2 + \\sigma^2)`; a v-model returns
:math:`a\\hat\\epsilon - \\sigma\\hat x_0` (Salimans & Ho 2022). The golden scripts evaluate the same formula in NumPy.
"""

from __future__ import annotations

import jax.numpy as jnp


def label_gaussian_model(alphas_cumprod, prediction_type: str, s: float, mu: float = 0.5):
    """``model_fn(x, label)`` of the exact model on samples of any shape ``(B, ...)`` (the label rounded to the
    table's index)."""
    table = jnp.asarray(alphas_cumprod)

    def fn(x, label):
        a2 = table[jnp.round(label).astype(jnp.int32)].reshape((-1,) + (1,) * (x.ndim - 1))
        a, sigma = jnp.sqrt(a2), jnp.sqrt(1.0 - a2)
        eps = sigma * (x - a * mu) / (a2 * s * s + sigma * sigma)
        if prediction_type == "epsilon":
            return eps
        return a * eps - sigma * (mu + a * s * s * (x - a * mu) / (a2 * s * s + sigma * sigma))

    return fn


def assert_draws_the_mixture(mixture, x, exact, bias: float = 0.01) -> None:
    """Mode weights, means and standard deviations of samples ``x`` (B, D) of the embedded ``mixture`` against its
    exact draws ``exact``, each within 5 of its standard errors plus ``bias`` (the discretisation's, measured by
    each caller): a mode weight w has SE sqrt(w (1 - w) / B), a mean coordinate s / sqrt(B), a standard deviation
    about s / sqrt(2B) for a near-normal marginal and twice that for a bimodal one (hence 10)."""
    import numpy as np

    import sdevp_jax as sv

    batch = x.shape[0]
    weights = np.bincount(np.asarray(sv.mixtures.assign_modes(mixture, x)), minlength=len(mixture.weights)) / batch
    w = np.asarray(mixture.weights)
    assert np.all(np.abs(weights - w) <= 5 * np.sqrt(w * (1 - w) / batch) + bias), (weights, w)
    assert np.all(np.abs(x.mean(0) - exact.mean(0)) <= 5 * exact.std(0) / np.sqrt(batch) + bias), (x.mean(0),
                                                                                                 exact.mean(0))
    assert np.all(np.abs(x.std(0) - exact.std(0)) <= 10 * exact.std(0) / np.sqrt(2 * batch) + bias), (x.std(0),
                                                                                                    exact.std(0))
