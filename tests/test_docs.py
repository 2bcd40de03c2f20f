"""The docs site builds in strict mode, and every example of the README and the docs runs as written.

Convention for code blocks in ``README.md`` and ``docs/**/*.md``: only blocks fenced exactly
as ```` ```python ```` are executed; code shown but not run (diffusers' and maxdiffusion's side
of a comparison, a network this package does not ship, shell commands) is fenced as
```` ```py ````, ```` ```bash ```` or ```` ```text ````. The blocks of one page run in order in
one namespace (a later block uses the names of an earlier one), in this process (no
subprocess start-up to pay), under JAX's default promotion rules as a user runs them. Each page is one test, and
each page's test asserts on the names its examples define (shapes, finiteness, the property
its text claims), so an example that runs but no longer shows what the page says fails too.
The examples use small shapes and few steps where the page's point survives; the production
values are in their comments.

The docstring examples of the API reference (``Examples:`` sections with ``>>>`` lines) run as
doctests of their modules.
"""

import doctest
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdevp_jax as sv

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Exactly ```python, then the block up to the closing fence at the start of a line.
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```\s*$", re.S | re.M)


def blocks(page: Path) -> list[str]:
    return PYTHON_BLOCK.findall(page.read_text())


def run_page(page: Path) -> dict:
    """Run a page's ```python blocks in order in one namespace, from a scratch directory."""
    namespace: dict = {"__name__": f"docs:{page.name}"}
    code = blocks(page)
    assert code, f"{page} has no ```python block"
    # As a user runs them: JAX's default promotion rules, not the suite's strict ones
    # (tests/conftest.py), which third-party code such as optax's Adam does not follow.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for i, block in enumerate(code):
            exec(compile(block, f"{page.relative_to(ROOT)} (block {i + 1})", "exec"), namespace)
    return namespace


def finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x))))


# ---- what each page's examples must show --------------------------------------------------


def check_readme(ns):
    assert ns["samples"].shape == (1024, 2) and finite(ns["samples"])
    assert ns["many"].shape == (8, 128, 2) and finite(ns["many"])
    # the sampler lands on the embedded mixture's modes: the mean radius is the ring's, 1.5
    r = np.linalg.norm(np.asarray(ns["samples"]), axis=1)
    assert abs(r.mean() - 1.5) < 0.05, r.mean()


def check_getting_started(ns):
    assert ns["x"].shape == (1024, 2) and finite(ns["x"])
    assert ns["batches"].shape == (8, 256, 2) and finite(ns["batches"])
    # different seeds, different samples
    assert not np.array_equal(ns["batches"][0], ns["batches"][1])
    assert ns["samples"].shape == (1024, 2) and finite(ns["samples"])


def check_models(ns):
    assert ns["sd_state"].schedule.is_discrete and ns["sd_state"].spacing == "logsnr"
    assert ns["sd_samples"].shape == (512, 2) and finite(ns["sd_samples"])
    assert ns["flax_samples"].shape == (64, 2) and finite(ns["flax_samples"])
    assert ns["v_samples"].shape == (512, 2) and finite(ns["v_samples"])
    np.testing.assert_allclose(ns["back"], ns["t"], rtol=1e-6)
    assert ns["labels"][0] == pytest.approx(999.0, abs=1e-3)


def check_samplers(ns):
    assert ns["ddim"] == sv.solvers.DDIM(eta=1.0)
    for name in ("x_unipc", "x_pc", "x_dpm", "x_adaptive"):
        assert ns[name].shape == (256, 2) and finite(ns[name]), name
    assert int(ns["info"].nfe) == 20
    assert int(ns["info_adaptive"].nfe) > 0


def check_fitted_grids(ns):
    grid, info = ns["grid"], ns["info"]
    assert grid.shape == (5,) and np.all(np.diff(grid) < 0) and info.nfe == 5
    assert info.loss <= info.initial_loss * (1 + 1e-5)  # the fit returns its iterate of least loss
    assert ns["x"].shape == (256, 2) and finite(ns["x"])
    np.testing.assert_array_equal(ns["saved"].timesteps, grid)
    np.testing.assert_array_equal(ns["x_again"], ns["x"])
    assert ns["model_times"].shape == (5,) and ns["x_mt"].shape == (256, 2) and finite(ns["x_mt"])
    np.testing.assert_array_equal(ns["saved_mt"].model_times, ns["model_times"])


def check_guidance(ns):
    assert ns["xg"].shape == (512, 2) and finite(ns["xg"])
    modes = np.asarray(sv.mixtures.assign_modes(ns["cm"].mixture, ns["xg"]))
    assert np.isin(modes, [2, 3]).all()  # class 1 is the modes 2 and 3


def check_inverse_likelihood(ns):
    assert ns["logp"].shape == (8,) and finite(ns["logp"])
    assert ns["bpd"].shape == (8,) and finite(ns["bpd"])
    assert ns["inpainted"].shape == (16, 2)
    np.testing.assert_array_equal(ns["inpainted"][:, 0], ns["x0"][:16, 0])  # known entries kept exactly
    assert ns["rgb"].shape == (4, 3, 2, 2)
    np.testing.assert_allclose(np.asarray(ns["rgb"]).mean(axis=1), ns["gray"], atol=1e-5)


def check_training(ns):
    assert ns["losses"][-1] < ns["losses"][0]
    assert all(np.isfinite(ns["losses"]))


def check_jobs(ns):
    assert ns["first"].shape == (512, 2) and finite(ns["first"])
    np.testing.assert_array_equal(ns["first"], ns["again"])
    assert ns["x_dev"].shape == (512, 2)


def check_shipping(ns):
    np.testing.assert_array_equal(ns["samples"], ns["draw"](ns["key_data"]))


def check_reproducibility(ns):
    np.testing.assert_array_equal(ns["shifted"][:32], ns["first"][32:])
    assert not np.array_equal(ns["shifted"][32:], ns["first"][32:])  # other samples differ


def check_migrating(ns):
    assert ns["latents"].shape == (4, 4, 8, 8) and finite(ns["latents"])
    labels = np.asarray(ns["labels"])
    np.testing.assert_array_equal(labels, np.round(labels))  # integer labels on the pipeline's label grid
    want = sv.grids.diffusers_label_spacing(1000, 30, "linspace", 1, scheduler="DPMSolverMultistepScheduler")
    np.testing.assert_array_equal(labels.astype(np.int32), want)  # the config's class's labels, cast as a UNet would
    assert ns["replayed"].shape == (4, 4, 8, 8) and finite(ns["replayed"])
    assert ns["x"].shape == (8, 2) and finite(ns["x"])
    # the adapter in the Flax loop is sample_ode on the same grid (float32 rounding of two compilations)
    np.testing.assert_allclose(ns["flax_loop"], ns["ode"], rtol=0, atol=1e-5)


def check_semantics(ns):
    assert ns["x"].shape == (8, 2) and ns["x_mean"].shape == (8, 2)
    np.testing.assert_allclose(ns["x_mean"], ns["by_hand"], rtol=1e-5, atol=1e-6)


def check_schedules(ns):
    assert ns["sd"].is_discrete and not ns["cos"].is_discrete
    np.testing.assert_allclose(ns["round_trip"], 0.3, rtol=1e-5)


def check_embedded(ns):
    assert ns["exact"].shape == (1000, 2)
    assert set(np.unique(ns["modes"])) <= set(range(5))


CHECKS = {
    "README.md": check_readme,
    "docs/getting-started.md": check_getting_started,
    "docs/guides/models.md": check_models,
    "docs/guides/samplers.md": check_samplers,
    "docs/guides/fitted-grids.md": check_fitted_grids,
    "docs/guides/guidance.md": check_guidance,
    "docs/guides/inverse-likelihood.md": check_inverse_likelihood,
    "docs/guides/training.md": check_training,
    "docs/guides/jobs.md": check_jobs,
    "docs/guides/shipping.md": check_shipping,
    "docs/guides/reproducibility.md": check_reproducibility,
    "docs/guides/migrating.md": check_migrating,
    "docs/reference/semantics.md": check_semantics,
    "docs/reference/schedules.md": check_schedules,
    "docs/reference/embedded-model.md": check_embedded,
}
# Pages whose examples took more than 1.5 s each in `pytest tests/test_docs.py -n 0 --durations=0`
# on the project's 2-core VM (shared): out of the fast tier (`pytest -m "not slow"`), still in CI.
SLOW = {
    "README.md",
    "docs/getting-started.md",
    "docs/guides/models.md",
    "docs/guides/samplers.md",
    "docs/guides/fitted-grids.md",
    "docs/guides/guidance.md",
    "docs/guides/inverse-likelihood.md",
    "docs/guides/training.md",
    "docs/guides/jobs.md",
    "docs/reference/embedded-model.md",
}
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_every_page_with_examples_has_a_check():
    with_code = {str(p.relative_to(ROOT)) for p in PAGES if blocks(p)}
    assert with_code == set(CHECKS), with_code ^ set(CHECKS)


@pytest.mark.parametrize(
    "page", [pytest.param(p, marks=[pytest.mark.slow] if p in SLOW else []) for p in CHECKS]
)
def test_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    CHECKS[page](run_page(ROOT / page))


DOCTEST_MODULES = [
    "sdevp_jax", "sdevp_jax.scheduler", "sdevp_jax.loops", "sdevp_jax.schedules", "sdevp_jax.grids",
    "sdevp_jax.mixtures", "sdevp_jax.guidance", "sdevp_jax.denoiser", "sdevp_jax.training",
    "sdevp_jax.likelihood", "sdevp_jax.inverse", "sdevp_jax.config", "sdevp_jax.samplers",
    "sdevp_jax.jobs", "sdevp_jax.distributed", "sdevp_jax.sde", "sdevp_jax.solvers",
    "sdevp_jax.solvers.base", "sdevp_jax.solvers.registry", "sdevp_jax.solvers.multistep",
    "sdevp_jax.solvers.sde", "sdevp_jax.solvers.dpm", "sdevp_jax.solvers.unipc", "sdevp_jax.solvers.dpm_singlestep",
    "sdevp_jax.solvers.deis", "sdevp_jax.solvers.ipndm", "sdevp_jax.solvers.sa_solver", "sdevp_jax.solvers.classical",
    "sdevp_jax.fitting", "sdevp_jax.solvers.er_sde", "sdevp_jax.solvers.restart", "sdevp_jax.stepper",
]


def test_every_module_with_docstring_examples_is_tested():
    package = ROOT / "sdevp_jax"
    with_examples = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in package.rglob("*.py") if ">>>" in path.read_text()
    }
    assert with_examples <= set(DOCTEST_MODULES), with_examples - set(DOCTEST_MODULES)


# The docstring examples of these modules compile samplers, the likelihood's ODE solve, jobs and the
# exact mixture models (eagerly, op by op): about 45 s together on the project's 2-core VM (pytest
# --durations, the machine shared). They run in CI, out of the fast tier.
HEAVY_DOCTESTS = {"sdevp_jax.scheduler", "sdevp_jax.loops", "sdevp_jax.schedules", "sdevp_jax.mixtures",
                  "sdevp_jax.guidance", "sdevp_jax.training", "sdevp_jax.likelihood", "sdevp_jax.inverse",
                  "sdevp_jax.jobs", "sdevp_jax.distributed", "sdevp_jax.solvers.dpm", "sdevp_jax.solvers.unipc",
                  "sdevp_jax.fitting"}


@pytest.mark.parametrize("module", [
    pytest.param(m, marks=[pytest.mark.slow] if m in HEAVY_DOCTESTS else []) for m in DOCTEST_MODULES])
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {"jax": jax, "jnp": jnp, "np": np, "sv": sv}
    for test in finder.find(mod, module, globs=dict(globs)):
        if test.name.split(".")[-1].startswith("_") or not test.examples:
            continue
        # an object re-exported by several modules is tested where it is defined
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} docstring example(s) of {module} failed (see the output above)"


def test_docs_build_strict(tmp_path):
    """``mkdocs build --strict``: a warning (a broken link, a docstring griffe cannot parse) fails."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # every public name of sv.__all__ and of the namespaces has its entry in the API reference
    ids = set()
    for html in (tmp_path / "site" / "api").rglob("*.html"):
        ids |= set(re.findall(r'id="(sdevp_jax[\w.]*)"', html.read_text()))
    modules = {"sdevp_jax": sv}
    for name in ("solvers", "schedules", "grids", "mixtures", "guidance", "jobs", "distributed",
                 "config", "denoiser", "loops", "sde", "fitting"):
        modules[f"sdevp_jax.{name}"] = importlib.import_module(f"sdevp_jax.{name}")
    missing = [
        f"{m}.{n}" for m, mod in modules.items() for n in mod.__all__
        if not isinstance(getattr(mod, n), type(sv)) and f"{m}.{n}" not in ids
    ]
    assert not missing, f"public names without an API entry: {missing}"
