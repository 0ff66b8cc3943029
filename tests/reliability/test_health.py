"""/ping, /v2/health/ready, /v1/models/N and /v2/models/N/ready agree in every state.

Startup (loading, then ready) is checked here for every server of the session; the other states are
checked where they happen: wedged past responseTimeout (test_overload), failed and recovering loads
(test_faults), draining after SIGTERM (test_shutdown).
"""

from __future__ import annotations

import pytest
from reliability_servers import check_health_samples


@pytest.mark.slow
def test_readiness_endpoints_agree_while_every_server_starts(fleet, seq_server, capsys):
    counts = {}
    for name, server in sorted(fleet.servers.items()):
        if server.proc.poll() is not None:
            continue  # already stopped by its own test
        server.wait_ready()
        not_ready, ready = check_health_samples(server.startup_samples, start_ready=False)
        assert ready >= 1 and all(server.startup_samples[-1].ready), name
        counts[name] = (not_ready, ready)
    with capsys.disabled():
        print(f"\nstartup readiness samples (not ready while loading, ready): {counts}")
