"""Estimator files: safe loading, checksums, domain checks and resolution order."""

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from sbi_plugins import hookimpl
from sbi_plugins.cli import main
from sbi_plugins.contract import Observable, Parameter, Simulator
from sbi_plugins.errors import EstimatorError
from sbi_plugins.estimators import artifact, load, resolve, train
from sbi_plugins.estimators.format import content_checksum
from sbi_plugins.estimators.training import simulate_training_data, training_recipe


def _log_probs(estimator, lam=(2.0, 9.0, 15.0)):
    counts = torch.arange(0, 25).float()
    theta = torch.tensor(lam)[:, None]
    with torch.no_grad():
        return estimator.net.log_prob(
            counts[:, None, None].expand(25, len(lam), 1), theta
        )


def test_save_and_load_round_trip_gives_the_same_network(
    tmp_path, cookie, tiny_cookie_estimator
):
    path = tiny_cookie_estimator.save(tmp_path / "e.pt")
    loaded = load(path, cookie)
    assert loaded.checksum == tiny_cookie_estimator.checksum
    assert torch.equal(_log_probs(loaded), _log_probs(tiny_cookie_estimator))
    assert loaded.metadata["parameters"] == [
        {"name": "lam", "lower": 0.1, "upper": 40.0}
    ]
    assert loaded.metadata["training"]["num_simulations"] == 8000


def test_save_refuses_to_overwrite(tmp_path, tiny_cookie_estimator):
    path = tiny_cookie_estimator.save(tmp_path / "e.pt")
    before = path.read_bytes()
    with pytest.raises(EstimatorError, match="exists"):
        tiny_cookie_estimator.save(path)
    assert path.read_bytes() == before


def test_corrupted_bytes_fail_the_checksum(tmp_path, cookie, tiny_cookie_estimator):
    path = tiny_cookie_estimator.save(tmp_path / "e.pt")
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key] + 1e-3
    torch.save(payload, path)
    with pytest.raises(EstimatorError, match=r"e\.pt: checksum check failed"):
        load(path, cookie)


def test_truncated_file_is_refused_naming_file_and_check(
    tmp_path, cookie, tiny_cookie_estimator
):
    path = tiny_cookie_estimator.save(tmp_path / "e.pt")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(
        EstimatorError, match=r"e\.pt: not a loadable estimator file.*weights-only"
    ):
        load(path, cookie)


class _Exploit:
    def __reduce__(self):
        return (open, ("/tmp/sbi_plugins_pwned", "w"))


def test_a_pickle_with_code_is_never_executed(tmp_path, cookie):
    target = tmp_path / "evil.pt"
    marker = __import__("pathlib").Path("/tmp/sbi_plugins_pwned")
    marker.unlink(missing_ok=True)
    torch.save({"format": "sbi-plugins-estimator", "x": _Exploit()}, target)
    with pytest.raises(EstimatorError, match="not a loadable estimator file"):
        load(target, cookie)
    assert not marker.exists()
    with open(target, "wb") as fh:
        pickle.dump(_Exploit(), fh)
    with pytest.raises(EstimatorError):
        load(target, cookie)
    assert not marker.exists()


def test_a_file_for_another_domain_is_refused(tmp_path, cookie, tiny_cookie_estimator):
    path = tiny_cookie_estimator.save(tmp_path / "e.pt")
    wider = dataclasses.replace(cookie, parameters=(Parameter("lam", 0.1, 80.0),))
    with pytest.raises(
        EstimatorError,
        match=r"training domain of 'lam' is \[0.1, 40.0\].*\[0.1, 80.0\]",
    ):
        load(path, wider)
    renamed = dataclasses.replace(
        cookie, parameters=(Parameter("rate", 0.1, 40.0),), population_priors={}
    )
    with pytest.raises(EstimatorError, match=r"parameters \['lam'\] differ"):
        load(path, renamed)
    other_version = dataclasses.replace(cookie, version="2")
    with pytest.raises(EstimatorError, match="version 1, installed is 2"):
        load(path, other_version)


def test_expected_checksum_from_the_plugin_is_enforced(
    tmp_path, cookie, tiny_cookie_estimator
):
    path = tiny_cookie_estimator.save(tmp_path / "e.pt")
    with pytest.raises(
        EstimatorError, match="differs from the .* its plugin registered"
    ):
        load(path, cookie, expected_sha256="f" * 64)
    assert load(path, cookie, expected_sha256=tiny_cookie_estimator.checksum)


def test_training_data_depend_only_on_the_seed(cookie):
    a = simulate_training_data(cookie, 25_000, seed=5, progress=False)
    b = simulate_training_data(cookie, 25_000, seed=5, progress=False)
    c = simulate_training_data(cookie, 25_000, seed=6, progress=False)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (a[0] == c[0]).all()


def test_resolution_order_explicit_shipped_cache_train(
    tmp_path, cookie, tiny_cookie_estimator, monkeypatch
):
    explicit = tiny_cookie_estimator.save(tmp_path / "explicit.pt")
    assert resolve.resolve_estimator(cookie, explicit).source == str(explicit)
    shipped = resolve.resolve_estimator(cookie)
    assert shipped.source.endswith("cookie-categorical.pt")

    monkeypatch.setattr(resolve, "shipped_estimator", lambda sim: None)
    monkeypatch.setenv("SBI_PLUGINS_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_train(simulator, **kwargs):
        calls.append(kwargs)
        return tiny_cookie_estimator

    monkeypatch.setattr("sbi_plugins.estimators.training.train", fake_train)
    first = resolve.resolve_estimator(cookie, progress=False)
    assert len(calls) == 1 and resolve.cache_path(cookie).exists()
    second = resolve.resolve_estimator(cookie, progress=False)
    assert len(calls) == 1, "the cached estimator is reused, not retrained"
    assert second.checksum == first.checksum


def test_cache_directory_follows_the_environment(tmp_path, monkeypatch, cookie):
    monkeypatch.setenv("SBI_PLUGINS_CACHE_DIR", str(tmp_path / "here"))
    assert resolve.cache_path(cookie).parent == tmp_path / "here"
    monkeypatch.delenv("SBI_PLUGINS_CACHE_DIR")
    assert str(resolve.cache_dir()).endswith(".cache/sbi-plugins")


def test_shipped_estimator_matches_the_recorded_recipe(cookie):
    """The file in the package is what train_estimator.py writes for the recipe."""
    from sbi_plugins_cookie import ESTIMATOR_SHA256, RECIPE

    shipped = resolve.shipped_estimator(cookie)
    assert shipped.checksum == ESTIMATOR_SHA256
    recipe = shipped.metadata["recipe"]
    assert recipe["num_simulations"] == RECIPE.num_simulations
    assert recipe["hidden_features"] == RECIPE.hidden_features
    assert shipped.source.endswith(".pt")
    assert __import__("os").path.getsize(shipped.source) < 400_000


def test_domain_of_records_every_parameter(cookie):
    assert artifact.domain_of(cookie) == [{"name": "lam", "lower": 0.1, "upper": 40.0}]


def test_training_writes_nothing_into_the_working_directory(
    tmp_path, monkeypatch, cookie
):
    from sbi_plugins.estimators import train

    monkeypatch.chdir(tmp_path)
    train(
        cookie, num_simulations=500, max_num_epochs=1, progress=False, hidden_features=8
    )
    assert list(tmp_path.iterdir()) == []


def _rewrite_metadata(path, edit):
    """Edit a file's metadata (`edit` takes the dict, or the JSON text when it
    returns a str) and reseal it with a valid checksum: only the content is wrong."""
    payload = torch.load(path, weights_only=True)
    metadata = json.loads(payload["metadata"])
    edited = edit(metadata)
    payload["metadata"] = (
        edited if isinstance(edited, str) else json.dumps(metadata, sort_keys=True)
    )
    payload["sha256"] = content_checksum(payload)
    torch.save(payload, path)


def _drop(key):
    def edit(metadata):
        del metadata[key]

    return edit


def _set(key, value):
    def edit(metadata):
        metadata[key] = value

    return edit


def _set_lower(m):
    m["parameters"][0]["lower"] = "0.1"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_drop("kind"), "lacks 'kind'"),
        (_drop("support"), "lacks 'support'"),
        (_set("parameters", "lam"), "'parameters' is str"),
        (_set("network", [64, 2]), "'network' is list"),
        (_set_lower, r"parameters\[0\]"),
        (_set("support", {}), "support of 'chips'"),
        (_set("kind", "flow-matching"), "unknown estimator kind 'flow-matching'"),
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: "[1, 2]", "JSON list, expected an object"),
        (_set("network", {}), "network config cannot be built"),
    ],
)
def test_malformed_metadata_with_a_valid_checksum_is_refused(
    tmp_path, cookie, tiny_cookie_estimator, edit, problem
):
    path = tiny_cookie_estimator.save(tmp_path / "e.pt")
    _rewrite_metadata(path, edit)
    with pytest.raises(EstimatorError, match=r"e\.pt: malformed estimator metadata: "):
        load(path, cookie)
    with pytest.raises(EstimatorError, match=problem):
        load(path)


def _no_shipped_estimator(monkeypatch, tmp_path, estimator):
    """Resolution with the cache in tmp_path, no shipped file, and a `train` that
    hands back `estimator` and records each call."""
    monkeypatch.setattr(resolve, "shipped_estimator", lambda sim: None)
    monkeypatch.setenv("SBI_PLUGINS_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_train(simulator, **kwargs):
        calls.append(kwargs)
        return estimator

    monkeypatch.setattr("sbi_plugins.estimators.training.train", fake_train)
    return calls


def test_a_malformed_cached_estimator_is_ignored_and_retrained(
    tmp_path, cookie, tiny_cookie_estimator, monkeypatch
):
    calls = _no_shipped_estimator(monkeypatch, tmp_path, tiny_cookie_estimator)
    cached = tiny_cookie_estimator.save(resolve.cache_path(cookie))
    _rewrite_metadata(cached, _drop("observables"))
    with pytest.warns(UserWarning, match=r"ignoring cached estimator: .*lacks"):
        resolved = resolve.resolve_estimator(cookie, progress=False)
    assert len(calls) == 1
    assert resolved.checksum == tiny_cookie_estimator.checksum
    assert load(cached, cookie).checksum == tiny_cookie_estimator.checksum


def test_train_with_other_options_gets_its_own_cache_file(
    tmp_path, cookie, tiny_cookie_estimator, monkeypatch, capsys
):
    from sbi_plugins import estimators
    from sbi_plugins.estimators import training

    # the CLI's `train` really trains; only the resolver's fallback is faked
    monkeypatch.setattr(estimators, "train", training.train, raising=False)
    calls = _no_shipped_estimator(monkeypatch, tmp_path, tiny_cookie_estimator)
    assert main(["train", "cookie", "--num-simulations", "500", "--no-progress"]) == 0
    out = capsys.readouterr().out
    default = resolve.cache_path(cookie)
    assert not default.exists(), "500 simulations written as the recipe's estimator"
    custom = resolve.cache_path(cookie, training_recipe(cookie, num_simulations=500))
    assert custom != default and "num_simulations500" in custom.name
    assert custom.is_file()
    assert f"wrote {custom}" in out and f"--estimator {custom}" in out
    assert load(custom, cookie).metadata["recipe"]["num_simulations"] == 500
    # a later default fit does not take the weaker estimator for the recipe's own
    resolve.resolve_estimator(cookie, progress=False)
    assert len(calls) == 1 and default.is_file()
    # other network options key the file too; the recipe's own values do not
    assert resolve.cache_path(cookie, training_recipe(cookie, hidden_features=8)) != (
        default
    )
    same = training_recipe(cookie, num_simulations=cookie.recipe.num_simulations)
    assert resolve.cache_path(cookie, same) == default


def _flat_simulator():
    """Returns one value per row as a 1-d array, not (rows, 1)."""
    return Simulator(
        name="flat",
        parameters=(Parameter("rate", 0.1, 10.0),),
        observables=(Observable("count", "count"),),
        simulate=lambda theta, rng: rng.poisson(theta[:, 0]).astype(float),
    )


def _edge_simulator(theta, rng):
    """Right on the rows registration tries, wrong (1-d) once a batch reaches the
    top of the rate's box: what today's training met as an IndexError."""
    x = rng.poisson(theta).astype(float)
    return x[:, 0] if theta.max() > 9.9 else x


class _Plugin:
    def __init__(self, simulator):
        self.simulator = simulator

    @hookimpl
    def register_simulators(self, register):
        register(self.simulator)


def test_train_refuses_a_wrong_shape_simulator_in_one_line(
    registry, tmp_path, monkeypatch, capsys
):
    with pytest.raises(
        EstimatorError, match=r"'flat': simulate returned shape \(\d+,\)"
    ):
        train(_flat_simulator(), num_simulations=200, progress=False)
    monkeypatch.setenv("SBI_PLUGINS_CACHE_DIR", str(tmp_path / "cache"))
    edge = dataclasses.replace(_flat_simulator(), simulate=_edge_simulator)
    with registry.plugin(_Plugin(edge), name="flat-plugin"):
        assert main(["train", "flat", "--num-simulations", "200", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sbi-plugins: error: simulator 'flat': simulate returned ")
    assert "expected (" in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("simulate", "problem"),
    [
        (lambda t, rng: np.c_[t, t], r"shape \(\d+, 2\)"),
        (lambda t, rng: rng.normal(size=t.shape), "outside the count observable"),
        (lambda t, rng: np.where(t > 9, np.nan, rng.poisson(t)), "NaN or infinite"),
        (lambda t, rng: t.__imul__(2), "changed its theta argument in place"),
    ],
)
def test_train_checks_the_simulator_at_the_box_corners_first(simulate, problem):
    simulator = dataclasses.replace(_flat_simulator(), simulate=simulate)
    with pytest.raises(EstimatorError, match=problem):
        train(simulator, num_simulations=200, progress=False)


def test_training_leaves_the_global_rng_and_repeats_with_its_seed(cookie):
    """The seed seeds training only: the caller's torch RNG is left as it was, the
    same seed gives the same weights, and another seed other weights."""
    tiny = {
        "num_simulations": 2000,
        "progress": False,
        "hidden_features": 8,
        "max_num_epochs": 2,
        "training_batch_size": 256,
    }

    def weights(estimator):
        return [v.clone() for _, v in sorted(estimator.net.state_dict().items())]

    torch.manual_seed(7)
    state = torch.get_rng_state()
    first = weights(train(cookie, seed=11, **tiny))
    assert torch.equal(torch.get_rng_state(), state)
    again = weights(train(cookie, seed=11, **tiny))
    other = weights(train(cookie, seed=12, **tiny))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
