"""Pyro NUTS, chains in parallel processes, with per-chain progress bars and seeds;
the model's sites move as one flat vector (`sbi_plugins.inference.flat`).

Each chain has its own seed derived from the fit's seed, so a chain's draws are the
same whether chains run in parallel processes or one after another. Chains run on
the local fork pool (`sbi_plugins.parallel`: the model, data and estimator are
inherited, nothing is pickled), each on one torch thread, as PyTorch's DataLoader
workers do; a chain run in this process leaves the caller's global random states
as they were.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_value
from pyro.util import get_rng_state, set_rng_state
from tqdm.auto import tqdm

from sbi_plugins.inference.flat import FLAT, FlatLayout, vector_potential
from sbi_plugins.inference.laplace import PresetMassMatrix
from sbi_plugins.inference.mass import estimate_short_windows_diagonally
from sbi_plugins.parallel import WorkerDied, exit_cause, forked_map, local_workers

PROGRESS_EVERY = 25
EARLY_TREE_DEPTH = 5
"""The deepest tree (31 leapfrog steps) before the first mass-matrix update, in
models of more than `sbi_plugins.inference.laplace.MAX_DIM` unconstrained
dimensions (see `RecordingNUTS.setup`)."""


@dataclass
class ChainResult:
    """Constrained draws and per-draw sampler statistics of one chain."""

    samples: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]


class RecordingNUTS(NUTS):
    """NUTS that records, per iteration, what ArviZ's sample_stats want: divergence,
    energy, log density, step size, leapfrog steps, tree depth and acceptance.

    Pyro keeps none of these per draw, and its trees do not carry the momentum of
    the state they select, so the leapfrog steps of each transition are noted as
    they are built (`_build_basetree`), and the selected state is found among them
    by identity: Pyro caches the very dict its tree proposed.
    """

    def __init__(
        self,
        *args: Any,
        potential: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
        inverse_mass: dict[str, torch.Tensor] | None = None,
        trace: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._trace = trace
        self.records: list[dict[str, float | int | bool]] = []
        self._own_potential = potential
        self._inverse_mass = inverse_mass
        self._depth = 0
        self._start_momentum: dict[Any, torch.Tensor] | None = None
        self._steps: dict[int, Any] = {}
        self._doublings: list[Any] = []
        self._full_tree_depth = self._max_tree_depth
        self._early_until = 0

    def _initialize_model_properties(self, model_args: Any, model_kwargs: Any) -> None:
        """Pyro's set-up (initial values, transforms), then the given potential,
        where there is one, in place of Pyro's (see `sbi_plugins.model.potential`),
        and the sites as one flat vector (`sbi_plugins.inference.flat`). `trace`
        does what Pyro's `jit_compile` does, on the potential of the vector."""
        super()._initialize_model_properties(model_args, model_kwargs)
        sites = (
            self.potential_fn if self._own_potential is None else self._own_potential
        )
        self.layout = FlatLayout.of(self._initial_params)
        self.site_transforms = self.transforms
        vector = vector_potential(sites, self.layout)
        if self._trace:
            vector = traced_on_first_call(vector)
        self.potential_fn = lambda params: vector(params[FLAT])
        self._initial_params = {FLAT: self.layout.flatten(self._initial_params)}
        self.transforms = {}  # the draws are constrained site by site (`constrained`)
        if self._inverse_mass is not None:
            self.mass_matrix_adapter = PresetMassMatrix(
                {FLAT: self.layout.flatten(self._inverse_mass)}
            )

    def constrained(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Draws of the flat vector, `(draws, dims)`, as the model's constrained
        sites."""
        return {
            name: self.site_transforms[name].inv(value)
            if name in self.site_transforms
            else value
            for name, value in self.layout.unflatten(flat).items()
        }

    def _sample_r(self, name: str) -> tuple[dict, dict]:
        """The momentum the transition starts from: the state kept when no
        proposal is accepted."""
        r, r_unscaled = super()._sample_r(name)
        self._start_momentum = r_unscaled
        return r, r_unscaled

    def _build_basetree(self, *args: Any) -> Any:
        """One leapfrog step; its position dict is the key Pyro's proposal keeps."""
        tree = super()._build_basetree(*args)
        self._steps[id(tree.z_proposal)] = tree
        return tree

    def _build_tree(self, *args: Any) -> Any:
        """Pyro's recursion, with the top-level trees (one per doubling) noted."""
        self._depth += 1
        try:
            tree = super()._build_tree(*args)
        finally:
            self._depth -= 1
        if self._depth == 0:
            self._doublings.append(tree)
        return tree

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        early = self._t < self._early_until
        self._max_tree_depth = (
            min(EARLY_TREE_DEPTH, self._full_tree_depth)
            if early
            else self._full_tree_depth
        )
        step_size = self.step_size
        self._start_momentum = None
        self._steps, self._doublings = {}, []
        try:
            z = super().sample(params)
            self.records.append(self._record(step_size))
        finally:
            self._steps, self._doublings = {}, []
        return z

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        """Pyro's set-up, then where trees stop being capped: at the end of the
        first window of mass-matrix adaptation in a model too large for the
        Laplace start (`EARLY_TREE_DEPTH` until then), nowhere otherwise. Such a
        model starts with a unit mass matrix, so until its first update the step
        size is set by the stiffest direction and every transition runs the
        maximal tree: on the 150-subject regression study (609 dimensions,
        36,000 trials) 100 transitions of 1,023 gradients, 25 minutes per chain.
        Capped, those transitions still carry the chain into the typical set and
        give the first window its draws (forced on a smaller model, 40 subjects x
        2 x 120 trials, exact, one chain of 300 + 300: 217 s instead of 262 s,
        bulk ESS 48 instead of 50, the same posterior)."""
        from sbi_plugins.inference.laplace import MAX_DIM

        super().setup(warmup_steps, *args, **kwargs)
        estimate_short_windows_diagonally(self.mass_matrix_adapter)
        dims = sum(v.numel() for v in self.initial_params.values())
        schedule = self._adapter.adaptation_schedule
        large = dims > MAX_DIM and self._adapter.adapt_mass_matrix
        self._early_until = schedule[1].end + 1 if large and len(schedule) > 2 else 0

    def _record(self, step_size: float) -> dict[str, float | int | bool]:
        """The transition's statistics, as Stan defines them: energy is the
        Hamiltonian (potential + kinetic) of the selected state with its own
        momentum; tree depth counts the doublings that were kept."""
        potential = float(self._potential_energy_last)
        selected = self._steps.get(id(self._z_last))
        momentum = (
            selected.r_right_unscaled if selected is not None else self._start_momentum
        )
        kinetic = float(self._kinetic_energy(momentum)) if momentum else 0.0
        steps = list(self._steps.values())
        last = self._doublings[-1] if self._doublings else None
        stopped = last is not None and bool(last.diverging or last.turning)
        return {
            "diverging": last is not None and bool(last.diverging),
            "energy": potential + kinetic,
            "lp": -potential,
            "step_size": float(step_size),
            "n_steps": len(steps),
            "tree_depth": len(self._doublings) - int(stopped),
            "acceptance_rate": (
                sum(float(t.sum_accept_probs) for t in steps) / len(steps)
                if steps
                else 1.0
            ),
        }


def traced_on_first_call(
    potential: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`potential` traced with TorchScript at its first call, as Pyro's
    `jit_compile` traces its own: one graph, the unflattening included."""
    graph: Callable[[torch.Tensor], torch.Tensor] | None = None

    def call(flat: torch.Tensor) -> torch.Tensor:
        nonlocal graph
        if graph is None:
            with pyro.validation_enabled(False), warnings.catch_warnings():
                # as Pyro's ignore_jit_warnings; torch also flags jit.trace deprecated
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message=".*jit.trace.*deprecated")
                graph = torch.jit.trace(potential, flat, check_trace=False)
        return graph(flat)

    return call


STAT_DTYPES = {
    "diverging": np.bool_,
    "energy": np.float64,
    "lp": np.float64,
    "step_size": np.float64,
    "n_steps": np.int64,
    "tree_depth": np.int64,
    "acceptance_rate": np.float64,
}
"""The dtypes ArviZ expects of sample_stats (bool divergences, integer steps)."""


def chain_seeds(seed: int, chains: int) -> list[int]:
    return [
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(chains)
    ]


@dataclass
class _Job:
    model: Callable[..., None]
    model_kwargs: dict[str, Any]
    draws: int
    tune: int
    target_accept: float
    max_tree_depth: int
    jit: bool
    starts: list[dict[str, torch.Tensor]] | None = None
    inverse_mass: dict[str, torch.Tensor] | None = None
    potential: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
    dense_mass: bool = False


def _run_chain(
    job: _Job, chain: int, seed: int, report: Callable[[int, int], None] | None
) -> ChainResult:
    """One chain on one torch thread and its own seed; the caller's thread count
    and global random states (python, numpy, torch: which `pyro.set_rng_seed`
    reseeds) are put back after, so a fit leaves the user's RNGs as they were."""
    threads = torch.get_num_threads()
    random_states = _global_rng_state()
    torch.set_num_threads(1)
    try:
        return _sample_chain(job, chain, seed, report)
    finally:
        torch.set_num_threads(threads)
        _restore_rng_state(random_states)


def _global_rng_state() -> dict[str, Any]:
    """Pyro's view of the global generators, with CUDA's where CUDA is in use
    (`torch.manual_seed` reseeds those too)."""
    state = get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: dict[str, Any]) -> None:
    set_rng_state(state)
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _sample_chain(
    job: _Job, chain: int, seed: int, report: Callable[[int, int], None] | None
) -> ChainResult:
    """One chain on one thread: multi-threaded reductions would sum in another
    order, and NUTS would amplify the last bit into other draws."""
    pyro.set_rng_seed(seed)
    kernel = RecordingNUTS(
        job.model,
        target_accept_prob=job.target_accept,
        max_tree_depth=job.max_tree_depth,
        jit_compile=False,  # traced as one vector instead (`trace`)
        trace=job.jit and job.potential is None,
        potential=job.potential,
        full_mass=job.dense_mass,
        inverse_mass=job.inverse_mass,
        **(
            {"init_strategy": init_to_value(values=job.starts[chain])}
            if job.starts
            else {}
        ),
    )
    total = job.draws + job.tune

    def hook(_kernel: Any, _sample: Any, _stage: Any, i: int) -> None:
        done = _kernel._t
        if report is not None and (done % PROGRESS_EVERY == 0 or done == total):
            report(chain, done)

    mcmc = MCMC(
        kernel,
        num_samples=job.draws,
        warmup_steps=job.tune,
        num_chains=1,
        disable_progbar=True,
        hook_fn=hook,
    )
    mcmc.run(**job.model_kwargs)
    draws = kernel.constrained(mcmc.get_samples()[FLAT])
    samples = {k: v.detach().cpu().numpy() for k, v in draws.items()}
    records = kernel.records[job.tune :]
    stats = (
        {k: np.array([r[k] for r in records], dtype=STAT_DTYPES[k]) for k in records[0]}
        if records
        else {}
    )
    return ChainResult(samples, stats)


def run_nuts(
    model: Callable[..., None],
    model_kwargs: dict[str, Any],
    *,
    draws: int,
    tune: int,
    chains: int,
    seed: int,
    progress: bool = True,
    cores: int | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    jit: bool = True,
    starts: list[dict[str, torch.Tensor]] | None = None,
    inverse_mass: dict[str, torch.Tensor] | None = None,
    potential: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    dense_mass: bool = False,
) -> list[ChainResult]:
    """Run `chains` NUTS chains, in parallel processes where cores allow; optional
    per-chain initial values and initial inverse mass (`sbi_plugins.inference.laplace`),
    a potential to use in place of Pyro's (`sbi_plugins.model.potential`), and a
    dense mass matrix in place of the diagonal one."""
    job = _Job(
        model,
        model_kwargs,
        draws,
        tune,
        target_accept,
        max_tree_depth,
        jit,
        starts,
        inverse_mass,
        potential,
        dense_mass,
    )
    seeds = chain_seeds(seed, chains)
    workers = local_workers(cores or None, chains)
    bars = [
        tqdm(
            total=draws + tune,
            desc=f"chain {c}",
            position=c,
            leave=True,
            disable=not progress,
            unit="it",
        )
        for c in range(chains)
    ]

    def chain_task(report: Callable[[int], None], chain: int) -> ChainResult:
        try:
            return _run_chain(job, chain, seeds[chain], lambda _, done: report(done))
        except Exception as exc:
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"(in chain {chain})")
            raise

    results: dict[int, ChainResult] = {}
    try:
        for chain, result in forked_map(
            chain_task,
            [(c,) for c in range(chains)],
            workers,
            progress=lambda chain, done: _advance(bars, chain, done),
        ):
            results[chain] = result
    except WorkerDied as died:
        raise RuntimeError(
            f"chain {died.position} died: {exit_cause(died.exitcode)}; try fewer "
            "cores or chains"
        ) from None
    finally:
        for bar in bars:
            bar.close()
    return [results[c] for c in range(chains)]


def _advance(bars: list[tqdm], chain: int, done: int) -> None:
    bar = bars[chain]
    bar.update(done - bar.n)
