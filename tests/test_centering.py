"""`noncentered="auto"`: each normal population's form from the data. Groups whose
data pin their values down are sampled centered; groups with little data keep the
non-centered offsets that avoid the funnel."""

from __future__ import annotations

import pytest
from sbi_plugins_ddm import simulate_dataset

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.inference.centering import (
    DATA_DOMINATES,
    choose_centering,
    population_forms,
)
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.model.model import build_model, plan_model

POOLING = {"v": "partial", "a": "complete", "z": "complete", "t": "complete"}


def _choose(trials_per_subject: int, noncentered: bool = True, pooling=POOLING):
    sim = sbi_plugins.get_simulator("ddm")
    trials, _ = simulate_dataset(4, trials_per_subject, seed=3)
    data = prepare_data(trials, sim, "participant_id")
    plans = plan_model(sim, trials, "participant_id", pooling, None, None, noncentered)
    lik = Likelihood(sim)  # the exact density: the rule needs no estimator
    return choose_centering(plans, lambda p: build_model(p, data, lik, None))


def test_groups_with_much_data_are_centered_and_with_little_are_not():
    many, curvature = _choose(200)
    assert curvature["v"] > DATA_DOMINATES
    assert not next(p for p in many if p.name == "v").noncentered
    few, curvature = _choose(3)
    assert curvature["v"] < DATA_DOMINATES
    assert next(p for p in few if p.name == "v").noncentered
    # what attrs say: the form, and the curvature it was chosen on
    forms = population_forms(many, _choose(200)[1])
    assert list(forms) == ["v"] and forms["v"].startswith("centered (offset curv")


def test_each_population_gets_its_own_form():
    """Where the data pin one population down and not another, the first is
    centered and the second keeps its offsets."""
    plans, curvature = _choose(100, pooling=POOLING | {"z": "partial"})
    assert curvature["v"] > DATA_DOMINATES > curvature["z"]
    form = {p.name: p.noncentered for p in plans if p.name in curvature}
    assert form == {"v": False, "z": True}


def test_nothing_to_choose_without_a_non_centered_population():
    plans, curvature = _choose(200, noncentered=False)
    assert curvature == {} and not any(getattr(p, "noncentered", 0) for p in plans)


def test_noncentered_must_be_true_false_or_auto(cookie_data):
    with pytest.raises(sbi_plugins.SbiPluginsError, match="True, False or 'auto'"):
        sbi_plugins.fit(cookie_data, "cookie", group="location", noncentered="yes")


def test_the_command_line_forms():
    from sbi_plugins.cli import build_parser

    def form(*extra):
        args = ["fit", "ddm", "data.csv", "--out", "fit.nc", *extra]
        return build_parser().parse_args(args).noncentered

    assert form() == "auto" and form("--auto-centering") == "auto"
    assert form("--centered") is False and form("--noncentered") is True
    with pytest.raises(SystemExit):  # one form or the other
        form("--centered", "--auto-centering")


def test_a_fit_records_the_form_it_sampled():
    import json

    trials, _ = simulate_dataset(3, 30, seed=3)
    fits = {
        form: sbi_plugins.fit(
            trials,
            "ddm",
            group="participant_id",
            pooling=POOLING,
            likelihood="exact",
            **({} if form is None else {"noncentered": form}),
            draws=10,
            tune=10,
            chains=1,
            seed=1,
            progress=False,
            posterior_predictive=False,
        )
        for form in (True, False, "auto", None)
    }
    said = {form: json.loads(f.attrs["populations"]) for form, f in fits.items()}
    assert said[True] == {"v": "non-centered"} and said[False] == {"v": "centered"}
    assert "offset curvature" in said["auto"]["v"]  # and the number behind it
    assert said[None] == said["auto"]  # the default


@pytest.mark.parametrize("model", ["ddm_sdv", "race_no_bias_3"])
def test_the_measured_cases_above_the_threshold_are_centered(model, monkeypatch):
    """The ssm models whose fits fixed the threshold, on the benchmark's data
    (`benchmarks/ssm_fits.py`, 10 x 100, `v` and `a` by subject): `ddm_sdv`'s `v`
    (curvature 47.9) was 5.6 times faster per effective draw centered,
    `race_no_bias_3`'s `a` (32.2) 1.6 times (docs/ssm.md). The data as they were
    measured: each trial simulated as its own sample, as the plugin did then (it
    now simulates a subject's trials as one vector's samples: the same
    distribution, other draws)."""
    centered = True
    from sbi_plugins_ssm import TYPICAL
    from sbi_plugins_ssm import simulate_dataset as simulate_ssm
    from sbi_plugins_ssm.simulator import SSMSimulate

    monkeypatch.setattr(
        SSMSimulate,
        "_simulate",
        lambda self, theta, seed: self._call(theta, 1, seed)[0],
    )

    from sbi_plugins.estimators.resolve import resolve_estimator

    sim = sbi_plugins.get_simulator(model)
    pooling = {
        p.name: "partial" if p.name in ("v", "a") else "complete"
        for p in sim.parameters
    }
    common = {
        p.name: (
            TYPICAL[p.name][0] if p.name in TYPICAL else (p.lower + p.upper) / 2,
            0,
        )
        for p in sim.parameters
        if pooling[p.name] == "complete"
    }
    trials, _ = simulate_ssm(model, 10, 100, seed=0, population=common)
    data = prepare_data(trials, sim, "participant_id")
    plans = plan_model(sim, trials, "participant_id", pooling, None, None, True)
    lik = Likelihood(sim, resolve_estimator(sim, None, progress=False))
    chosen, curvature = choose_centering(
        plans, lambda p: build_model(p, data, lik, None)
    )
    assert min(curvature.values()) > DATA_DOMINATES
    partial = [p for p in chosen if p.name in curvature]
    assert partial and all(p.noncentered is not centered for p in partial)


def test_the_measured_ddm_case_centers_v_and_a_only():
    """The DDM with every parameter by subject on docs/ddm.md's data (10 x 100):
    centered, its `z` and `t` populations diverge; their offsets' curvatures
    (22.5 and 10.9 at the mode) sit below the threshold, and `v`'s and `a`'s
    (91 and 134) above it. With `v` and `a` centered and `z` and `t` not, NUTS
    took 29.4 leapfrog steps per draw against 51.9 all non-centered (docs/ddm.md)."""
    sim = sbi_plugins.get_simulator("ddm")
    trials, _ = simulate_dataset(10, 100, seed=0)
    data = prepare_data(trials, sim, "participant_id")
    plans = plan_model(sim, trials, "participant_id", "partial", None, None, True)
    lik = Likelihood(sim)
    chosen, curvature = choose_centering(
        plans, lambda p: build_model(p, data, lik, None)
    )
    assert max(curvature[n] for n in ("z", "t")) < DATA_DOMINATES
    assert min(curvature[n] for n in ("v", "a")) > DATA_DOMINATES
    form = {p.name: p.noncentered for p in chosen}
    assert form == {"v": False, "a": False, "z": True, "t": True}
