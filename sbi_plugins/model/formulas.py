"""Per-parameter regression formulas -> trial-wise parameters inside the training box.

`{"v": "v ~ 1 + difficulty + (1|participant_id)"}` is parsed with `formulae` (the
formula library of Bambi and HSSM). Each parameter gets a linear predictor

    eta = X beta + sum over group terms of Z_term (sigma_term * offset_term)

with weakly informative normal priors on `beta`, half-normal `sigma`s and standard
normal (non-centered) `offset`s, and a bounded link maps eta onto the estimator's
training box:

    theta = lower + (upper - lower) * sigmoid(eta)

(the "gen-logit" link HSSM uses for bounded parameters), so no trial-wise parameter
ever leaves the box, whatever the coefficients. Rows with the same design rows get
the same parameters: the likelihood is scored once per unique row ("cell", e.g.
subject x condition) through the grouped fast path, with a cell index in place of
the group index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch

from sbi_plugins.contract import Parameter, PopulationPrior, Simulator
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.inference.starts import start_value
from sbi_plugins.likelihoods.lapse import SITE as LAPSE_SITE
from sbi_plugins.likelihoods.lapse import Lapse, with_lapses
from sbi_plugins.model.pooling import typical_value

INTERCEPT_SCALE = 1.5
"""Prior sd of an intercept on the link scale: a 94% interval covers ~90% of the box."""
SLOPE_SCALE = 1.0
"""Prior sd of a slope on the link scale, per sd of its predictor."""
SIGMA_SCALE = 1.0
"""Half-normal scale of a group-specific term's sd on the link scale."""


class FormulaError(SbiPluginsError):
    """A formula that cannot be parsed or does not fit the data or the simulator."""


@dataclass
class CommonTerm:
    """A fixed-effect term: `k` design columns, one coefficient each."""

    name: str
    columns: np.ndarray  # (rows, k)
    levels: list[str]  # column labels, e.g. ["hard"] for C(cond)[hard]
    loc: np.ndarray
    scale: np.ndarray

    @property
    def size(self) -> int:
        return self.columns.shape[1]


@dataclass
class GroupTerm:
    """`expr|factor`: per factor level, `k` coefficients, sd per expr column."""

    name: str
    factor: str
    groups: list[str]
    exprs: list[str]
    matrix: np.ndarray  # (rows, L * k), columns in formulae's order
    column_level: np.ndarray  # (L * k,) level index of each column
    column_expr: np.ndarray  # (L * k,) expr index of each column

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.groups), len(self.exprs)


@dataclass
class ParameterFormula:
    """One parameter's formula, its design and the link onto its box."""

    parameter: Parameter
    formula: str
    common: list[CommonTerm] = field(default_factory=list)
    group: list[GroupTerm] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.parameter.name

    def design(self) -> np.ndarray:
        """All design columns side by side: rows with equal designs share theta."""
        blocks = [t.columns for t in self.common] + [t.matrix for t in self.group]
        return np.concatenate(blocks, axis=1)

    def var(self, term: str) -> str:
        return f"{self.name}_{term}"


def link(eta: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The real line onto [low, high]: scaled logistic. Extreme eta give the bounds
    themselves, never a value outside."""
    return low + (high - low) * torch.sigmoid(eta)


def inverse_link(theta: np.ndarray | float, low: float, high: float) -> np.ndarray:
    """Parameter values inside (low, high) -> link scale (for priors and tests)."""
    p = (np.asarray(theta, dtype=float) - low) / (high - low)
    return np.log(p) - np.log1p(-p)


_FORMULA = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*~(.*)$", re.S)


def split_formula(text: str, simulator: Simulator) -> tuple[str, str]:
    """`"v ~ 1 + x"` -> ("v", "1 + x"), checking the left side names a parameter."""
    match = _FORMULA.match(text)
    if not match or not match.group(2).strip():
        raise FormulaError(
            f"cannot read formula {text!r}: write '<parameter> ~ <terms>', such as "
            f"'v ~ 1 + difficulty + (1|participant_id)'"
        )
    name, rhs = match.group(1), match.group(2).strip()
    if name not in simulator.parameter_names:
        raise FormulaError(
            f"formula {text!r} is for {name!r}, which {simulator.name} does not have; "
            f"its parameters are {', '.join(simulator.parameter_names)}"
        )
    return name, rhs


def normalize_formulas(
    formulas: Mapping[str, str] | list[str] | tuple[str, ...] | str,
    simulator: Simulator,
) -> dict[str, str]:
    """A dict keyed by parameter (or a list of formulas, as the CLI collects them) ->
    {parameter: right-hand side}; the key must match the formula's left side."""
    if isinstance(formulas, str):
        formulas = [formulas]
    items = (
        list(formulas.items())
        if isinstance(formulas, Mapping)
        else [(None, f) for f in formulas]
    )
    out: dict[str, str] = {}
    for key, text in items:
        if not isinstance(text, str):
            raise FormulaError(f"formula for {key!r} must be a string, got {text!r}")
        if key is not None and "~" not in text:
            text = f"{key} ~ {text}"
        name, rhs = split_formula(text, simulator)
        if key is not None and key != name:
            raise FormulaError(
                f"formulas[{key!r}] is {text!r}, a formula for {name!r}; key it by "
                f"{name!r}"
            )
        if name in out:
            raise FormulaError(f"two formulas for {name!r}; give one per parameter")
        out[name] = rhs
    return out


def pooling_formula(name: str, mode: str, group: str | None) -> str:
    """The pooling shorthand as a formula: complete -> one common intercept,
    partial -> random intercepts by group, none -> one coefficient per group."""
    if mode == "complete" or group is None:
        return "1"
    if mode == "partial":
        return f"1 + (1|{group})"
    if mode == "none":
        return f"0 + C({group})"
    raise FormulaError(
        f"pooling {mode!r} for {name!r} is not one of complete, none, partial"
    )


def _intercept_center(parameter: Parameter, prior: PopulationPrior | None) -> float:
    """The link-scale value of the plugin's typical parameter value."""
    fraction = (typical_value(parameter, prior) - parameter.lower) / parameter.width
    return float(inverse_link(fraction, 0.0, 1.0))


def _check_columns(rhs: str, name: str, frame: pd.DataFrame) -> None:
    import formulae

    try:
        variables = formulae.model_description(rhs).var_names
    except Exception as exc:  # formulae raises its own parse errors
        raise FormulaError(
            f"cannot parse the formula for {name!r} ({rhs!r}): {exc}"
        ) from None
    missing = sorted(v for v in variables if v not in frame.columns)
    if missing:
        raise FormulaError(
            f"the formula for {name!r} ({rhs!r}) uses column(s) "
            f"{', '.join(map(repr, missing))} that the data lack (the data have "
            f"{', '.join(map(str, frame.columns))})"
        )
    for v in sorted(variables):
        empty = frame[v].isna().to_numpy()
        if empty.any():
            from sbi_plugins.errors import describe_rows

            raise FormulaError(
                f"column {v!r} (in the formula for {name!r}) is empty at "
                f"{describe_rows(empty, frame.index.to_numpy())}; drop or fill them"
            )


def _level(label: str) -> str:
    """`C(cond)[hard]` -> `hard`; a numeric column keeps its name."""
    match = re.search(r"\[(.*)\]$", label)
    return match.group(1) if match else label


def parse_formula(
    parameter: Parameter,
    rhs: str,
    frame: pd.DataFrame,
    prior: PopulationPrior | None = None,
) -> ParameterFormula:
    """Design matrices and priors of one parameter's formula on the data."""
    import formulae

    _check_columns(rhs, parameter.name, frame)
    try:
        dm = formulae.design_matrices(rhs, frame.reset_index(drop=True))
    except Exception as exc:
        raise FormulaError(
            f"cannot build the design of the formula for {parameter.name!r} "
            f"({rhs!r}): {exc}"
        ) from exc
    spec = ParameterFormula(parameter, f"{parameter.name} ~ {rhs}")
    if dm.common is not None:
        for term_name in dm.common.terms:
            columns = np.asarray(dm.common[term_name], dtype=float)
            columns = columns.reshape(len(frame), -1)
            labels = dm.common.terms[term_name].labels
            if term_name == "Intercept":
                loc = np.full(1, _intercept_center(parameter, prior))
                scale = np.full(1, INTERCEPT_SCALE)
            else:
                loc = np.zeros(columns.shape[1])
                sd = columns.std(axis=0)
                scale = SLOPE_SCALE / np.where(sd > 0, sd, 1.0)
            spec.common.append(
                CommonTerm(term_name, columns, [_level(v) for v in labels], loc, scale)
            )
    if dm.group is not None:
        for term_name, term in dm.group.terms.items():
            matrix = dm.group[term_name]
            matrix = matrix.toarray() if hasattr(matrix, "toarray") else matrix
            groups = [str(g) for g in term.groups]
            exprs: list[str] = []
            column_level, column_expr = [], []
            for label in term.labels:
                expr, _, level = label.rpartition("|")
                level = _level(level)
                if expr not in exprs:
                    exprs.append(expr)
                column_expr.append(exprs.index(expr))
                column_level.append(groups.index(level))
            spec.group.append(
                GroupTerm(
                    term_name,
                    term_name.rpartition("|")[2],
                    groups,
                    [_level(e) for e in exprs],
                    np.asarray(matrix, dtype=float).reshape(len(frame), -1),
                    np.asarray(column_level),
                    np.asarray(column_expr),
                )
            )
    if not spec.common and not spec.group:
        raise FormulaError(f"the formula for {parameter.name!r} ({rhs!r}) has no terms")
    return spec


@dataclass
class FormulaPlan:
    """Every parameter's formula, and the cells: unique design rows."""

    formulas: list[ParameterFormula]
    cell_index: np.ndarray  # (rows,) -> cell
    cell_rows: np.ndarray  # (cells,) a representative row of each cell
    priors: dict[str, PopulationPrior] = field(default_factory=dict)

    @property
    def num_cells(self) -> int:
        return len(self.cell_rows)

    def describe(self) -> dict[str, str]:
        return {f.name: f.formula for f in self.formulas}


def plan_formulas(
    simulator: Simulator,
    frame: pd.DataFrame,
    formulas: Mapping[str, str],
    pooling: Mapping[str, str],
    group: str | None,
    priors: Mapping[str, PopulationPrior] | None = None,
) -> FormulaPlan:
    """A formula for every parameter (given, or the pooling shorthand translated)."""
    priors = dict(simulator.population_priors) | dict(priors or {})
    specs = []
    for parameter in simulator.parameters:
        rhs = formulas.get(parameter.name)
        if rhs is None:
            rhs = pooling_formula(parameter.name, pooling[parameter.name], group)
        specs.append(parse_formula(parameter, rhs, frame, priors.get(parameter.name)))
    design = np.concatenate([s.design() for s in specs], axis=1)
    _, cell_rows, cell_index = np.unique(
        design, axis=0, return_index=True, return_inverse=True
    )
    return FormulaPlan(specs, cell_index.reshape(-1), cell_rows, priors)


class FormulaModel:
    """The Pyro model: coefficients, link-scale linear predictors per cell, the box
    link, then every data row scored at its cell's parameters."""

    def __init__(self, plan: FormulaPlan, lapse: Lapse | None = None):
        self.plan = plan
        self.lapse = lapse
        rows = plan.cell_rows
        self._terms = []
        for spec in plan.formulas:
            common = [
                (
                    spec.var(t.name),
                    torch.as_tensor(t.columns[rows]),
                    torch.as_tensor(t.loc),
                    torch.as_tensor(t.scale),
                )
                for t in spec.common
            ]
            group = [
                (
                    spec.var(t.name),
                    t.shape,
                    torch.as_tensor(t.matrix[rows]),
                    torch.as_tensor(t.column_level),
                    torch.as_tensor(t.column_expr),
                )
                for t in spec.group
            ]
            self._terms.append((spec.parameter, common, group))

    def cell_parameters(self) -> torch.Tensor:
        """Sample all coefficients; return `(cells, parameters)` inside the box."""
        columns = []
        for parameter, common, group in self._terms:
            eta = torch.zeros(self.plan.num_cells, dtype=torch.float64)
            for name, x, loc, scale in common:
                beta = pyro.sample(
                    name, dist.Normal(loc, scale, validate_args=False).to_event(1)
                )
                eta = eta + x @ beta
            for name, shape, z, level, expr in group:
                sigma = pyro.sample(
                    f"{name}_sigma",
                    dist.HalfNormal(
                        torch.full((shape[1],), SIGMA_SCALE).double(),
                        validate_args=False,
                    ).to_event(1),
                )
                offset = pyro.sample(
                    f"{name}_offset",
                    dist.Normal(
                        torch.zeros(shape, dtype=torch.float64),
                        1.0,
                        validate_args=False,
                    ).to_event(2),
                )
                coefficients = sigma[expr] * offset[level, expr]
                eta = eta + z @ coefficients
            columns.append(link(eta, parameter.lower, parameter.upper))
        return torch.stack(columns, dim=-1)

    def __call__(self, x, cell_index, likelihood, site) -> None:
        theta = self.cell_parameters()
        rows = with_lapses(likelihood.rows(theta, cell_index), self.lapse)
        with pyro.plate("__obs__", x.shape[0], dim=-1):
            pyro.sample(site, rows, obs=x)

    def start(self, ceilings: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """Constrained starting values (see `sbi_plugins.inference.starts`): every
        cell at the parameter's typical value, a shift parameter below its ceiling (the least
        over all rows), group terms at small spreads with zero offsets."""
        values: dict[str, torch.Tensor] = {}
        for spec in self.plan.formulas:
            p = spec.parameter
            target = start_value(
                typical_value(p, self.plan.priors.get(p.name)),
                p.lower,
                p.upper,
                float(ceilings.get(p.name, np.inf)),
            )
            eta = float(inverse_link(target, p.lower, p.upper))
            if spec.common:
                design = np.concatenate(
                    [t.columns[self.plan.cell_rows] for t in spec.common], axis=1
                )
                beta = np.linalg.lstsq(design, np.full(len(design), eta), rcond=None)[0]
                sizes = np.cumsum([t.size for t in spec.common])[:-1]
                for t, part in zip(spec.common, np.split(beta, sizes), strict=True):
                    values[spec.var(t.name)] = torch.as_tensor(part).double()
            for t in spec.group:
                name = spec.var(t.name)
                values[f"{name}_sigma"] = torch.full(
                    (t.shape[1],), 0.1 * SIGMA_SCALE, dtype=torch.float64
                )
                values[f"{name}_offset"] = torch.zeros(t.shape, dtype=torch.float64)
        if self.lapse is not None and self.lapse.prior is not None:
            values[LAPSE_SITE] = self.lapse.start_share()
        return values


def cell_parameter_draws(
    posterior: Mapping[str, np.ndarray], plan: FormulaPlan
) -> np.ndarray:
    """(chain, draw, cell, parameter) from posterior draws, in numpy."""
    rows = plan.cell_rows
    columns = []
    for spec in plan.formulas:
        eta = 0.0
        for t in spec.common:
            eta = eta + np.einsum(
                "...k,ck->...c", posterior[spec.var(t.name)], t.columns[rows]
            )
        for t in spec.group:
            sigma = posterior[f"{spec.var(t.name)}_sigma"]
            offset = posterior[f"{spec.var(t.name)}_offset"]
            coef = (
                sigma[..., t.column_expr] * offset[..., t.column_level, t.column_expr]
            )
            eta = eta + np.einsum("...j,cj->...c", coef, t.matrix[rows])
        p = spec.parameter
        columns.append(p.lower + p.width / (1 + np.exp(-eta)))
    return np.stack(columns, axis=-1)


def named_posterior(
    posterior: Mapping[str, np.ndarray], plan: FormulaPlan
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, list[str]]]:
    """Posterior arrays named and shaped as Bambi/HSSM name them (`v_Intercept`,
    `v_difficulty`, `v_1|participant_id` over the participants, its `_sigma`),
    with dims and coords for ArviZ."""
    out: dict[str, np.ndarray] = {}
    dims: dict[str, list[str]] = {}
    coords: dict[str, list[str]] = {}
    if LAPSE_SITE in posterior:
        out[LAPSE_SITE] = posterior[LAPSE_SITE]
    for spec in plan.formulas:
        for t in spec.common:
            name = spec.var(t.name)
            values = posterior[name]
            if t.size == 1:
                out[name] = values[..., 0]
            else:
                out[name] = values
                dims[name] = [f"{name}_dim"]
                coords[f"{name}_dim"] = t.levels
        for t in spec.group:
            name = spec.var(t.name)
            sigma, offset = posterior[f"{name}_sigma"], posterior[f"{name}_offset"]
            factor_dim = f"{t.factor}__factor_dim"
            coords[factor_dim] = t.groups
            if len(t.exprs) == 1:
                out[name] = sigma[..., None, 0] * offset[..., 0]
                out[f"{name}_sigma"] = sigma[..., 0]
                out[f"{name}_offset"] = offset[..., 0]
                dims[name] = dims[f"{name}_offset"] = [factor_dim]
            else:
                expr_dim = f"{name}_expr_dim"
                coords[expr_dim] = t.exprs
                out[name] = sigma[..., None, :] * offset
                out[f"{name}_sigma"] = sigma
                out[f"{name}_offset"] = offset
                dims[name] = dims[f"{name}_offset"] = [factor_dim, expr_dim]
                dims[f"{name}_sigma"] = [expr_dim]
    return out, dims, coords
