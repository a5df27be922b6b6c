"""``./run demo`` stops and removes what it started, however it is stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "stopping", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name
)
def test_the_demo_removes_its_private_postgresql_when_it_is_stopped(stopping: int) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "pgtrickle.dev.demo", "--rate", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert demo.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    try:
        # the first line of the live view: the cluster runs and the daemon refreshes
        while time.monotonic() < deadline and not any("big_orders:" in line for line in lines):
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any("big_orders:" in line for line in lines), "".join(lines)
        demo.send_signal(stopping)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    output = "".join(lines) + rest
    assert demo.returncode == 0, output
    assert "stopped and removed" in output
    assert "Traceback" not in output
    started = re.search(r"starting a private PostgreSQL in (\S+) \.\.\.", output)
    assert started is not None, output
    assert not Path(started[1]).exists()
