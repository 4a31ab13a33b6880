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
the group index. A formula is one kind of parameter in the one hierarchical model
(`sbi_plugins.model.model`); the other parameters keep their pooling and priors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyro.distributions as dist
import torch
from torch import Tensor

from sbi_plugins.contract import Parameter, PopulationPrior, Simulator
from sbi_plugins.errors import SbiPluginsError, describe_rows
from sbi_plugins.model.sites import Sites
from sbi_plugins.model.support import start_value, typical_value

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
    """One parameter's formula, its design and the link onto its box: a parameter
    of the hierarchical model whose value varies by cell (see `bind`)."""

    parameter: Parameter
    formula: str
    common: list[CommonTerm] = field(default_factory=list)
    group: list[GroupTerm] = field(default_factory=list)
    prior: PopulationPrior | None = None
    """The parameter's population prior: its mean centres the intercept's prior."""
    pooling = "formula"
    grouped = False  # its variation over groups is in its design, not a plate
    hyper_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.parameter.name

    def design(self) -> np.ndarray:
        """All design columns side by side: rows with equal designs share theta."""
        blocks = [t.columns for t in self.common] + [t.matrix for t in self.group]
        return np.concatenate(blocks, axis=1)

    def var(self, term: str) -> str:
        return f"{self.name}_{term}"

    def bind(self, cell_rows: np.ndarray) -> None:
        """Fix the design at the model's cells (one representative row each) and
        build the coefficients' priors once: the model's hot path only multiplies."""
        self._cell_rows = cell_rows
        self._common = [
            (
                self.var(t.name),
                torch.as_tensor(t.columns[cell_rows]).T.contiguous(),
                dist.Normal(
                    torch.as_tensor(t.loc),
                    torch.as_tensor(t.scale),
                    validate_args=False,
                ).to_event(1),
            )
            for t in self.common
        ]
        self._group = [
            (
                self.var(t.name),
                _by_coefficient(t, t.matrix[cell_rows]),
                dist.HalfNormal(
                    torch.full((t.shape[1],), SIGMA_SCALE, dtype=torch.float64),
                    validate_args=False,
                ).to_event(1),
                dist.Normal(
                    torch.zeros(t.shape, dtype=torch.float64), 1.0, validate_args=False
                ).to_event(2),
            )
            for t in self.group
        ]

    def sample(self, sites: Sites, ceiling: Tensor | None = None) -> dict[str, Tensor]:
        """Its coefficients: fixed ones, then each group term's sds and offsets."""
        values = {name: sites.sample(name, prior) for name, _, prior in self._common}
        for name, _, sigma, offset in self._group:
            values[f"{name}_sigma"] = sites.sample(f"{name}_sigma", sigma)
            values[f"{name}_offset"] = sites.sample(f"{name}_offset", offset)
        return values

    def cell_values(
        self, values: Mapping[str, Tensor], cell_group: Tensor | None, cells: int
    ) -> Tensor:
        """`(..., cells)`: the linear predictor at each cell, through the link;
        leading (draw) dimensions of the coefficients broadcast."""
        eta = torch.zeros(cells, dtype=torch.float64)
        for name, x, _ in self._common:
            eta = eta + values[name] @ x
        for name, z, _, _ in self._group:
            sigma, offset = values[f"{name}_sigma"], values[f"{name}_offset"]
            coefficients = sigma[..., None, :] * offset  # (..., levels, exprs)
            eta = eta + coefficients.flatten(-2) @ z
        return link(eta, self.parameter.lower, self.parameter.upper)

    def start(self, ceiling: np.ndarray | None, num_groups: int) -> dict[str, Tensor]:
        """Constrained starting values: every cell at the parameter's typical value
        (a shift parameter below its ceiling, the least over the groups), group
        terms at small spreads with zero offsets."""
        p = self.parameter
        bound = np.inf if ceiling is None else float(np.min(ceiling))
        target = start_value(typical_value(p, self.prior), p.lower, p.upper, bound)
        eta = float(inverse_link(target, p.lower, p.upper))
        values: dict[str, Tensor] = {}
        if self.common:
            rows = self._cell_rows
            design = np.concatenate([t.columns[rows] for t in self.common], axis=1)
            beta = np.linalg.lstsq(design, np.full(len(design), eta), rcond=None)[0]
            sizes = np.cumsum([t.size for t in self.common])[:-1]
            for t, part in zip(self.common, np.split(beta, sizes), strict=True):
                values[self.var(t.name)] = torch.as_tensor(part).double()
        for t in self.group:
            name = self.var(t.name)
            values[f"{name}_sigma"] = torch.full(
                (t.shape[1],), 0.1 * SIGMA_SCALE, dtype=torch.float64
            )
            values[f"{name}_offset"] = torch.zeros(t.shape, dtype=torch.float64)
        return values

    def attrs(self) -> dict[str, object]:
        """The formula and each coefficient's prior (link scale), for attrs."""
        priors = {}
        for t in self.common:
            priors[self.var(t.name)] = ", ".join(
                f"Normal({m:.3g}, {s:.3g})" for m, s in zip(t.loc, t.scale, strict=True)
            )
        for t in self.group:
            priors[f"{self.var(t.name)}_sigma"] = f"HalfNormal({SIGMA_SCALE:g})"
        p = self.parameter
        return {
            "pooling": self.pooling,
            "formula": self.formula,
            "link": f"{p.lower:g} + {p.width:g} * sigmoid(linear predictor)",
            "prior": priors,
        }

    def posterior_variables(
        self, raw: Mapping[str, np.ndarray], group_dim: str
    ) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, list[str]]]:
        """Its draws named and shaped as Bambi/HSSM name them (`v_Intercept`,
        `v_difficulty`, `v_C(cond)` over `v_C(cond)_dim` = its non-reference levels
        even when there is one, `v_1|participant_id` over the participants, its
        `_sigma`), with dims and coords for ArviZ."""
        out: dict[str, np.ndarray] = {}
        dims: dict[str, list[str]] = {}
        coords: dict[str, list[str]] = {}
        for t in self.common:
            name = self.var(t.name)
            values = raw[name]
            if t.levels == [t.name]:  # an intercept or a numeric predictor
                out[name] = values[..., 0]
            else:
                out[name] = values
                dims[name] = [f"{name}_dim"]
                coords[f"{name}_dim"] = t.levels
        for t in self.group:
            name = self.var(t.name)
            sigma, offset = raw[f"{name}_sigma"], raw[f"{name}_offset"]
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

    def edge_values(
        self,
        raw: Mapping[str, np.ndarray],
        theta: np.ndarray,
        group_labels,
        cell_labels,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Trial-wise draws per cell for the domain-edge check."""
        return theta.reshape(-1, theta.shape[-1]), np.asarray(cell_labels)


def _by_coefficient(term: GroupTerm, columns: np.ndarray) -> Tensor:
    """`(levels * exprs, cells)`: the term's design columns summed into the row of
    their coefficient (level, expr), so the term's contribution is one matrix
    product with the flattened coefficients: no gather, whose backward scatter
    torch.compile's CPU code generator failed on."""
    levels, exprs = term.shape
    out = np.zeros((levels * exprs, columns.shape[0]))
    np.add.at(out, term.column_level * exprs + term.column_expr, columns.T)
    return torch.as_tensor(out)


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
        if isinstance(text, Mapping) and "formula" in text:  # HSSM's include entry
            raise FormulaError(
                "formulas are strings keyed by parameter, not HSSM's include "
                f"entries: formulas={{{text.get('name')!r}: {text['formula']!r}}}"
            )
        if not isinstance(text, str):
            what = f"formula for {key!r}" if key is not None else "each formula"
            raise FormulaError(f"{what} must be a string, got {text!r}")
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
            f"the formula for {name!r} ('{name} ~ {rhs}') uses column(s) "
            f"{', '.join(map(repr, missing))} that the data lack (the data have "
            f"{', '.join(map(str, frame.columns))})"
        )
    for v in sorted(variables):
        empty = frame[v].isna().to_numpy()
        if empty.any():
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
    spec = ParameterFormula(parameter, f"{parameter.name} ~ {rhs}", prior=prior)
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
