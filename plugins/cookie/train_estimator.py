"""Reproduce the cookie estimator shipped in the package.

    python plugins/cookie/train_estimator.py

Trains the plugin's RECIPE with seed 2025 (about 10 minutes on 2 cores), writes
`sbi_plugins_cookie/cookie-categorical.pt` and records its checksum in
`sbi_plugins_cookie/__init__.py`.
"""

import re
from pathlib import Path

from sbi_plugins_cookie import COOKIE, ESTIMATOR_FILE, RECIPE

from sbi_plugins.estimators import train

SEED = 2025
PACKAGE = Path(__file__).resolve().parent / "sbi_plugins_cookie"


def main() -> None:
    estimator = train(COOKIE, recipe=RECIPE, seed=SEED)
    path = estimator.save(PACKAGE / ESTIMATOR_FILE, overwrite=True)
    init = PACKAGE / "__init__.py"
    source = re.sub(
        r'ESTIMATOR_SHA256 = "[0-9a-f]{64}"',
        f'ESTIMATOR_SHA256 = "{estimator.checksum}"',
        init.read_text(),
    )
    init.write_text(source)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"sha256 {estimator.checksum}")
    print(estimator.metadata["training"])


if __name__ == "__main__":
    main()
