"""The contract's dataclasses refuse malformed plugins, naming the field."""

import numpy as np
import pytest

from sbi_plugins.contract import (
    EstimatorArtifact,
    Observable,
    Parameter,
    Simulator,
)
from sbi_plugins.errors import ContractError


def _simulate(theta, rng):
    return rng.poisson(theta[:, :1]).astype(float)


def make_simulator(**overrides):
    fields = {
        "name": "toy",
        "parameters": (Parameter("rate", 0.1, 10.0),),
        "observables": (Observable("count", "count", 0),),
        "simulate": _simulate,
    }
    fields.update(overrides)
    return Simulator(**fields)


def test_inverted_bounds_are_refused_with_both_values():
    with pytest.raises(
        ContractError, match=r"'rate'.*lower bound 5.0 must be below upper bound 1.0"
    ):
        Parameter("rate", 5.0, 1.0)


def test_infinite_bounds_are_refused():
    with pytest.raises(ContractError, match="finite"):
        Parameter("rate", 0.0, np.inf)


def test_duplicate_names_are_refused():
    with pytest.raises(ContractError, match="duplicate names rate"):
        make_simulator(parameters=(Parameter("rate", 0, 1), Parameter("rate", 0, 2)))


def test_parameter_and_observable_may_not_share_a_name():
    with pytest.raises(ContractError, match="duplicate names x"):
        make_simulator(
            parameters=(Parameter("x", 0, 1),), observables=(Observable("x", "count"),)
        )


def test_unknown_observable_kind_is_refused():
    with pytest.raises(ContractError, match="kind 'ordinal' is not one of"):
        Observable("y", "ordinal")


@pytest.mark.parametrize(
    ("observable", "message"),
    [
        (
            dict(kind="continuous", shift="rate", start_below="rate"),
            "give shift or start_below, not both",
        ),
        (dict(kind="count", start_below="rate"), "only a continuous observable"),
        (dict(kind="continuous", start_below="onset"), "'onset'.*not a parameter"),
        (
            dict(kind="continuous", shift="rate", exceeds={"rate": 1.0}),
            "give shift or exceeds, not both",
        ),
        (dict(kind="count", exceeds={"rate": 1.0}), "only a continuous observable"),
        (
            dict(kind="continuous", exceeds={"rate": 1.0, "spread": -1.0}),
            "exceeds a sum with 'spread', which is not a parameter",
        ),
    ],
)
def test_a_start_below_parameter_is_checked_like_a_shift(observable, message):
    with pytest.raises(ContractError, match=message):
        make_simulator(observables=(Observable("y", **observable),))


def test_names_must_be_identifiers():
    with pytest.raises(ContractError, match="must be a Python identifier"):
        Parameter("drift rate", 0, 1)


def test_simulate_returning_the_wrong_shape_is_caught_by_validate():
    bad = make_simulator(simulate=lambda theta, rng: np.zeros(len(theta)))
    with pytest.raises(ContractError, match=r"shape \(8,\).*expected \(8, 1\)"):
        bad.validate()


def test_simulate_raising_is_reported_with_the_exception():
    def boom(theta, rng):
        raise ValueError("no")

    with pytest.raises(ContractError, match="simulate raised ValueError: no"):
        make_simulator(simulate=boom).validate()


def test_estimator_kind_follows_the_observables():
    assert make_simulator().estimator_kind() == "categorical"
    mixed = make_simulator(
        observables=(
            Observable("rt", "continuous", 0),
            Observable("response", "choice", codes=(-1.0, 1.0)),
        )
    )
    assert mixed.estimator_kind() == "mnle"


def test_artifact_checksum_must_be_sha256():
    with pytest.raises(ContractError, match="64 hex"):
        EstimatorArtifact("toy", "x.pt", "abc")


def test_training_prior_is_uniform_over_the_box():
    sim = make_simulator(parameters=(Parameter("rate", 2.0, 3.0),))
    draws = sim.sample_training_prior(20_000, np.random.default_rng(0))
    assert draws.min() >= 2.0 and draws.max() <= 3.0
    assert abs(draws.mean() - 2.5) < 4 * (1 / np.sqrt(12)) / np.sqrt(20_000)
