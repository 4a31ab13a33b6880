"""The one hierarchical model: every parameter pooled or given a formula, one
likelihood over the data rows.

Each parameter is a `ParameterPlan` (pooling "complete", "none" or "partial", with
truncated population priors on the parameter's own scale) or a `ParameterFormula`
(a regression on the link scale); its prior depends on what it is given, never on
the other parameters. Rows that share every parameter's value form a cell (a group,
or a group x condition with formulas); the likelihood scores each cell's rows at the
cell's parameters.

The model is stated once, in `HierarchicalModel.body`, over a `sites` object: run by
Pyro (`__call__`) it is the Pyro model NUTS sets itself up from; summed at given
values (`log_joint`) it is the potential that is compiled; drawn from (`prior_draws`)
it is the prior. See `sbi_plugins.model.sites`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sbi_plugins.contract import PopulationPrior, Simulator
from sbi_plugins.data import PreparedData
from sbi_plugins.likelihoods.lapse import SITE as LAPSE_SITE
from sbi_plugins.likelihoods.lapse import Lapse, LapseMixture
from sbi_plugins.likelihoods.omission import Omissions
from sbi_plugins.model.distributions import as_pyro
from sbi_plugins.model.formulas import (
    ParameterFormula,
    normalize_formulas,
    parse_formula,
)
from sbi_plugins.model.pooling import (
    ParameterPlan,
    normalize_pooling,
    resolve_priors,
    unchecked,
)
from sbi_plugins.model.sites import LogJoint, PriorSites, PyroSites, Sites
from sbi_plugins.model.support import shift_ceilings

if TYPE_CHECKING:
    from sbi_plugins.likelihoods.distribution import Likelihood

ModelParameter = ParameterPlan | ParameterFormula


def observation_site(simulator: Simulator) -> str:
    """The data rows' site: one variable for all observables, named as HSSM names
    it ("rt,response"); also the log-likelihood's name in InferenceData."""
    return ",".join(simulator.observable_names)


def plan_model(
    simulator: Simulator,
    frame: pd.DataFrame | None,
    group: str | None,
    pooling: str | Mapping[str, str] = "partial",
    formulas: Mapping[str, str] | list[str] | str | None = None,
    priors: Mapping[str, PopulationPrior | str] | None = None,
    noncentered: bool = True,
) -> list[ModelParameter]:
    """Every parameter's part of the model, checked before any estimator is loaded
    or trained: a formula where one is given, else its pooling mode (normal
    populations non-centered unless `noncentered` is False)."""
    parsed = normalize_formulas(formulas, simulator) if formulas else {}
    modes = normalize_pooling(pooling, simulator, group is not None, parsed)
    resolved = resolve_priors(simulator, priors)
    return [
        parse_formula(p, parsed[p.name], frame, resolved[p.name])
        if p.name in parsed
        else ParameterPlan.of(
            p, modes[p.name], resolved[p.name], centered=not noncentered
        )
        for p in simulator.parameters
    ]


@dataclass(frozen=True)
class Cells:
    """Rows that share all parameter values: each row's cell, each cell's group
    (None: the cells are the groups) and a representative row of each cell."""

    index: np.ndarray
    group: np.ndarray | None
    rows: np.ndarray
    labels: np.ndarray
    """Names of the cells in messages ("s03", or "of row 17")."""
    name: str
    """What the cells are called in messages (the group column, or "the cells")."""

    @property
    def count(self) -> int:
        return len(self.rows)

    @classmethod
    def of(cls, parameters: list[ModelParameter], data: PreparedData) -> Cells:
        """Groups, where no parameter has a formula; else the unique rows of the
        formulas' designs (with the group where a pooled parameter varies by it)."""
        designs = [p.design() for p in parameters if isinstance(p, ParameterFormula)]
        if not designs:
            first = np.unique(data.group_index, return_index=True)[1]
            return cls(data.group_index, None, first, data.group_labels, data.group_dim)
        if any(p.grouped for p in parameters):
            designs.insert(0, data.group_index[:, None].astype(float))
        _, rows, index = np.unique(
            np.concatenate(designs, axis=1),
            axis=0,
            return_index=True,
            return_inverse=True,
        )
        labels = np.array([f"of row {data.row_labels[r]}" for r in rows])
        return cls(index.reshape(-1), data.group_index[rows], rows, labels, "the cells")


class HierarchicalModel:
    """Group-level parameters (pooled, or regressions per cell), then the
    likelihood over the data rows, each at its cell's parameters."""

    def __init__(
        self,
        parameters: list[ModelParameter],
        cells: Cells,
        num_groups: int,
        group_dim: str,
        lapse: Lapse | None = None,
        ceilings: Mapping[str, np.ndarray] | None = None,
        start_ceilings: Mapping[str, np.ndarray] | None = None,
        omissions: Omissions | None = None,
    ) -> None:
        self.parameters = parameters
        self.omissions = omissions
        """Rows without a response by their deadline, scored as such (None: none)."""
        self.cells = cells
        self.cell_count = cells.count
        """A plain int: the compiled potential's trace must not read the numpy rows."""
        self.num_groups = num_groups
        self.group_dim = group_dim
        self.lapse = lapse
        self.ceilings = {
            p.name: torch.as_tensor(ceilings[p.name], dtype=torch.float64)
            for p in parameters
            if isinstance(p, ParameterPlan) and p.name in (ceilings or {})
        }
        """Per pooled shift parameter, each group's fastest observation: the
        posterior has no mass above it (see `SampledBelow`); not used with lapses."""
        self.start_ceilings = dict(start_ceilings or {})
        self.cell_group = None if cells.group is None else torch.as_tensor(cells.group)
        self._share_prior = (
            None
            if lapse is None or lapse.prior is None
            else as_pyro(unchecked(lapse.prior))
        )
        for p in parameters:
            if isinstance(p, ParameterFormula):
                p.bind(cells.rows)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def has_formulas(self) -> bool:
        return any(isinstance(p, ParameterFormula) for p in self.parameters)

    def with_normal_populations_noncentered(self) -> HierarchicalModel:
        """The same posterior with every normal population sampled through offsets:
        its mode is what the Laplace start needs, which a centered population's
        (at sigma -> 0) is not. The model itself where none is centered."""
        if not any(
            isinstance(p, ParameterPlan) and p.centered for p in self.parameters
        ):
            return self
        twin = copy.copy(self)
        twin.parameters = [
            dataclasses.replace(p, centered=False)
            if isinstance(p, ParameterPlan)
            else p
            for p in self.parameters
        ]
        return twin

    # -- the statement -----------------------------------------------------------

    def body(
        self,
        sites: Sites,
        x: Tensor,
        cell_index: Tensor,
        likelihood: Likelihood,
        site: str,
    ) -> None:
        """The model, once: parameters, the lapse share, the rows."""
        theta = self.cell_parameters(self.sample_parameters(sites))
        rows = likelihood.rows(theta, cell_index, self.omissions)
        if self.lapse is not None:
            share = (
                torch.tensor(self.lapse.fixed, dtype=torch.float64)
                if self._share_prior is None
                else sites.sample(LAPSE_SITE, self._share_prior)
            )
            rows = LapseMixture(
                rows,
                share,
                self.lapse.distribution.log_density,
                None if self.omissions is None else self.omissions.mask,
            )
        sites.observe(site, rows, x)

    def sample_parameters(
        self, sites: Sites, ceilings: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Every parameter's sites; `ceilings` default to the model's (the prior
        draws take none: the ceilings come from the data)."""
        ceilings = self.ceilings if ceilings is None else ceilings
        values: dict[str, Tensor] = {}
        for p in self.parameters:
            values.update(p.sample(sites, ceilings.get(p.name)))
        return values

    def with_derived(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The sampled sites' values with the deterministic ones they imply (the
        group values of non-centered populations), as `sample_parameters` makes
        them; vectorized over leading draw dims."""
        out = dict(values)
        for p in self.parameters:
            if isinstance(p, ParameterPlan):
                out.update(p.derived(values, self.ceilings.get(p.name)))
        return out

    def complete_draws(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """An inference method's draws of the sampled sites, `(chain, draw, ...)`,
        with the deterministic sites added (what every result is built from)."""
        with torch.no_grad():
            values = {
                k: torch.as_tensor(v, dtype=torch.float64) for k, v in raw.items()
            }
            derived = self.with_derived(values)
        return dict(raw) | {k: v.numpy() for k, v in derived.items() if k not in raw}

    def cell_parameters(self, values: Mapping[str, Tensor]) -> Tensor:
        """`(..., cells, parameters)` from the sites' values (leading dims are
        draws, as in `cell_parameter_draws`)."""
        return torch.stack(
            [
                p.cell_values(values, self.cell_group, self.cell_count)
                for p in self.parameters
            ],
            dim=-1,
        )

    def __call__(
        self, x: Tensor, cell_index: Tensor, likelihood: Likelihood, site: str
    ) -> None:
        """The Pyro model."""
        self.body(
            PyroSites(self.group_dim, self.num_groups), x, cell_index, likelihood, site
        )

    def log_joint(
        self,
        values: Mapping[str, Tensor],
        x: Tensor,
        cell_index: Tensor,
        likelihood: Likelihood,
        site: str,
    ) -> Tensor:
        """log p(values, data), summed as Pyro sums its trace."""
        sites = LogJoint(values)
        self.body(sites, x, cell_index, likelihood, site)
        return sites.total

    # -- values around the statement ---------------------------------------------

    def start(self) -> dict[str, Tensor]:
        """Constrained starting values of every site (see `sbi_plugins.model.support`):
        typical values, shift parameters below their groups' ceilings, population
        means and spreads from the group values, formula terms at the typical value
        with small spreads."""
        values: dict[str, Tensor] = {}
        for p in self.parameters:
            ceiling = self.start_ceilings.get(p.name)
            if isinstance(p, ParameterPlan):
                values.update(
                    p.start(ceiling, self.num_groups, self.ceilings.get(p.name))
                )
            else:
                values.update(p.start(ceiling, self.num_groups))
        if self._share_prior is not None:
            values[LAPSE_SITE] = self.lapse.start_share()
        return values

    def cell_parameter_draws(self, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """(chain, draw, cell, parameter) from the sites' draws."""
        with torch.no_grad():
            values = {
                k: torch.as_tensor(v, dtype=torch.float64) for k, v in raw.items()
            }
            return self.cell_parameters(values).numpy()

    def prior_draws(self, count: int, seed: int) -> dict[str, np.ndarray]:
        """`count` draws of every latent site from the prior, `(1, count, ...)`;
        the user's global random state is left as it was."""
        draws = []
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for _ in range(count):
                sites = PriorSites(self.num_groups)
                self.sample_parameters(sites, ceilings={})
                if self._share_prior is not None:
                    sites.sample(LAPSE_SITE, self._share_prior)
                draws.append(sites.values)
        return {
            k: torch.stack([d[k] for d in draws]).double().numpy()[None]
            for k in draws[0]
        }

    def posterior_variables(
        self, raw: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, Any]]:
        """Draws of the sites as InferenceData variables, with dims and coords."""
        out: dict[str, np.ndarray] = {}
        dims: dict[str, list[str]] = {}
        coords: dict[str, Any] = {}
        for p in self.parameters:
            values, d, c = p.posterior_variables(raw, self.group_dim)
            out.update(values)
            dims.update(d)
            coords.update(c)
        if LAPSE_SITE in raw:
            out[LAPSE_SITE] = raw[LAPSE_SITE]
        return out, dims, coords

    def attrs(self) -> dict[str, str | dict]:
        """Pooling, priors and formulas, for InferenceData's attrs."""
        described = {p.name: p.attrs() for p in self.parameters}
        out: dict[str, str | dict] = {
            "pooling": {name: d["pooling"] for name, d in described.items()},
            "priors": described,
        }
        formulas = {
            p.name: p.formula for p in self.parameters if p.pooling == "formula"
        }
        if formulas:
            out["formulas"] = formulas
        return out


def build_model(
    parameters: list[ModelParameter],
    data: PreparedData,
    likelihood: Likelihood,
    lapse: Lapse | None = None,
) -> tuple[HierarchicalModel, dict[str, Any]]:
    """The model of `parameters` on these data, and the keyword arguments it is
    run with (data rows, each row's cell, the likelihood, the rows' site name)."""
    simulator = likelihood.simulator
    cells = Cells.of(parameters, data)
    decided = data.decided
    ceilings = None
    if lapse is None:
        ceilings = shift_ceilings(
            simulator,
            data.x[decided],
            data.group_index[decided],
            data.num_groups,
            lapses=False,
        )
    start_ceilings = shift_ceilings(
        simulator,
        data.x[decided],
        data.group_index[decided],
        data.num_groups,
        lapses=lapse is not None,
        start=True,
    )
    model = HierarchicalModel(
        parameters,
        cells,
        data.num_groups,
        data.group_dim,
        lapse,
        ceilings,
        start_ceilings,
        Omissions.of(data.omitted, data.deadline, cells.index),
    )
    return model, {
        "x": torch.as_tensor(data.x, dtype=torch.float64),
        "cell_index": torch.as_tensor(cells.index),
        "likelihood": likelihood,
        "site": observation_site(simulator),
    }
