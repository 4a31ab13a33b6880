"""Estimator files: safe loading, checksums, domain checks and resolution order."""

import dataclasses
import pickle

import pytest
import torch

from sbi_plugins.contract import Parameter
from sbi_plugins.errors import EstimatorError
from sbi_plugins.estimators import artifact, load, resolve
from sbi_plugins.estimators.training import simulate_training_data


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
