r"""The model boundary: the one place the user's ``model_fn`` is called during sampling.

A :class:`Denoiser` binds the user's model to the scheduler state, the samples'
dtype and their conditions. It calls ``model_fn(x, model_time(state, t))`` (or
``model_fn(x, t, cond)``) with ``x`` in the samples' dtype and the model's own time
input (:func:`~sdevp_jax.model_time`: the continuous time, or a discrete schedule's
training label), and converts what the model returns (``state.prediction_type``:
:math:`\epsilon`, ``v`` or :math:`x_0`) once, into what each solver's paper uses:

* :meth:`Denoiser.output`: the raw prediction, for the SDE updates, which take it as
  diffusers' ``step_pred`` does and convert it on entry;
* :meth:`Denoiser.eps`: :math:`\hat\epsilon` in the work dtype, the schedule at ``t``
  computed here (the fixed-step ODE solvers, the adaptive solver);
* :meth:`Denoiser.eps_x0`: :math:`(\hat\epsilon, \hat x_0)` with the grid's
  precomputed :math:`\alpha, \sigma` (the grid solvers).

Guidance (:func:`~sdevp_jax.cfg`, :func:`~sdevp_jax.classifier_guidance`) composes in
front of it: a guided model is another ``model_fn``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from .scheduler import eps_from_prediction, model_time, model_time_dtype, x0_from_prediction

__all__ = ["Denoiser"]


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """``model_fn`` bound to ``state``, the samples' dtype ``sample_dtype``, the work ``dtype`` and ``cond``."""

    state: Any
    model_fn: Callable
    sample_dtype: Any
    dtype: Any
    cond: Any = None

    def with_cond(self, cond) -> "Denoiser":
        """The same model with the conditions ``cond`` (one sample's, inside a per-sample solver)."""
        return dataclasses.replace(self, cond=cond)

    def __call__(self, x: jax.Array, t_model: jax.Array) -> jax.Array:
        """``model_fn`` at ``x`` and the model's time input ``t_model``, with ``cond`` where given."""
        if self.cond is None:
            return self.model_fn(x, t_model)
        return self.model_fn(x, t_model, self.cond)

    def output(self, x: jax.Array, t_vec: jax.Array) -> jax.Array:
        """The model's raw prediction at grid times ``t_vec`` (``(batch,)``), in the model's dtype."""
        return self(x, model_time(self.state, t_vec))

    def eps(self, x: jax.Array, t) -> jax.Array:
        r""":math:`\hat\epsilon(x, t)` in the work dtype; ``t`` 0-d or ``(batch,)``."""
        t_vec = jnp.broadcast_to(jnp.asarray(t, model_time_dtype(self.state)), (x.shape[0],))
        out = self(x.astype(self.sample_dtype), model_time(self.state, t_vec)).astype(self.dtype)
        if self.state.prediction_type == "epsilon":
            return out
        tb = t_vec.astype(self.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return eps_from_prediction(self.state.prediction_type, out, x.astype(self.dtype),
                                   *self.state.schedule.cast(self.dtype).alpha_sigma(tb))

    def eps_x0(self, x: jax.Array, t, alpha, sigma) -> tuple[jax.Array, jax.Array]:
        r""":math:`(\hat\epsilon, \hat x_0)` in the work dtype at the grid time ``t`` (0-d), where the
        schedule is ``alpha``, ``sigma``."""
        t_vec = jnp.full((x.shape[0],), t, model_time_dtype(self.state))
        out = self(x.astype(self.sample_dtype), model_time(self.state, t_vec)).astype(self.dtype)
        eps = eps_from_prediction(self.state.prediction_type, out, x, alpha, sigma)
        x0 = x0_from_prediction(self.state.prediction_type, out, x, alpha, sigma)
        return eps, x0
