"""Arguments named as HSSM, HDDM or PyMC name them get their equivalent here."""

from __future__ import annotations

import inspect
import re

import pandas as pd
import pytest

import sbi_plugins
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.keywords import FOREIGN_KEYWORDS

ONE_TRIAL = pd.DataFrame({"rt": [0.5], "response": [1]})


@pytest.mark.parametrize(
    ("keywords", "said"),
    [
        ({"include": [{"name": "v"}]}, "formulas={'v': 'v ~ 1 + C(cond)"),
        ({"hierarchical": True}, "pooling='partial'"),
        ({"loglik_kind": "analytical"}, "likelihood='exact'"),
        ({"random_seed": 1}, "seed="),
        ({"target_acept": 0.9}, "did you mean target_accept=?"),
        ({"chainz": 2}, "did you mean chains=?"),
        ({"frobnicate": 1}, "it takes group=, pooling="),
        ({"model": "angle"}, "the second argument: fit(data, 'angle')"),
    ],
)
def test_a_foreign_or_mistyped_keyword_names_what_to_write(keywords, said):
    """Refused before any work (one trial would not even fit), as a TypeError
    like Python's own and as the library's error the CLI prints."""
    with pytest.raises(TypeError) as caught:
        sbi_plugins.fit(ONE_TRIAL, "ddm", **keywords)
    assert isinstance(caught.value, SbiPluginsError)
    assert str(caught.value).startswith(f"fit() takes no {next(iter(keywords))}=")
    assert said in str(caught.value)


def test_fits_own_warnings_point_at_the_callers_line(recwarn):
    """The check runs inside `fit`, not in a wrapper whose line the warnings that
    `fit` passes on (stacklevel 2) would name instead of the user's."""
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(2, 20, seed=3)
    sbi_plugins.fit(
        trials,
        "ddm",
        group="participant_id",
        likelihood="exact",
        draws=20,
        tune=20,
        chains=1,
        seed=1,
        progress=False,
        posterior_predictive=False,
    )
    passed_on = [w for w in recwarn if "sbi_plugins" not in w.filename]
    assert passed_on, [str(w.message)[:60] for w in recwarn]
    assert all(w.filename == __file__ for w in passed_on)


def test_the_equivalents_name_arguments_fit_takes():
    """Every `name=` a hint tells the user to write is one of fit's own, apart
    from the foreign names it quotes; and fit keeps its signature for help()."""
    accepted = set(inspect.signature(sbi_plugins.fit).parameters)
    quoted = {"include", "hierarchical", "depends_on", "init"}
    for foreign, hint in FOREIGN_KEYWORDS.items():
        assert foreign not in accepted, foreign
        written = set(re.findall(r"(\w+)=", hint)) - quoted
        assert written <= accepted, (foreign, written - accepted)
    assert list(inspect.signature(sbi_plugins.fit).parameters)[:2] == [
        "data",
        "simulator",
    ]


def test_the_simulator_given_first_names_the_call_to_make():
    """HSSM reads model= before data=; the same order positionally is refused
    with the call to write, not the lookup's 'unhashable type: DataFrame'."""
    with pytest.raises(TypeError) as caught:
        sbi_plugins.fit("angle", ONE_TRIAL)
    assert isinstance(caught.value, SbiPluginsError)
    assert "fit(trials, 'angle')" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"draws": "500"}, "draws must be a whole number, got '500' (str)"),
        ({"chains": 2.5}, "chains must be a whole number, got 2.5 (float)"),
        ({"seed": "abc"}, "seed must be a whole number, got 'abc' (str)"),
        ({"target_accept": 95}, "target_accept must lie between 0 and 1"),
        ({"model": "ddm"}, "the simulator is the second argument"),
    ],
)
def test_options_of_the_wrong_type_are_refused_before_any_work(options, said):
    """Before this they failed deep in the sampler ('<' between int and str) or,
    for target_accept=95, sampled with a target no step size can meet."""
    arguments = (ONE_TRIAL,) if "model" in options else (ONE_TRIAL, "ddm")
    with pytest.raises(TypeError) as caught:
        sbi_plugins.fit(*arguments, **options)
    assert isinstance(caught.value, SbiPluginsError)
    assert said in str(caught.value)


def test_data_that_is_not_a_table_and_a_group_in_the_index_are_named():
    with pytest.raises(SbiPluginsError, match=r"got ndarray: wrap an array as pd\."):
        sbi_plugins.fit(ONE_TRIAL.to_numpy(), "ddm", pooling="complete")
    indexed = ONE_TRIAL.assign(participant_id=["s1"]).set_index("participant_id")
    with pytest.raises(SbiPluginsError, match=r"the table's index.*df\.reset_index"):
        sbi_plugins.fit(indexed, "ddm", group="participant_id")


@pytest.mark.parametrize(
    ("include", "said"),
    [
        (
            [{"name": "v", "formula": "v ~ 1 + (1|participant_id)"}],
            "write formulas={'v': 'v ~ 1 + (1|participant_id)'}",
        ),
        (["z", "sv"], "write pooling={'z': 'partial', 'sv': 'partial'}"),
    ],
)
def test_include_is_answered_with_the_users_own_formula(include, said):
    """A user's `include=` was answered with a stock formula, not theirs."""
    with pytest.raises(TypeError) as caught:
        sbi_plugins.fit(ONE_TRIAL, "ddm", include=include)
    assert said in str(caught.value)


def test_hssms_include_entries_given_as_formulas_are_rewritten():
    include = [{"name": "v", "formula": "v ~ 1 + (1|participant_id)"}]
    with pytest.raises(SbiPluginsError) as caught:
        sbi_plugins.fit(ONE_TRIAL, "ddm", formulas=include)
    assert "formulas={'v': 'v ~ 1 + (1|participant_id)'}" in str(caught.value)
