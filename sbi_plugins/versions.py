"""Versions of the packages a result depends on, recorded with every artifact."""

from importlib import metadata

_PACKAGES = ("sbi-plugins", "sbi", "pyro-ppl", "torch", "arviz", "numpy")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
