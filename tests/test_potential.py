"""The written-out potential is Pyro's potential; compiling it changes nothing but
the last bits; a compiler that fails leaves the fit exactly as without it."""

import shutil
import warnings

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.estimators.resolve import shipped_estimator
from sbi_plugins.inference import compile as compile_module
from sbi_plugins.inference.compile import compiled_potential, worth_compiling
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.likelihoods.lapse import make_lapse
from sbi_plugins.model.model import build_model, plan_model
from sbi_plugins.model.potential import Potential


def _ddm_trials() -> pd.DataFrame:
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(4, 30, seed=3)
    return trials


def _model(name: str, kind: str, pooling, p_outlier=None, formulas=None):
    sim = sbi_plugins.get_simulator(name)
    if name == "ddm":
        data, group = _ddm_trials(), "participant_id"
        data["condition"] = np.tile(["easy", "hard"], len(data) // 2)
    else:
        from sbi_plugins_cookie import example_data

        data, group = example_data(), "location"
    prepared = prepare_data(data, sim, group)
    parameters = plan_model(sim, data, group, pooling, formulas)
    lik = (
        Likelihood(sim) if kind == "exact" else Likelihood(sim, shipped_estimator(sim))
    )
    lapse = make_lapse(p_outlier, sim, prepared.x)
    model, kwargs = build_model(parameters, prepared, lik, lapse)
    return model, kwargs, model.start()


def _pyro_potential(model, kwargs, start):
    pyro.set_rng_seed(0)
    init, fn, transforms, _ = initialize_model(
        model, model_kwargs=kwargs, init_strategy=init_to_value(values=start)
    )
    return init, fn, transforms


def _random_points(init, count: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            k: v.detach() + 0.5 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
            for k, v in init.items()
        }
        for _ in range(count)
    ]


CASES = [
    (
        "ddm",
        "exact",
        {"v": "partial", "a": "none", "z": "complete", "t": "complete"},
        None,
    ),
    (
        "ddm",
        "neural",
        {"v": "partial", "a": "partial", "z": "none", "t": "complete"},
        None,
    ),
    ("ddm", "exact", "partial", None),
    ("ddm", "neural", {"t": "none"}, 0.05),
    ("ddm", "exact", "partial", True),
    ("cookie", "exact", "partial", None),
    ("cookie", "neural", "none", True),
    ("cookie", "neural", "complete", None),
]
FORMULA = {"v": "v ~ 1 + C(condition) + (1 + C(condition)|participant_id)"}
FORMULA_CASES = [
    ("ddm", "exact", "partial", None, FORMULA),
    ("ddm", "neural", {"a": "none", "z": "complete", "t": "partial"}, True, FORMULA),
    ("ddm", "exact", "complete", None, {**FORMULA, "t": "t ~ 1 + (1|participant_id)"}),
]


@pytest.mark.parametrize(
    ("name", "kind", "pooling", "p_outlier", "formulas"),
    [(*case, None) for case in CASES] + FORMULA_CASES,
)
def test_derived_potential_equals_pyros(name, kind, pooling, p_outlier, formulas):
    """The potential derived from the model's statement (`LogJoint` sites) has the
    value and gradient of Pyro's (traced model, plates, transforms) at random
    unconstrained points, to rounding: every pooling mode, formulas beside pooled
    parameters, both likelihoods, with and without lapses (fixed and estimated)."""
    model, kwargs, start = _model(name, kind, pooling, p_outlier, formulas)
    init, pyro_fn, transforms = _pyro_potential(model, kwargs, start)
    mine = Potential(model, transforms, kwargs)
    for point in _random_points(init, 4, seed=1):
        expected_grads, expected = potential_grad(pyro_fn, point)
        grads, value = potential_grad(mine, point)
        assert torch.isfinite(expected)
        assert float(value) == pytest.approx(float(expected), rel=1e-12, abs=1e-9)
        for site in expected_grads:
            assert torch.allclose(
                grads[site], expected_grads[site], rtol=1e-9, atol=1e-9
            )


needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile needs a C++ compiler (the fallback is tested below)",
)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("kind", ["exact", "neural", "formula"])
def test_compiled_potential_equals_the_uncompiled_one(kind):
    """torch.compile fuses the float32 network's operations in another order: the
    potential agrees to 1e-5 relative (the run-time check's tolerance; float32
    rounding over 1,000 rows reaches 1e-6) and its gradient to 1e-5 of the largest
    component, at points other than the one it was checked at when compiled. Built
    with distribution validation on (its checks branch on values, which a compiled
    graph cannot), as torch and Pyro have it by default."""
    with pyro.validation_enabled(True):
        model, kwargs, start = _model(
            "ddm",
            "neural" if kind == "formula" else kind,
            {"v": "partial", "a": "partial", "z": "complete", "t": "none"}
            if kind != "formula"
            else {"a": "partial", "z": "complete", "t": "none"},
            0.05 if kind == "neural" else None,
            FORMULA if kind == "formula" else None,
        )
        init, pyro_fn, _ = _pyro_potential(model, kwargs, start)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no fallback
            compiled = compiled_potential(model, kwargs, [start])
    assert compiled is not None
    for point in _random_points(init, 3, seed=2):
        expected_grads, expected = potential_grad(pyro_fn, point)
        grads, value = potential_grad(compiled, point)
        assert float(value) == pytest.approx(float(expected), rel=1e-5)
        largest = max(float(g.abs().max()) for g in expected_grads.values())
        for site in expected_grads:
            gap = float((grads[site] - expected_grads[site]).abs().max())
            assert gap <= 1e-5 * largest, (site, gap, largest)
    # the gradient reaches autograd as one node: it must scale with what flows
    # into it, as VI's factor (-potential) sends -1
    flat = compiled.layout.flatten(point).detach().requires_grad_(True)
    (scaled,) = torch.autograd.grad(-2.5 * compiled.flat(flat), flat)
    assert torch.allclose(scaled, -2.5 * compiled.layout.flatten(grads))


def test_a_failing_compiler_leaves_the_fit_as_without_it(monkeypatch, cookie_data):
    """No C++ compiler (here: torch.compile raising) warns once and samples through
    Pyro's potential: the very draws of compile=False."""

    def broken(fn, **_):
        def call(*args):
            raise RuntimeError("no C++ compiler found")

        return call

    small = cookie_data.groupby("location").head(8).reset_index(drop=True)
    common = {
        "group": "location",
        "likelihood": "exact",
        "draws": 30,
        "tune": 30,
        "chains": 2,
        "seed": 4,
        "progress": False,
        "posterior_predictive": False,
    }
    plain = sbi_plugins.fit(small, "cookie", compile=False, **common)
    monkeypatch.setattr(compile_module.torch, "compile", broken)
    with pytest.warns(UserWarning, match="could not compile.*no C\\+\\+ compiler"):
        fallback = sbi_plugins.fit(small, "cookie", compile=True, **common)
    np.testing.assert_array_equal(
        fallback.posterior["lam"].values, plain.posterior["lam"].values
    )


def test_a_potential_that_disagrees_with_pyros_is_never_sampled(monkeypatch):
    """The run-time check: a derived potential that differs from Pyro's (here: one
    that forgets the Jacobian of the transforms) is refused with a warning naming
    the difference, and the fit would sample Pyro's own. torch.compile is replaced
    by the identity, so the check itself is what is tested, with no compiler."""
    model, kwargs, start = _model("cookie", "exact", "partial")
    monkeypatch.setattr(compile_module.torch, "compile", lambda fn, **_: fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert compiled_potential(model, kwargs, [start]) is not None

    def without_jacobian(self, params):
        values = {k: self.transforms[k].inv(v) for k, v in params.items()}
        return -self.model.log_joint(values, **self.model_kwargs)

    monkeypatch.setattr(Potential, "__call__", without_jacobian)
    with pytest.warns(UserWarning, match=r"disagrees with Pyro's potential .*value"):
        assert compiled_potential(model, kwargs, [start]) is None


def test_compiling_is_the_default_for_long_sampling_of_large_data_only(monkeypatch):
    monkeypatch.delenv("SBI_PLUGINS_COMPILE", raising=False)
    assert worth_compiling(None, chains=4, iterations=2000, rows=1000)
    assert not worth_compiling(None, chains=2, iterations=800, rows=1000)
    assert not worth_compiling(None, chains=4, iterations=2000, rows=150)
    assert not worth_compiling(False, chains=4, iterations=2000, rows=1000)
    assert worth_compiling(True, chains=1, iterations=10, rows=10)
    monkeypatch.setenv("SBI_PLUGINS_COMPILE", "0")
    assert not worth_compiling(None, chains=4, iterations=2000, rows=1000)
    monkeypatch.setenv("SBI_PLUGINS_COMPILE", "1")
    assert worth_compiling(None, chains=1, iterations=10, rows=10)


@pytest.mark.parametrize(
    ("flag", "expected"), [([], None), (["--compile"], True), (["--no-compile"], False)]
)
def test_cli_passes_compile_to_fit(monkeypatch, tmp_path, flag, expected):
    from sbi_plugins import cli, runner

    seen = {}

    def fake_fit(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(runner, "fit", fake_fit)
    with pytest.raises(SystemExit):
        cli.main(["fit", "cookie", "x.csv", "--out", str(tmp_path / "f.nc"), *flag])
    assert seen["compile"] is expected


@pytest.mark.slow
@needs_compiler
def test_a_compiled_fit_samples_the_same_posterior():
    """End to end, chains forked after compiling: the compiled fit's posterior means
    agree with the uncompiled fit's to within four Monte Carlo standard errors of
    their difference (the draws differ: rounding sends NUTS down other paths)."""
    import arviz as az

    compiles = []

    def counting_backend(graph, example_inputs):
        compiles.append(graph)
        return graph.forward

    users_own = torch.compile(lambda x: x.sin() * 2, backend=counting_backend)
    users_own(torch.ones(3))
    trials = _ddm_trials()
    common = {
        "group": "participant_id",
        "pooling": {"v": "partial", "a": "complete", "z": "complete", "t": "complete"},
        "draws": 300,
        "tune": 300,
        "chains": 2,
        "cores": 2,
        "seed": 7,
        "progress": False,
        "posterior_predictive": False,
    }
    fits = {
        c: sbi_plugins.fit(trials, "ddm", compile=c, **common) for c in (False, True)
    }
    names = ["v", "v_mu", "a", "z", "t"]
    plain, compiled = (
        az.summary(fits[c], var_names=names, round_to="none") for c in (False, True)
    )
    assert [fits[c].posterior.attrs["compiled"] for c in (False, True)] == [0, 1]
    assert (compiled["r_hat"] < 1.05).all()
    gap = (compiled["mean"] - plain["mean"]).abs()
    allowed = 4 * np.hypot(compiled["mcse_mean"], plain["mcse_mean"])
    assert (gap < allowed).all(), (gap / allowed).to_dict()
    assert not np.array_equal(
        fits[False].posterior["v"].values, fits[True].posterior["v"].values
    )
    # the user's own compiled function was left compiled (no global reset)
    users_own(torch.ones(3))
    assert len(compiles) == 1
