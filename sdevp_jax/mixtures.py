"""The embedded closed-form Gaussian mixtures: exact models to run and check samplers with.

A namespace: ``sv.mixtures.default_mixture()``, ``sv.mixtures.make_mixture_eps_fn(state,
mixture)`` and the rest, the same objects as the top-level names of earlier releases
(``sv.default_mixture`` ...), which stay for this release. Under every schedule the
mixture's diffused density, score and noise prediction are exact (a Gaussian mixture
stays one under the VP forward process), so samples can be checked against the target.
"""

from .models import (  # noqa: F401
    NULL_CLASS,
    ClassMixture,
    GaussianMixture,
    assign_modes,
    default_class_mixture,
    default_mixture,
    diffused_log_prob,
    make_class_log_prob,
    make_class_mixture,
    make_class_model,
    make_mixture,
    make_mixture_eps_fn,
    mixture_eps,
    sample_class_mixture,
    sample_mixture,
)

__all__ = ["GaussianMixture", "ClassMixture", "NULL_CLASS", "make_mixture", "default_mixture", "mixture_eps",
           "make_mixture_eps_fn", "sample_mixture", "assign_modes", "diffused_log_prob", "make_class_mixture",
           "default_class_mixture", "make_class_model", "make_class_log_prob", "sample_class_mixture"]
