"""`sbi-plugins check`: each check passes a good simulator and fails the fault it is
there to catch, with a message that says what to do; exit codes 0, 1 and 2.

Sections follow the modules of `sbi_plugins.check`: report, contract, estimator,
calibration, then the entry point end to end and the command line."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from sbi_plugins import (
    EstimatorArtifact,
    EstimatorRecipe,
    Observable,
    Parameter,
    Simulator,
    hookimpl,
)
from sbi_plugins.check import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    CheckReport,
    SbcSettings,
    check_calibration,
    check_simulator,
)
from sbi_plugins.cli import main
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "sbi-plugins-signal"
SHIPPED = EXAMPLE / "sbi_plugins_signal" / "signal-nsf.pt"


def gauss_simulate(theta, rng):
    return (theta[:, 0] + theta[:, 1] * rng.standard_normal(len(theta)))[:, None]


def gauss_log_likelihood(theta, x):
    return Normal(theta[..., 0], theta[..., 1]).log_prob(x[..., 0])


def gauss(**changes) -> Simulator:
    """A Gaussian toy simulator; `changes` plant one fault at a time."""
    fields = {
        "name": "gauss",
        "parameters": (Parameter("mu", -2.0, 2.0), Parameter("sigma", 0.5, 2.0)),
        "observables": (Observable("y", "continuous"),),
        "simulate": gauss_simulate,
        "log_likelihood": gauss_log_likelihood,
    }
    return Simulator(**{**fields, **changes})


def statuses(report: CheckReport) -> dict[str, str]:
    return {f"{c.section}/{c.name}": c.status for c in report.checks}


def message(report: CheckReport, name: str) -> str:
    return next(c.message for c in report.checks if c.name == name)


def contract_only(simulator: Simulator) -> CheckReport:
    return check_simulator(simulator, sbc=None, simulations=500)


# -- the report ----------------------------------------------------------------------


def test_the_report_renders_its_verdict_and_strict_json():
    report = CheckReport("toy", "1", "plugin toy")
    report.add(
        "contract", "a", PASS, "fine", value=np.float64(np.nan), ranks=np.arange(3)
    )
    report.add("contract", "b", WARN, "close")
    report.add("estimator", "c", SKIP, "none")
    assert report.ok
    assert (
        report.format()
        .splitlines()[-1]
        .startswith("all 2 checks passed (1 warnings, 1 skipped) in")
    )
    report.add("estimator", "d", FAIL, "bad")
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["ok"] is False and data["failed"] == ["estimator/d"]
    assert data["checks"][0]["values"] == {"value": None, "ranks": [0, 1, 2]}
    text = report.format()
    assert "\nestimator\n  SKIP  c: none\n  FAIL  d: bad\n" in text
    assert "FAILED: estimator/d (1 warnings, 1 skipped)" in text


# -- contract ------------------------------------------------------------------------


def test_a_good_simulator_passes_the_contract_and_skips_what_it_lacks(registry):
    report = contract_only(gauss())
    assert report.ok
    got = statuses(report)
    for name in ("training prior", "shape and dtype", "finite outputs", "support"):
        assert got[f"contract/{name}"] == PASS
    assert got["contract/determinism"] == PASS
    assert got["contract/exact likelihood"] == PASS
    assert got["estimator/metadata"] == SKIP
    assert "sbi-plugins train gauss" in message(report, "metadata")
    assert got["calibration/SBC"] == SKIP


def test_train_option_trains_and_caches_the_recipe_when_nothing_is_shipped(registry):
    from sbi_plugins.estimators.resolve import cache_path

    tiny = EstimatorRecipe(
        kind="nsf", num_simulations=1000, hidden_features=16, max_num_epochs=3
    )
    simulator = gauss(name="gauss_tiny", recipe=tiny)
    report = check_simulator(simulator, sbc=None, train=True)
    assert statuses(report)["estimator/metadata"] == PASS
    assert cache_path(simulator).is_file()
    assert str(cache_path(simulator)) in message(report, "metadata") or (
        cache_path(simulator).name in message(report, "metadata")
    )


def _wrong_shape(theta, rng):
    return np.zeros((len(theta), 3))


def _in_place(theta, rng):
    theta[:, 0] += 1.0
    return gauss_simulate(theta, rng)


def _global_rng(theta, rng):
    return gauss_simulate(theta, np.random.default_rng())


def _strings(theta, rng):
    return np.full((len(theta), 1), "a")


@pytest.mark.parametrize(
    "simulate,check,pattern",
    [
        (_wrong_shape, "shape and dtype", r"shape \(500, 3\).*expected \(500, 1\)"),
        (_in_place, "shape and dtype", "changed its theta argument in place"),
        (_strings, "shape and dtype", "dtype <U1; expected real numbers"),
        (_global_rng, "determinism", "draw all randomness from the rng argument"),
        (
            lambda theta, rng: 1 / 0,
            "shape and dtype",
            "simulate raised ZeroDivisionError",
        ),
    ],
)
def test_contract_faults_fail_the_check_that_names_them(simulate, check, pattern):
    report = contract_only(gauss(simulate=simulate))
    assert not report.ok
    assert statuses(report)[f"contract/{check}"] == FAIL
    assert re.search(pattern, message(report, check)), message(report, check)


def _with_nans(share):
    def simulate(theta, rng):
        x = gauss_simulate(theta, rng)
        x[: int(share * len(x))] = np.nan
        return x

    return simulate


def test_a_few_nans_warn_and_many_fail():
    few = contract_only(gauss(simulate=_with_nans(0.004)))
    assert statuses(few)["contract/finite outputs"] == WARN and few.ok
    assert "2 of 500 simulations NaN or infinite (y: 2" in message(
        few, "finite outputs"
    )
    many = contract_only(gauss(simulate=_with_nans(0.05)))
    assert statuses(many)["contract/finite outputs"] == FAIL and not many.ok
    assert "more than 1% fails" in message(many, "finite outputs")


def test_values_outside_the_declared_support_fail():
    positive = gauss(observables=(Observable("y", "continuous", lower=0.0),))
    report = contract_only(positive)
    assert statuses(report)["contract/support"] == FAIL
    assert "outside (0, inf)" in message(report, "support")
    counts = gauss(
        observables=(Observable("y", "count"),),
        log_likelihood=None,
        simulate=lambda theta, rng: np.abs(gauss_simulate(theta, rng)),
    )
    assert "integers in" in message(contract_only(counts), "support")


def test_a_deterministic_simulator_only_warns():
    report = contract_only(gauss(simulate=lambda theta, rng: theta[:, :1].copy()))
    assert statuses(report)["contract/determinism"] == WARN
    assert "deterministic" in message(report, "determinism")


def test_an_exact_likelihood_that_disagrees_or_has_no_gradient_fails():
    def swapped(theta, x):  # parameters in the wrong order: sigma as the mean
        lp = Normal(theta[..., 1], theta[..., 0].abs()).log_prob(x[..., 0])
        return torch.where(theta[..., 0] > 0, lp, torch.full_like(lp, -torch.inf))

    report = contract_only(gauss(log_likelihood=swapped))
    assert statuses(report)["contract/exact likelihood"] == FAIL
    assert "-inf or NaN for" in message(report, "exact likelihood")

    def numpy_only(theta, x):
        t, y = theta.detach().numpy(), x.numpy()
        z = (y[..., 0] - t[..., 0]) / t[..., 1]
        return torch.as_tensor(-0.5 * z**2 - np.log(t[..., 1] * np.sqrt(2 * np.pi)))

    report = contract_only(gauss(log_likelihood=numpy_only))
    assert "no finite gradient" in message(report, "exact likelihood")


def test_outside_support_is_the_contracts_rule_shared_with_training():
    """One rule, in `sbi_plugins.contract`: open bounds for continuous values,
    integers for counts, declared codes for choices; NaN is not its business."""
    from sbi_plugins.contract import outside_support
    from sbi_plugins.estimators import simulation

    assert simulation.outside_support is outside_support
    simulator = gauss(
        observables=(
            Observable("y", "continuous", lower=0.0),
            Observable("n", "count", upper=10),
            Observable("c", "choice", codes=(-1, 1)),
        ),
        log_likelihood=None,
    )
    x = np.array(
        [
            [0.5, 3.0, 1.0],  # all fine
            [0.0, 10.0, -1.0],  # y at its open lower bound
            [np.nan, 2.5, 0.0],  # n not an integer, c not a code; NaN is not flagged
            [1.0, 11.0, 1.0],  # n above its upper bound
        ]
    )
    expected = [[0, 0, 0], [1, 0, 0], [0, 1, 1], [0, 1, 0]]
    assert outside_support(simulator, x).tolist() == (
        np.array(expected, dtype=bool).tolist()
    )


# -- estimator checks, with the tutorial plugin's shipped estimator -----------------


@pytest.fixture(scope="module")
def signal():
    sys.path.insert(0, str(EXAMPLE))
    try:
        import sbi_plugins_signal

        yield sbi_plugins_signal.SIGNAL
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("sbi_plugins_signal", None)


class Plugin:
    def __init__(self, simulator, artifact=None):
        self.simulator, self.artifact = simulator, artifact

    @hookimpl
    def register_simulators(self, register):
        register(self.simulator)

    @hookimpl
    def register_estimators(self, register):
        if self.artifact is not None:
            register(self.artifact)


def test_the_shipped_estimator_passes_metadata_heldout_and_exact(signal):
    report = check_simulator(signal, estimator=SHIPPED, sbc=None)
    got = statuses(report)
    assert report.ok, report.format()
    assert got["estimator/metadata"] == got["estimator/held-out log-likelihood"] == PASS
    exact = next(c for c in report.checks if c.name == "error vs exact")
    assert exact.status == PASS and exact.values["mae"] < 0.1
    # KL(exact || learned) of a good estimator: small and positive within its noise
    assert -2 * exact.values["kl_se"] < exact.values["kl"] < 0.05


def test_an_estimator_for_another_version_fails_its_metadata(signal):
    report = check_simulator(
        dataclasses.replace(signal, version="2"), estimator=SHIPPED
    )
    assert statuses(report)["estimator/metadata"] == FAIL
    assert "version 1, installed is 2" in message(report, "metadata")
    assert statuses(report)["calibration/SBC"] == SKIP


def test_a_changed_simulator_fails_the_heldout_check(signal):
    def shifted(theta, rng):  # simulate changed, version not bumped
        return gauss_simulate(theta, rng) + 1.0

    report = check_simulator(
        dataclasses.replace(signal, simulate=shifted), estimator=SHIPPED, sbc=None
    )
    assert statuses(report)["estimator/held-out log-likelihood"] == FAIL
    assert "Bump the simulator's version" in message(report, "held-out log-likelihood")


def test_an_exact_likelihood_of_another_model_fails_against_the_learned_one(signal):
    def too_wide(theta, x):  # finite and differentiable, but not what simulate does
        return Normal(theta[..., 0], 1.5 * theta[..., 1]).log_prob(x[..., 0])

    report = check_simulator(
        dataclasses.replace(signal, log_likelihood=too_wide),
        estimator=SHIPPED,
        sbc=None,
    )
    assert statuses(report)["contract/exact likelihood"] == PASS
    assert statuses(report)["estimator/error vs exact"] == FAIL
    assert "describe different models" in message(report, "error vs exact")


def test_an_undertrained_estimator_fails_against_the_exact_likelihood(signal):
    from sbi_plugins.estimators import train

    weak = train(signal, num_simulations=500, max_num_epochs=2, progress=False)
    report = check_simulator(signal, estimator=weak, sbc=None)
    assert statuses(report)["estimator/error vs exact"] == FAIL
    assert "train on more simulations" in message(report, "error vs exact")


def test_a_refused_shipped_file_fails_the_check(registry, signal, tmp_path):
    bad = tmp_path / "signal-nsf.pt"
    bad.write_bytes(SHIPPED.read_bytes()[:3000])
    art = EstimatorArtifact("signal", bad, "0" * 64)
    with registry.plugin(Plugin(signal, art), name="sig"), pytest.warns(UserWarning):
        report = check_simulator("signal", sbc=None)
    assert statuses(report)["estimator/shipped file"] == FAIL
    assert "signal-nsf.pt: not a loadable estimator file" in message(
        report, "shipped file"
    )


# -- estimators trained on shifted and scaled observables ----------------------------


def delay_simulate(theta, rng):
    """y = t + s**2 * Gamma(2): `(y - t) / s**2` is the same Gamma(2) for every
    (t, s), as the DDM's `(rt - t) / a**2` depends on neither t nor a."""
    return (theta[:, 0] + theta[:, 1] ** 2 * rng.gamma(2.0, size=len(theta)))[:, None]


DELAY = Simulator(
    name="delay",
    version="1",
    parameters=(Parameter("t", 0.1, 1.0), Parameter("s", 1.0, 2.0)),
    # on the data's scale every row's density is the network's times s**-2: a
    # mean log-Jacobian of -2 E[log s] = -0.77 nats, far beyond the held-out margin
    observables=(Observable("y", "continuous", 0.0, shift="t", scale={"s": 2}),),
    simulate=delay_simulate,
)


@pytest.fixture(scope="module")
def delay_estimator():
    from sbi_plugins.estimators import train

    return train(
        DELAY,
        num_simulations=2000,
        seed=1,
        progress=False,
        hidden_features=16,
        max_num_epochs=12,
        training_batch_size=256,
    )


def heldout(report: CheckReport):
    return next(c for c in report.checks if c.name == "held-out log-likelihood")


def test_heldout_compares_a_scaled_estimator_in_the_networks_space(delay_estimator):
    report = check_simulator(DELAY, estimator=delay_estimator, sbc=None)
    check = heldout(report)
    assert report.ok and check.status == PASS, report.format()
    assert "in the network's space ((y - t) / s^2;" in check.message
    values = check.values
    assert abs(values["mean"] - values["training_value"]) < values["margin"]
    # the data-scale figure is off by the Jacobian: comparing it with the training
    # figure (what the check did before) would have failed this good estimator
    gap = values["mean"] - values["data_scale_mean"]
    assert gap == pytest.approx(2 * (2 * np.log(2) - 1), abs=0.05)
    assert values["training_value"] - values["data_scale_mean"] > values["margin"]


def _wider_delay(theta, rng):  # simulate changed, version not bumped
    return (theta[:, 0] + theta[:, 1] ** 2 * rng.gamma(5.0, size=len(theta)))[:, None]


def _narrower_delay(theta, rng):  # the same mean excess as DELAY, a third the sd
    excess = rng.gamma(20.0, 0.1, size=len(theta))
    return (theta[:, 0] + theta[:, 1] ** 2 * excess)[:, None]


@pytest.mark.parametrize("fault", ["changed simulator", "another model's estimator"])
def test_heldout_fails_a_wrong_estimator_of_a_scaled_observable(delay_estimator, fault):
    """The data wider than what the estimator learned, either because the simulator
    changed or because the estimator is another model's (same name and version):
    the held-out check only catches data the estimator explains worse than its
    training data, which is what a stale estimator does."""
    from sbi_plugins.estimators import train

    simulator, estimator = DELAY, delay_estimator
    if fault == "changed simulator":
        simulator = dataclasses.replace(DELAY, simulate=_wider_delay)
    else:
        narrower = dataclasses.replace(DELAY, simulate=_narrower_delay)
        estimator = train(
            narrower,
            num_simulations=4000,
            seed=2,
            progress=False,
            hidden_features=16,
            max_num_epochs=4,
            training_batch_size=256,
        )
    check = heldout(check_simulator(simulator, estimator=estimator, sbc=None))
    assert check.status == FAIL, check.message
    assert "Bump the simulator's version" in check.message


def _time_step_artefacts(theta, rng):
    """Like the DDM's compiled simulator, now and then a value exactly at its shift
    parameter: no positive excess, so the likelihood gives it probability zero."""
    x = delay_simulate(theta, rng)
    at_shift = rng.uniform(size=len(x)) < 0.05
    x[at_shift, 0] = theta[at_shift, 0]
    return x


def test_sbc_data_sets_have_a_positive_excess_over_their_shift(delay_estimator):
    from sbi_plugins.check import draw_sbc_datasets

    simulator = dataclasses.replace(DELAY, simulate=_time_step_artefacts)
    settings = SbcSettings(datasets=12, trials=10)
    truth, x, redrawn = draw_sbc_datasets(simulator, delay_estimator, settings, 0)
    assert x.shape == (12, 10, 1) and redrawn > 0
    # every row of every data set has a finite likelihood under its true parameters
    assert (x[:, :, 0] > truth[:, None, 0]).all()
    low, high = delay_estimator.support["y"]
    assert ((x >= low) & (x <= high)).all()


def test_the_pooled_prior_has_one_prior_inside_the_box_per_parameter():
    from sbi_plugins.check.calibration import pooled_prior

    priors = pooled_prior(DELAY)
    assert len(priors) == len(DELAY.parameters)
    torch.manual_seed(0)
    for prior, parameter in zip(priors, DELAY.parameters, strict=True):
        draws = prior.sample((500,))
        assert draws.shape == (500,)
        assert (draws >= parameter.lower).all() and (draws <= parameter.upper).all()
        assert draws.std() > 0.05 * parameter.width  # a prior, not a point


def test_sbc_true_values_come_from_the_pooled_prior(delay_estimator, monkeypatch):
    """`pooled_prior` is the one place SBC learns its prior from the model."""
    from torch.distributions import Uniform

    from sbi_plugins.check import calibration

    narrow = [Uniform(0.30, 0.31), Uniform(1.70, 1.71)]
    monkeypatch.setattr(calibration, "pooled_prior", lambda simulator: narrow)
    truth, _, _ = calibration.draw_sbc_datasets(
        DELAY, delay_estimator, SbcSettings(datasets=5, trials=4), 0
    )
    assert truth.shape == (5, 2)
    assert ((truth[:, 0] >= 0.30) & (truth[:, 0] <= 0.31)).all()
    assert ((truth[:, 1] >= 1.70) & (truth[:, 1] <= 1.71)).all()


@pytest.mark.parametrize(
    "mean,sd,hint",
    [
        (0.8, 0.2, "true values sit above most posterior draws (posterior too low)"),
        (0.2, 0.2, "true values sit below most posterior draws (posterior too high)"),
        (0.5, 0.4, "ranks pile up at the ends (posteriors too narrow)"),
        (0.5, 0.1, "ranks pile up in the middle (posteriors too wide)"),
    ],
)
def test_a_failed_rank_test_is_diagnosed(mean, sd, hint):
    from sbi_plugins.check import diagnose

    assert diagnose(mean, sd) == (
        f"{hint}; retrain the estimator on more simulations, or check the "
        "simulator and the likelihood"
    )


# -- calibration ---------------------------------------------------------------------


@pytest.mark.slow
def test_sbc_catches_a_likelihood_of_another_model(signal):
    """The estimator learned y ~ Normal(mu, sigma); the data come from mu + 1.5.
    (tests/test_tutorial.py runs a passing SBC through the command line.)"""
    from sbi_plugins.estimators import load

    def shifted(theta, rng):
        return gauss_simulate(theta, rng) + 1.5

    report = CheckReport("signal", "1", "test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_calibration(
            report,
            dataclasses.replace(signal, simulate=shifted),
            load(SHIPPED, signal),
            SbcSettings(datasets=8, trials=8, tune=60, draws=40, thin=1),
            seed=0,
            progress=False,
        )
    # 40 draws of one chain: a fit would say "bulk ESS is below 100 ... --draws",
    # advice `check` does not take; its report is the verdict
    assert not [w for w in caught if "ESS" in str(w.message)]
    mu = next(c for c in report.checks if c.name == "mu")
    assert mu.status == FAIL and len(mu.values["ranks"]) == 8
    assert mu.values["max_rank"] == 40
    # posteriors sit about 1.5 above the truth: the true values rank near the bottom
    assert mu.values["mean_rank"] < 0.2 and mu.values["ks_p"] < 0.0025
    assert "true values sit below most posterior draws" in mu.message


# -- the built-in plugins, end to end ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cookie", "ddm", "ornstein"])
def test_the_builtin_plugins_pass_their_own_check(name):
    """`sbi-plugins check` with its defaults, as a plugin author runs it, passes on
    the shipped estimators. The defaults are short enough to keep (about 30 s for
    cookie, 2 min for ddm on 2 cores), and a reduced SBC would test less: 30 data
    sets are what gives the uniformity tests their power. DDM's shifted, scaled
    `rt` is the case whose held-out figure used to be compared across spaces;
    `ornstein` stands for the ssm catalogue, models without a likelihood (the
    whole catalogue: benchmarks/ssm_checks.py, docs/ssm.md)."""
    cli = Path(sys.executable).parent / "sbi-plugins"
    started = time.perf_counter()
    result = subprocess.run(
        [str(cli), "check", name, "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["failed"] == []
    got = {f"{c['section']}/{c['name']}": c for c in report["checks"]}
    skipped = {k for k, c in got.items() if c["status"] == SKIP}
    # only what needs an exact likelihood is skipped, and only where there is none
    no_exact = {"contract/exact likelihood", "estimator/error vs exact"}
    assert skipped == (no_exact if name == "ornstein" else set()), skipped
    assert got["estimator/held-out log-likelihood"]["status"] == PASS
    assert got["calibration/sampler"]["values"]["datasets"] == 30
    print(f"sbi-plugins check {name}: {seconds:.0f} s")


# -- the command line ----------------------------------------------------------------


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_report_and_exit_codes(registry, signal, capsys, tmp_path):
    with registry.plugin(Plugin(signal), name="sig"):
        code, out, _ = run(capsys, "check", "signal", "--no-sbc", "--json")
        assert code == 0
        report = json.loads(out)
        assert (
            report["ok"] and report["failed"] == [] and report["simulator"] == "signal"
        )
        assert {c["name"]: c["status"] for c in report["checks"]}["metadata"] == SKIP

        code, out, _ = run(
            capsys, "check", "signal", "--no-sbc", "--estimator", SHIPPED
        )
        assert code == 0 and "PASS  error vs exact" in out
        assert "all 10 checks passed (0 warnings, 1 skipped)" in out

        truncated = tmp_path / "bad.pt"
        truncated.write_bytes(SHIPPED.read_bytes()[:3000])
        code, out, _ = run(
            capsys, "check", "signal", "--no-sbc", "--estimator", truncated
        )
        assert code == 1
        assert "FAIL  file: " in out and "bad.pt: not a loadable estimator file" in out
        assert "FAILED: estimator/file" in out

        for argv, pattern in [
            (["check", "nope"], "unknown simulator 'nope'"),
            (["check", "signal", "--estimator", tmp_path / "no.pt"], "no such file"),
            (["check", "signal", "--sbc-datasets", "1"], "at least 2"),
        ]:
            code, _, err = run(capsys, *argv)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and pattern in lines[0], err


def test_cli_a_failed_contract_exits_1(registry, capsys):
    with registry.plugin(Plugin(gauss(simulate=_global_rng)), name="g"):
        code, out, _ = run(capsys, "check", "gauss", "--no-sbc")
    assert code == 1
    assert "FAIL  determinism" in out and "FAILED: contract/determinism" in out


def test_cli_a_simulator_refused_at_registration_is_reported(registry, capsys):
    plugin = Plugin(gauss(simulate=_wrong_shape))
    with registry.plugin(plugin, name="g"), pytest.warns(UserWarning, match="'g'"):
        code, out, _ = run(capsys, "check", "gauss", "--json")
    report = json.loads(out)
    assert code == 1 and report["failed"] == ["contract/registration"]
    assert (
        "plugin 'g': simulator 'gauss': simulate returned shape (8, 3)"
        in (report["checks"][0]["message"])
    )


def test_cli_a_simulate_that_raises_is_one_failed_line_not_a_traceback(
    registry, capsys
):
    """Registration tries 8 rows; a simulator that raises on the check's larger
    batch gets a report whose failed check quotes the exception."""

    def raises_on_large_batches(theta, rng):
        if len(theta) > 8:
            raise RuntimeError("out of memory in the plugin")
        return gauss_simulate(theta, rng)

    with registry.plugin(Plugin(gauss(simulate=raises_on_large_batches)), name="g"):
        code, out, err = run(capsys, "check", "gauss", "--no-sbc")
    assert code == 1 and "Traceback" not in out + err
    failed = [line for line in out.splitlines() if line.startswith("  FAIL")]
    assert failed == [
        "  FAIL  shape and dtype: simulate raised RuntimeError: out of memory in the "
        "plugin"
    ]
    assert "FAILED: contract/shape and dtype" in out
