"""The chaos run's small version (bench/chaos.py --quick): three offices exchange a few
hundred messages while workers, web processes and Redis are killed, Redis is flushed,
the login server stops for a while and a proxy delays, drops and cuts requests to one
office. Every message sent arrives exactly once with its content, and everything is
acknowledged in the end."""

from __future__ import annotations

import pytest

from bench import chaos

pytestmark = pytest.mark.chaos


def test_no_message_is_lost_duplicated_or_changed_under_faults(tmp_path):
    figures = chaos.run(chaos.QUICK, seed=7, root=tmp_path)

    assert figures["quiet"], figures
    assert figures["sent"] >= 250, figures  # a few posts may die with a killed web process
    assert (figures["lost"], figures["duplicates"], figures["wrong"]) == (0, 0, 0), figures
    assert figures["delivered"] == figures["sent"], figures
    assert set(figures["faults"]) == set(chaos.FAULTS), figures
    assert not [k for k in figures["posts"] if k.startswith("http_5")], figures
