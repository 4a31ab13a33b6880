"""Training device: a GPU when asked for and there, a clear error when not, and
estimator files that load on a CPU-only machine whatever device wrote them.

This machine has no GPU: the CUDA path itself was not run here (docs/scaling.md)."""

from __future__ import annotations

import pytest
import torch

from sbi_plugins.errors import EstimatorError
from sbi_plugins.estimators import load, train
from sbi_plugins.estimators.training import training_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")


@no_cuda
def test_auto_is_the_cpu_without_a_gpu():
    assert training_device("auto") == torch.device("cpu")
    assert training_device("cpu") == torch.device("cpu")


def test_auto_picks_the_gpu_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert training_device("auto") == torch.device("cuda")
    assert training_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(EstimatorError, match=r"'cuda:1'.*sees 1 CUDA GPU"):
        training_device("cuda:1")


@no_cuda
def test_cuda_without_a_gpu_is_a_clear_error_before_any_simulation(cookie):
    with pytest.raises(EstimatorError, match=r"'cuda'.*sees no CUDA GPU.*'cpu'"):
        train(cookie, num_simulations=10**9, device="cuda", progress=False)


@pytest.mark.parametrize("device", ["tpu", "gpu0", "meta"])
def test_unknown_devices_are_refused(device):
    with pytest.raises(EstimatorError, match=f"{device!r}"):
        training_device(device)


def test_a_file_written_from_gpu_tensors_loads_on_the_cpu(
    tmp_path, cookie, tiny_cookie_estimator, monkeypatch
):
    """Tensors saved from a GPU carry their device in the file; torch.load without a
    map location refuses them on a machine without CUDA. The estimator loader maps
    them to the CPU."""
    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        tiny_cookie_estimator.save(path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = load(path, cookie)
    assert loaded.checksum == tiny_cookie_estimator.checksum
    assert all(p.device.type == "cpu" for p in loaded.net.parameters())
    theta = torch.tensor([[3.0], [12.0]])
    x = torch.tensor([[2.0], [11.0]])
    with torch.no_grad():
        assert torch.equal(
            loaded.net.log_prob(x[None], theta),
            tiny_cookie_estimator.net.log_prob(x[None], theta),
        )


def test_a_trained_estimator_comes_back_on_the_cpu_and_says_where_it_trained(cookie):
    estimator = train(
        cookie,
        num_simulations=1000,
        max_num_epochs=1,
        hidden_features=8,
        progress=False,
        device="auto",
    )
    assert all(p.device.type == "cpu" for p in estimator.net.parameters())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert estimator.metadata["training"]["device"] == expected
