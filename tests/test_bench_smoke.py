"""Smoke run of the benchmarks: ``python -m bench --quick`` still works end to end.

It starts real web and worker processes, the fakes and the references with tiny counts, and
checks that every scenario reported numeric figures. No timing is asserted: these machines
are shared and the quick sizes are far too small to mean anything.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("ingest", "queue", "quota", "naive", "memory", "recovery", "latency", "cache")


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_bench_quick_runs_every_scenario(redis_server: str, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        env={**os.environ, "BENCH_REDIS_URL": redis_server},
        capture_output=True,
        text=True,
        # about 85 s on a quiet machine before the latency and cache scenarios (about 20 s
        # more); 120 s was exceeded at load 10
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    document = json.loads(output.read_text())
    assert set(SCENARIOS) <= set(document["scenarios"])
    for name in SCENARIOS:
        scenario = document["scenarios"][name]
        assert scenario["error"] is None, (name, scenario["error"])
        figures = scenario["figures"]
        assert figures, name
        for key, value in figures.items():
            assert isinstance(value, int | float) and math.isfinite(value), (name, key, value)
        assert scenario["targets"], name
    assert document["machine"]["cpus"]
    assert "| scenario" in completed.stdout
