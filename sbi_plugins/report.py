"""One self-contained HTML page about one or more fits: what was fitted, whether the
sampler and the estimator can be trusted (R-hat, ESS, divergences, training-domain
warnings), the PSIS-LOO comparison, summaries and the figures of `sbi_plugins.plot`.

Figures are PNGs embedded as data URIs and the style sheet is inline, so the file
opens from disk in any browser, with no server and nothing fetched.
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sbi_plugins import plot
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.outputs import check_writable_dir, write_new
from sbi_plugins.quantiles import (
    MAX_CONDITIONS,
    condition_labels,
    default_condition,
    group_labels,
    omission_table,
    quantile_table,
    response_columns,
    source_label,
)
from sbi_plugins.results.comparison import (
    PARETO_K_MAX,
    compare,
    load_fit,
    pareto_k_rows,
)

REPORT_FILE = "report.html"
RHAT_MAX = 1.01
"""Vehtari et al. (2021): chains agree when every R-hat is below 1.01."""
ESS_MIN = 100
"""At least 100 effective draws per parameter (Vehtari et al. suggest 100 per chain
for reliable R-hat; a quick fit is flagged, not refused)."""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
td.bad { background: #fde2e1; color: #8a1c14; font-weight: 600; }
td.good { background: #e6f4e6; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; }
.warning { background: #fde2e1; border-left: 4px solid #c0392b; padding: 0.4em 0.8em; }
details { margin: 0.5em 0; } summary { cursor: pointer; font-weight: 600; }
"""

CHECK_SCRIPT = """
document.body.dataset.errors = "0";
window.addEventListener("error", function () {
  document.body.dataset.errors = String(Number(document.body.dataset.errors) + 1);
});
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (i) {
    return i.complete && i.naturalWidth > 0;
  });
  document.body.dataset.imagesTotal = String(images.length);
  document.body.dataset.imagesDecoded = String(decoded.length);
  document.body.dataset.rendered = decoded.length === images.length ? "ok" : "broken";
  if (decoded.length !== images.length) {
    var p = document.createElement("p");
    p.className = "warning";
    p.textContent = (images.length - decoded.length) + " figure(s) failed to load.";
    document.body.insertBefore(p, document.body.firstChild);
  }
});
"""
"""Marks the page once loaded (data-rendered="ok" when every figure decoded), so a
headless browser test, or a reader, sees a broken figure at once."""


def fit_names(paths: Sequence[str | Path]) -> list[str]:
    """Model names for fit files: their stems, or the paths when stems collide."""
    names = [Path(p).stem for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def load_fits(
    fits: Mapping[str, az.InferenceData | str | Path] | Sequence[str | Path],
) -> dict[str, az.InferenceData]:
    """Named InferenceData objects from objects or netCDF paths, each checked."""
    if not isinstance(fits, Mapping):
        fits = dict(zip(fit_names(fits), fits, strict=True))
    if not fits:
        raise SbiPluginsError("a report needs at least one fit")
    loaded = {str(name): load_fit(fit) for name, fit in fits.items()}
    for name, idata in loaded.items():
        if "posterior" not in idata.groups():
            raise SbiPluginsError(
                f"fit {name!r} has no posterior group; report needs fits made by "
                "sbi_plugins.fit (or `sbi-plugins fit`)"
            )
    return loaded


def diagnostics(idata: az.InferenceData) -> dict[str, object]:
    """The numbers that say whether to trust a fit: worst R-hat and ESS over all
    posterior variables, divergent transitions, LOO's Pareto k and the
    training-domain warnings that `fit` recorded."""
    posterior = idata.posterior
    draws = posterior.sizes["chain"] * posterior.sizes["draw"]
    divergent = None
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        divergent = int(idata.sample_stats["diverging"].values.sum())
    bad_k = exact_k = None
    if "log_likelihood" in idata.groups():
        bad, constant = pareto_k_rows(idata)
        bad_k, exact_k = len(bad), len(constant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # R-hat of one chain, constant draws
        rhat = _extreme(az.rhat(idata), max) if posterior.sizes["chain"] > 1 else None
        ess_bulk = _extreme(az.ess(idata, method="bulk"), min)
        ess_tail = _extreme(az.ess(idata, method="tail"), min)
    return {
        "max_rhat": rhat,
        "min_ess_bulk": ess_bulk,
        "min_ess_tail": ess_tail,
        "divergences": divergent,
        "draws": draws,
        "pareto_k_bad": bad_k,
        "pareto_k_exact": exact_k,
        "domain_warnings": plot.domain_warnings(idata),
        "estimator_check": plot.estimator_check(idata).get("verdict", "n/a"),
    }


def _extreme(dataset, pick: Callable) -> float:
    """The largest or smallest value over every variable and element, NaN skipped."""
    values = np.concatenate([np.ravel(dataset[v].values) for v in dataset.data_vars])
    values = values[np.isfinite(values)]
    return float(pick(values)) if len(values) else float("nan")


def _cell(value: object, bad: bool | None = None, text: bool = False) -> str:
    classes = [
        c for c, on in (("bad", bad), ("good", bad is False), ("text", text)) if on
    ]
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attr}>{html.escape(str(value))}</td>"


def _diagnostics_table(rows: Mapping[str, Mapping[str, object]]) -> str:
    head = (
        "<tr><th class='text'>model</th><th>max R-hat</th><th>min ESS bulk</th>"
        "<th>min ESS tail</th><th>divergences</th>"
        f"<th>Pareto k &gt; {PARETO_K_MAX}</th><th>domain warnings</th>"
        "<th>estimator check</th></tr>"
    )
    body = []
    for name, d in rows.items():
        rhat, div, k = d["max_rhat"], d["divergences"], d["pareto_k_bad"]
        body.append(
            "<tr>"
            + _cell(name, text=True)
            + _cell(
                "n/a (1 chain)" if rhat is None else f"{rhat:.3f}",
                None if rhat is None else rhat > RHAT_MAX,
            )
            + _cell(f"{d['min_ess_bulk']:.0f}", d["min_ess_bulk"] < ESS_MIN)
            + _cell(f"{d['min_ess_tail']:.0f}", d["min_ess_tail"] < ESS_MIN)
            + _cell(
                "n/a" if div is None else f"{div} of {d['draws']}",
                None if div is None else div > 0,
            )
            + _cell(
                "n/a"
                if k is None
                else f"{k}"
                + (f" (+{d['pareto_k_exact']} exact)" if d["pareto_k_exact"] else ""),
                None if k is None else k > 0,
            )
            + _cell(len(d["domain_warnings"]), len(d["domain_warnings"]) > 0)
            + _cell(
                d["estimator_check"],
                {"flagged": True, "passed": False}.get(d["estimator_check"]),
            )
            + "</tr>"
        )
    legend = (
        f"<p>Flagged: R-hat above {RHAT_MAX}, fewer than {ESS_MIN} effective draws, "
        "any divergent transition, any data row whose PSIS-LOO Pareto k exceeds "
        f"{PARETO_K_MAX} (not counting rows whose log-likelihood is the same at every "
        "draw, as for rows only a lapse explains: ArviZ gives them k = inf, but their "
        "leave-one-out value is exact; shown as '+N exact'), posterior mass at a "
        "bound of the estimator's training "
        "domain, and a learned likelihood whose error may matter at this data size "
        "(a large fit left unrefined, or refinement still moving the posterior).</p>"
    )
    return f"<table id='diagnostics'>{head}{''.join(body)}</table>{legend}"


def _estimator_section(name: str, idata: az.InferenceData) -> str:
    """The learned likelihood's verdict, and the refinement rounds where they ran:
    how far each moved the posterior and what it cost."""
    check = plot.estimator_check(idata)
    if not check or check.get("verdict") == "exact":
        return ""
    flagged = check["verdict"] == "flagged"
    parts = [
        f"<p class='{'warning' if flagged else 'note'}'><b>{html.escape(name)}</b>, "
        f"learned likelihood: {html.escape(str(check['message']))}</p>"
    ]
    record = check.get("refinement")
    if record:
        columns = {
            "round": "round",
            "num_simulations": "simulations",
            "simulation_seconds": "simulating (s)",
            "training_seconds": "training (s)",
            "fit_seconds": "refit (s)",
            "max_shift_sd": "max shift (sd)",
            "max_beyond_noise_sd": "beyond MC noise (sd)",
            "worst": "moved most",
        }
        table = pd.DataFrame(record["rounds"])[list(columns)].rename(columns=columns)
        parts.append(
            table.to_html(index=False, border=0, classes="refinement")
            + f"<p>Refinement: {record['simulations']} simulations, "
            f"{record['seconds']} s of simulating and training, "
            f"{record.get('refit_seconds', 0)} s of refitting.</p>"
        )
    return "\n".join(parts)


def _overview_table(fits: Mapping[str, az.InferenceData]) -> str:
    rows = []
    for name, idata in fits.items():
        attrs = plot.fit_attrs(idata)
        formulas = plot.formulas_of(idata)
        pooling = ", ".join(
            formulas.get(k) or f"{k}: {v}" for k, v in plot.pooling_of(idata).items()
        )
        obs = idata.observed_data if "observed_data" in idata.groups() else None
        n_rows = max(obs.sizes.values()) if obs is not None and obs.sizes else "?"
        post = idata.posterior
        rows.append(
            {
                "model": name,
                "simulator": f"{attrs.get('simulator', '?')} "
                f"{attrs.get('simulator_version', '')}".strip(),
                "likelihood": attrs.get("likelihood", "?"),
                "pooling": pooling or "?",
                "lapses": attrs.get("p_outlier") or "none",
                "group": attrs.get("group") or "(none)",
                "data rows": n_rows,
                "chains x draws": f"{post.sizes['chain']} x {post.sizes['draw']}",
                "tune": attrs.get("tune", "?"),
                "seed": attrs.get("seed", "?"),
                "estimator sha256": str(attrs.get("estimator_checksum", ""))[:12],
            }
        )
    return pd.DataFrame(rows).to_html(index=False, table_id="overview", border=0)


def figure_html(fig: plt.Figure, caption: str, dpi: int = 90) -> str:
    """A matplotlib figure as an embedded PNG (a data URI), then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    text = html.escape(caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{text}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def _try_figure(make: Callable[[], np.ndarray], caption: str) -> str:
    """A figure, or a note saying why this fit cannot have it."""
    try:
        axes = make()
    except SbiPluginsError as exc:
        plt.close("all")
        reason = html.escape(str(exc))
        return f"<p class='note'>{html.escape(caption)}: not drawn ({reason})</p>"
    fig = np.ravel(axes)[0].figure
    return figure_html(fig, caption)


def _shrinkage_pairs(
    fits: Mapping[str, az.InferenceData],
) -> list[tuple[str, str, str]]:
    """(parameter, unpooled fit, hierarchical fit) for every parameter that one fit
    leaves unpooled and another pools partially."""
    pairs = []
    poolings = {name: plot.pooling_of(idata) for name, idata in fits.items()}
    for name, pooling in poolings.items():
        for parameter, mode in pooling.items():
            if mode != "partial":
                continue
            unpooled = [n for n, p in poolings.items() if p.get(parameter) == "none"]
            if unpooled:
                pairs.append((parameter, unpooled[0], name))
    return pairs


def _comparison(fits: Mapping[str, az.InferenceData]) -> str:
    if len(fits) < 2:
        return "<p>One fit: nothing to compare.</p>"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            table = compare(fits)
        except SbiPluginsError as exc:
            return f"<p class='note'>Not compared: {html.escape(str(exc))}</p>"
    # the statistical warnings (Pareto k, ...), not library deprecations
    notes = sorted(
        {
            str(w.message)
            for w in caught
            if not issubclass(w.category, (FutureWarning, DeprecationWarning))
        }
    )
    out = table.to_html(
        table_id="comparison", float_format=lambda v: f"{v:.2f}", border=0
    )
    out += (
        "<p>Ranked by expected log pointwise predictive density (PSIS-LOO), best "
        "first; <code>elpd_diff</code> and <code>dse</code> are relative to the best "
        "model.</p>"
    )
    for note in notes:
        out += f"<p class='note'>{html.escape(note)}</p>"
    return out


def _predictive_section(
    name: str,
    idata: az.InferenceData,
    by: str | None,
    source: str = "posterior_predictive",
) -> str:
    """The predictive (`source`: posterior or prior) split by condition (`by`,
    else `report_condition`); for a decision model (a choice and a response time)
    also the quantile-probability plot and observed vs predicted response shares
    and RT quantiles per condition, with the 94% interval of the simulated data
    sets; an observed value outside it is marked."""
    by = by or report_condition(idata)
    where = f" by {by}" if by else ""
    label = source_label(source)
    of = "" if source == "posterior_predictive" else f" of the {label}"
    parts = []
    if by:
        parts.append(
            _try_figure(
                lambda: plot.plot_ppc(idata, by=by, source=source),
                f"{name}: {label} check{where}",
            )
        )
    try:
        response_columns(idata)
    except SbiPluginsError:
        return "\n".join(parts)  # not a decision model
    try:
        table = quantile_table(idata, by, source=source)
    except SbiPluginsError as exc:
        reason = html.escape(str(exc))
        parts.append(
            f"<p class='note'>{html.escape(name)}: no RT quantiles ({reason})</p>"
        )
        return "\n".join(parts)
    parts.insert(
        0,
        _try_figure(
            lambda: plot.quantile_probability(idata, by, source=source),
            f"{name}: quantile-probability plot{of}{where}",
        ),
    )
    parts.append(_quantile_table_html(name, table, by))
    omissions = omission_table(idata, by, source=source)
    if omissions is not None:
        parts.append(_omission_table_html(name, omissions, by))
    return "\n".join(parts)


def _omission_table_html(name: str, table: pd.DataFrame, by: str | None) -> str:
    """Observed share of omitted trials per condition [94% interval simulated]."""
    rows = []
    for _, r in table.iterrows():
        inside = r["low"] <= r["observed"] <= r["high"]
        rows.append(
            f"<tr>{_cell(r['condition'], text=True)}"
            f"{_cell(f'{r.observed:.1%} [{r.low:.1%}, {r.high:.1%}]', bad=not inside)}"
            "</tr>"
        )
    return (
        f"<table class='quantiles'><caption>{html.escape(name)}: share of trials "
        f"without a response by the deadline, observed [94% interval of the "
        f"{source_label(table.attrs['source'])}]</caption><tr>"
        f"<th>{html.escape(by or 'condition')}</th><th>omitted</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _check_condition(fits: Mapping[str, az.InferenceData], by: str) -> None:
    """A `by` that no fit has is a typo: refuse it before any work, naming the
    columns the first fit has (a fit lacking a column others have gets a note)."""
    errors = []
    for idata in fits.values():
        try:
            condition_labels(idata, by)
            return
        except SbiPluginsError as exc:
            errors.append(str(exc))
    raise SbiPluginsError(errors[0])


def report_condition(idata: az.InferenceData) -> str | None:
    """What a report splits predictive checks by when not told: a kept condition
    column (`default_condition`), else the group column when it has 2-8 groups."""
    found = default_condition(idata)
    if found:
        return found
    group = plot.fit_attrs(idata).get("group", "")
    groups = len(group_labels(idata, group) or ())
    return group if 2 <= groups <= MAX_CONDITIONS else None


def _quantile_table_html(name: str, table: pd.DataFrame, by: str | None) -> str:
    choice = table.attrs["choice"]
    statistics = list(dict.fromkeys(table["statistic"]))
    head = "".join(f"<th>{html.escape(s)}</th>" for s in statistics)
    rows = []
    for (condition, code), cells in table.groupby(["condition", choice], sort=False):
        out = [_cell(condition, text=True), _cell(f"{code:g}")]
        for _, r in cells.iterrows():
            if not np.isfinite(r["observed"]):
                out.append(_cell("-"))
                continue
            inside = r["low"] <= r["observed"] <= r["high"]
            out.append(
                _cell(
                    f"{r['observed']:.3g} [{r['low']:.3g}, {r['high']:.3g}]",
                    bad=not inside,
                )
            )
        rows.append(f"<tr>{''.join(out)}</tr>")
    where = f" by {by}" if by else ""
    return (
        f"<table class='quantiles'><caption>{html.escape(name)}: observed "
        f"[94% interval of {table.attrs['draws']} data sets of the "
        f"{source_label(table.attrs['source'])}]{where}: "
        f"<code>p</code> is the response's share, <code>q</code> its RT quantiles"
        f"</caption><tr><th>{html.escape(by or 'condition')}</th>"
        f"<th>{html.escape(choice)}</th>{head}</tr>{''.join(rows)}</table>"
    )


def _prior_section(name: str, idata: az.InferenceData, by: str | None) -> str:
    """What the priors imply, drawn and tabled as the posterior predictive is."""
    overall = _try_figure(
        lambda: plot.plot_ppc(idata, source="prior_predictive"),
        f"{name}: prior predictive check (data simulated at prior draws)",
    )
    return overall + "\n" + _predictive_section(name, idata, by, "prior_predictive")


def render_report(
    fits: Mapping[str, az.InferenceData | str | Path] | Sequence[str | Path],
    *,
    title: str = "sbi-plugins report",
    by: str | None = None,
) -> str:
    """The report as one HTML string (see `write_report`)."""
    from sbi_plugins import __version__

    fits = load_fits(fits)
    if by is not None:
        _check_condition(fits, by)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(fits)} fit(s); written {stamp} by sbi-plugins {__version__}.</p>",
        "<h2>Fits</h2>",
        _overview_table(fits),
        "<h2>Diagnostics</h2>",
        _diagnostics_table({name: diagnostics(idata) for name, idata in fits.items()}),
    ]
    for name, idata in fits.items():
        parts.append(_estimator_section(name, idata))
    for name, idata in fits.items():
        for message in plot.domain_warnings(idata):
            parts.append(
                f"<p class='warning'><b>{html.escape(name)}</b>: "
                f"{html.escape(message)}</p>"
            )
    parts += ["<h2>Model comparison</h2>", _comparison(fits), "<h2>Estimates</h2>"]
    parts.append(
        _try_figure(
            lambda: plot.plot_forest(
                fits, _forest_variables(fits), figsize=(7, _forest_height(fits))
            ),
            "Posterior means and 94% HDIs of the simulator parameters, by model",
        )
    )
    for parameter, unpooled, hierarchical in _shrinkage_pairs(fits):
        parts.append(
            _try_figure(
                lambda p=parameter, u=unpooled, h=hierarchical: plot.plot_shrinkage(
                    fits[u], fits[h], p, pooled=_pooled_fit(fits, p)
                ),
                f"Shrinkage of {parameter}: {unpooled} vs {hierarchical}",
            )
        )
    for name, idata in fits.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(
            _try_figure(
                lambda i=idata: plot.plot_ppc(i),
                f"{name}: posterior predictive check (data simulated at posterior "
                "draws)",
            )
        )
        if "posterior_predictive" in idata.groups():
            parts.append(_predictive_section(name, idata, by))
        if "prior_predictive" in idata.groups():
            parts.append(_prior_section(name, idata, by))
        parts.append(
            _try_figure(
                lambda i=idata: plot.plot_domain(i),
                f"{name}: posterior draws inside the estimator's training domain",
            )
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = az.summary(idata)
        parts.append(
            "<details open><summary>Posterior summary</summary>"
            + summary.to_html(
                classes="summary", border=0, float_format=lambda v: f"{v:.3g}"
            )
            + "</details>"
        )
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n<script>{CHECK_SCRIPT}</script></body></html>\n"
    )


def _parameter_names(idata: az.InferenceData) -> list[str]:
    """The simulator's parameters (every posterior variable if it is not installed)."""
    try:
        return list(plot.simulator_bounds(idata))
    except SbiPluginsError:
        return [str(n) for n in idata.posterior.data_vars]


def _simulator_parameters(idata: az.InferenceData) -> list[str]:
    return [n for n in _parameter_names(idata) if n in idata.posterior]


def _forest_variables(fits: Mapping[str, az.InferenceData]) -> list[str]:
    """Each parameter every fit has: the value itself, or for a formula its
    population-level coefficients (`v_Intercept`, `v_C(cond)`), not its groups'."""
    first = next(iter(fits.values()))
    names = []
    for n in _parameter_names(first):
        names += (
            [n]
            if n in first.posterior
            else [
                v
                for v in first.posterior.data_vars
                if str(v).startswith(f"{n}_") and "|" not in str(v)
            ]
        )
    return [n for n in names if all(n in idata.posterior for idata in fits.values())]


def _forest_height(fits: Mapping[str, az.InferenceData]) -> float:
    """Figure height for one forest row per model and parameter element."""
    rows = sum(
        idata.posterior[n].isel(chain=0, draw=0).size
        for idata in fits.values()
        for n in _forest_variables(fits)
    )
    return 1.2 + 0.22 * rows


def _pooled_fit(
    fits: Mapping[str, az.InferenceData], parameter: str
) -> az.InferenceData | None:
    for idata in fits.values():
        if plot.pooling_of(idata).get(parameter) == "complete":
            return idata
    return None


def write_report(
    fits: Mapping[str, az.InferenceData | str | Path] | Sequence[str | Path],
    out_dir: str | Path,
    *,
    title: str = "sbi-plugins report",
    by: str | None = None,
) -> Path:
    """Write `report.html` into `out_dir` (created if needed); an existing report is
    never overwritten, even one that appears while the report is rendered. Returns
    the path of the report. `by`: the data column whose values are the conditions
    of the decision-model predictive checks (default: the first kept column with
    2-8 values)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SbiPluginsError(
            f"{out_dir} exists and is not a directory; choose another --out"
        )
    path = out_dir / REPORT_FILE
    if path.exists():
        raise SbiPluginsError(
            f"{path} exists; choose another --out directory (nothing was overwritten)"
        )
    check_writable_dir(out_dir, path)
    text = render_report(fits, title=title, by=by)
    return write_new(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
