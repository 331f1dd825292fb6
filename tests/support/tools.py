"""A tool or service a test needs but this host lacks: a skip on a laptop, a failure in CI.

    promtool = shutil.which("promtool") or missing("promtool is not installed; ...")

Under ``CI=true`` the setup installs every one (`make check`: the dev extras, and
ops/scripts/ensure-services.sh for the system packages), so a missing one means that
setup broke, and a skip would pass the run without the test.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(message: str) -> NoReturn:
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
