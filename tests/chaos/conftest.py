"""Chaos tier: faults injected into real processes under load (see docs/reliability.md).

The fault tests print one row each (``tests.chaos.harness.ROWS``) in a table at the end of
the run, so CI output carries the figures.  ``--soak SECONDS`` (tests/conftest.py) or
``TURNQ_SOAK_S`` turns each fault test into a random fault loop of that length.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import ROWS, soak_seconds, table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    mode = f"soak {soak_seconds():.0f}s per fault test" if soak_seconds() else "default"
    terminalreporter.section(f"chaos: faults under load ({mode})")
    terminalreporter.write_line(table(ROWS))
