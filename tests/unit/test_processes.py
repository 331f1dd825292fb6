"""``interrupt_on_stop_signals``: what makes SIGTERM and SIGHUP stop `turnq dev` as Ctrl-C does.

tests/system/test_cli.py sends the signals to a real `turnq dev`; this pins the handler's rules.
"""

from __future__ import annotations

import os
import signal

import pytest

from ops.processes import STOP_SIGNALS, interrupt_on_stop_signals


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_the_first_signal_interrupts_later_ones_are_ignored(sig: signal.Signals) -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    raised = []
    with interrupt_on_stop_signals():
        try:
            os.kill(os.getpid(), sig)
            signal.pause()  # not reached: the handler raises as os.kill returns
        except KeyboardInterrupt as exc:
            raised.append(str(exc))
        try:  # the orderly stop runs now: no signal may cut it short
            for again in STOP_SIGNALS:
                os.kill(os.getpid(), again)
        except KeyboardInterrupt as exc:  # pytest would take it as the user's Ctrl-C
            pytest.fail(f"a second signal interrupted the stop: {exc}")
    assert raised == [sig.name]
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
