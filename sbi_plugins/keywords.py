"""What HSSM, HDDM, PyMC and NumPyro call a `fit` argument, and what it is here: a
keyword `fit` does not take gets a message that names the equivalent, or the
closest name it does take, instead of Python's bare TypeError."""

from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from sbi_plugins.errors import SbiPluginsError

FOREIGN_KEYWORDS = {
    "include": "HSSM's include=[{'name': 'v', 'formula': 'v ~ 1 + C(cond) + "
    "(1|participant_id)'}] is formulas={'v': 'v ~ 1 + C(cond) + (1|participant_id)'}; "
    "HDDM's include=['z'] is pooling={..., 'z': 'partial'}; HDDM's 'sv', 'st', 'sz' "
    "are the ssm plugin's ddm_sdv, ddm_st and full_ddm models",
    "hierarchical": "hierarchical=True is group='participant_id' with the default "
    "pooling='partial' (each parameter by group around a population); False is "
    "pooling='complete'",
    "model": "the simulator is the second argument: fit(data, 'angle')",
    "loglik_kind": "likelihood='exact' (HSSM's 'analytical', where the plugin has "
    "one) or likelihood='neural' (the default, its 'approx_differentiable')",
    "loglik": "likelihood='neural' (the default: the plugin's learned likelihood, "
    "or estimator=PATH for your own) or likelihood='exact'",
    "sampler": "method='nuts' (the default) or method='vi'",
    "nuts_sampler": "method='nuts' (the default, Pyro's NUTS) or method='vi'",
    "lapse": "p_outlier=0.05 (fixed), True (estimated) or a torch distribution as "
    "its prior; the lapse is uniform over each column's observed range",
    "prior_settings": "priors={'v': PopulationPrior(...)} on the parameter's own scale",
    "link_settings": "not needed: every parameter reaches its training box through "
    "a bounded link",
    "depends_on": "HDDM's depends_on={'v': 'stim'} is formulas={'v': 'v ~ 0 + "
    "C(stim) + (1|subj_idx)'}",
    "missing_data": "deadline=1.5 (seconds) or deadline='deadline' (a column): rows "
    "with rt empty or -999 are then omissions",
    "random_seed": "seed=",
    "samples": "draws= (and tune= for HDDM's burn)",
    "burn": "tune=",
    "num_samples": "draws=",
    "num_warmup": "tune=",
    "num_chains": "chains=",
    "progressbar": "progress=",
    "init": "mass_matrix='dense' for PyMC's init='jitter+adapt_full'; NUTS starts "
    "are chosen from the data",
    "idata_kwargs": "the pointwise log-likelihood is in the result by default "
    "(log_likelihood=True); log_likelihood=False leaves it out",
    "return_inferencedata": "the result is always an ArviZ InferenceData",
}
"""Foreign argument name -> what to write here."""

FOREIGN_FLAGS = {
    "include": "--formula 'v ~ 1 + C(cond) + (1|participant_id)' (HSSM's include= "
    "with a formula), or --pooling z=partial (HDDM's include=['z'])",
    "hierarchical": "--group participant_id gives each parameter by group around a "
    "population (the default pooling); --pooling complete one value each",
    "model": "the simulator is the first argument: sbi-plugins fit ddm data.csv",
    "loglik_kind": "--likelihood exact (HSSM's analytical) or --likelihood neural "
    "(the default)",
    "sampler": "--method nuts (the default) or --method vi",
    "lapse": "--p-outlier 0.05 (fixed) or --p-outlier estimate",
    "depends_on": "--formula 'v ~ 0 + C(stim) + (1|subj_idx)'",
    "missing_data": "--deadline SECONDS or --deadline COLUMN",
    "random_seed": "--seed",
    "samples": "--draws",
    "burn": "--tune",
}
"""The same on the command line: a foreign option -> the flag to give."""


class ArgumentError(SbiPluginsError, TypeError):
    """Arguments a function does not take as given (still a TypeError, as
    Python's own)."""


class UnknownKeyword(ArgumentError):
    """A keyword argument the function does not take."""


def refuse_unknown_keywords(
    function: Callable[..., Any], given: Mapping[str, Any]
) -> None:
    """Refuse keywords `function` does not name (its `**others`) with their
    equivalent here (HSSM's `include=` -> `formulas=`) or the closest accepted name
    (a typo), before any work. Called first thing in the function itself, so that
    its warnings still point at the user's line."""
    if not given:
        return
    accepted = [
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind is not p.VAR_KEYWORD
    ]
    raise UnknownKeyword(
        "; ".join(
            describe_unknown(function.__name__, name, value, accepted)
            for name, value in given.items()
        )
    )


def rewrite_include(value: Any) -> str | None:
    """The user's own `include=` in this library's words: HSSM's entries with a
    formula as `formulas={...}`, HDDM's parameter names as `pooling={...}`; None
    for anything else (the generic explanation then)."""
    if not isinstance(value, list | tuple) or not value:
        return None
    if all(isinstance(v, Mapping) and v.get("formula") for v in value):
        pairs = ", ".join(
            f"{v.get('name', str(v['formula']).split('~')[0].strip())!r}: "
            f"{v['formula']!r}"
            for v in value
        )
        return f"formulas={{{pairs}}} (HSSM's include= with a formula)"
    if all(isinstance(v, str) for v in value):
        pairs = ", ".join(f"{v!r}: 'partial'" for v in value)
        return f"pooling={{{pairs}}} (HDDM's include=; 'partial' is the default)"
    return None


def describe_unknown(function: str, name: str, value: Any, accepted: list[str]) -> str:
    if name == "model" and isinstance(value, str):
        return (
            f"{function}() takes no model=: the simulator is the second argument: "
            f"{function}(data, {value!r})"
        )
    if name == "include" and (rewritten := rewrite_include(value)):
        return f"{function}() takes no include=: write {rewritten}"
    if name in FOREIGN_KEYWORDS:
        return f"{function}() takes no {name}=: {FOREIGN_KEYWORDS[name]}"
    close = difflib.get_close_matches(name, accepted, n=1)
    if close:
        return f"{function}() takes no {name}=; did you mean {close[0]}=?"
    return (
        f"{function}() takes no {name}=; it takes "
        f"{', '.join(a + '=' for a in accepted if a not in ('data', 'simulator'))}"
    )


def refuse_swapped_arguments(function: str, data: Any, simulator: Any) -> None:
    """`fit("angle", trials)`, the order of HSSM's `HSSM(model=..., data=...)` read
    left to right, is refused with the call to make, not Python's 'unhashable
    type: DataFrame' from the simulator lookup; so is a fit without a simulator
    (the simulator has a default only so that HSSM's `model=` reaches
    `refuse_unknown_keywords`)."""
    if simulator is None:  # HSSM's model= was refused first, with its equivalent
        raise ArgumentError(
            f"{function}() needs the simulator after the data: {function}(trials, "
            "'ddm') (sbi-plugins list shows the installed ones)"
        )
    if isinstance(simulator, str) or not hasattr(simulator, "columns"):
        return
    name = data if isinstance(data, str) else "ddm"
    raise ArgumentError(
        f"{function}() takes the data first and the simulator second: "
        f"{function}(trials, {name!r}); it got a table as the simulator"
    )


def check_counts(**counts: Any) -> None:
    """draws, tune, chains (and seed) as whole numbers, before any work: '500' or
    2.5 would otherwise fail deep inside the sampler. A whole float (500.0) is
    taken."""
    for name, value in counts.items():
        if value is None and name == "seed":
            continue
        whole = isinstance(value, numbers.Integral) or (
            isinstance(value, float) and value.is_integer()
        )
        if isinstance(value, bool) or not whole:
            raise ArgumentError(
                f"{name} must be a whole number, got {value!r} ({type(value).__name__})"
            )


def check_target_accept(value: Any) -> None:
    """NUTS's target acceptance is a probability; 95 (a percentage) would drive
    the step size to nothing."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (0 < value < 1)
    ):
        hint = (
            f" ({value / 100:g}?)"
            if isinstance(value, numbers.Real) and 1 < value < 100
            else ""
        )
        raise ArgumentError(
            f"target_accept must lie between 0 and 1, such as 0.8 (the default) or "
            f"0.95; got {value!r}{hint}"
        )
