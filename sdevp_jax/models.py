"""Deprecated: the mixtures moved to :mod:`sdevp_jax.mixtures`, guidance to :mod:`sdevp_jax.guidance`.

Importing this module warns (DeprecationWarning) and gives the same objects, for this release.
"""

import warnings

from .guidance import cfg, classifier_guidance  # noqa: F401
from .mixtures import *  # noqa: F401,F403
from .mixtures import __all__ as _mixtures_all

warnings.warn(
    "sdevp_jax.models is deprecated and will be removed in 0.6: use sdevp_jax.mixtures (the toy mixtures) "
    "and sdevp_jax.guidance (cfg, classifier_guidance)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [*_mixtures_all, "cfg", "classifier_guidance"]
