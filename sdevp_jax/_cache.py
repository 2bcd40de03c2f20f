"""JAX's persistent compilation cache, switched on by the edges (CLI, jobs), never on import.

A compiled sampler is written to a directory keyed by its lowered program, the
compile options, the backend and the JAX version; a later process that lowers the
same program loads the executable instead of compiling it again. Importing
``sdevp_jax`` changes no global JAX setting: :func:`compilation_cache` changes
the settings inside a ``with`` block and puts the previous ones back after it.

The cache is trusted input (JAX loads executables from it): keep it in a
directory only you can write to.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

ENV_VAR = "SDEVP_JAX_CACHE_DIR"

# Cache every compilation: JAX's defaults skip programs that compile in under a
# second, which is every CPU sampler of the embedded mixture.
_SETTINGS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,  # -1: no size limit, and no override by JAX
}


def default_cache_dir() -> Path:
    """``$SDEVP_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/sdevp-jax/jax``, else ``~/.cache/sdevp-jax/jax``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sdevp-jax" / "jax"


@contextlib.contextmanager
def compilation_cache(path: Optional[str | os.PathLike]) -> Iterator[Optional[Path]]:
    """Use JAX's persistent compilation cache in directory ``path`` inside the block.

    ``path=None`` leaves JAX's settings as they are. Otherwise the directory is
    created, JAX is pointed at it with thresholds that cache every compilation,
    and on exit the previous settings are restored. JAX opens its cache once per
    process; when the directory differs from the one it opened, it is reset so
    the new one is used.

    Yields:
      The cache directory (a ``Path``), or ``None``.

    Raises:
      ValueError: ``path`` exists and is not a directory, or cannot be created.
    """
    if path is None:
        yield None
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cache_dir: cannot use {str(path)!r} as the compilation cache directory ({err})") from None
    names = ["jax_compilation_cache_dir", *_SETTINGS]
    before = {name: getattr(jax.config, name) for name in names}
    if before["jax_compilation_cache_dir"] != str(path):
        jax_cache.reset_cache()  # JAX keeps the first directory it opened otherwise
    jax.config.update("jax_compilation_cache_dir", str(path))
    for name, value in _SETTINGS.items():
        jax.config.update(name, value)
    try:
        yield path
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        if before["jax_compilation_cache_dir"] != str(path):
            jax_cache.reset_cache()
