"""``saga bench`` end to end on the session's Kafka and PostgreSQL: a small closed loop, the
bare pipeline beside it, the JSON report and the plot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from coordinator.cli.bench import default_baseline_script
from coordinator.cli.main import app

if TYPE_CHECKING:
    from coordinator.devstack import KafkaService

CHILDREN = ["coordinator-0", "inventory", "payment", "shipping"]


@pytest.mark.timeout(420)
async def test_a_small_closed_loop_reports_every_figure_and_a_correct_ledger(
    kafka: KafkaService, database_url: str, tmp_path: Path
) -> None:
    plot = tmp_path / "bench.png"
    args = ["bench", "--kafka", "external", "--bootstrap-servers", kafka.bootstrap_servers]
    args += ["--database-url", database_url, "--orders", "60", "--window", "10", "--runs", "1"]
    args += ["--warmup", "20"]
    args += ["--fail-rate", "0.1", "--json", "--plot", str(plot)]
    args += ["--baseline-script", str(default_baseline_script())]
    env = {"SAGA_KAFKA__IDEMPOTENT": "true" if kafka.supports_idempotence else "false"}
    result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["ok"] is True
    assert report["warmup"] == 20  # run before, not counted in the run below
    assert report["fsync"] in ("on", "off")  # the session server's own setting, reported
    assert report["kafka"].startswith("external")
    assert report["idempotent"] is kafka.supports_idempotence
    (level,) = report["levels"]
    assert level["load"] == {"window": 10}
    assert level["ledger_ok"] is True
    (run,) = level["runs"]
    assert run["ledger_ok"] is True
    assert run["ledger_problems"] == []
    assert (run["completed"], run["compensated"], run["failed"], run["stuck"]) == (54, 6, 0, 0)
    for metric in ("sagas_per_s", "p50_ms", "p95_ms", "p99_ms"):
        figure = level[metric]
        assert figure["median"] == figure["min"] == figure["max"] > 0, metric
    assert level["p50_ms"]["median"] <= level["p99_ms"]["median"]
    # Every child, the broker and PostgreSQL (both on this host) were measured.
    for role in [*CHILDREN, "kafka", "postgres"]:
        assert level["cpu_s"][role]["median"] > 0, role
        assert level["peak_rss_mb"][role]["median"] > 0, role
    total = level["cpu_ms_per_saga"]["total"]["median"]
    measured = sum(level["cpu_ms_per_saga"][r]["median"] for r in [*CHILDREN, "kafka", "postgres"])
    assert total == pytest.approx(measured, rel=0.01)
    baseline = report["baseline"]
    assert baseline["sagas_per_s"]["median"] > 0
    assert level["ratio_to_baseline"]["median"] == pytest.approx(
        level["sagas_per_s"]["median"] / baseline["sagas_per_s"]["median"], rel=0.01
    )
    assert plot.read_bytes().startswith(b"\x89PNG")


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The field after the command (which may hold spaces) is the state, then ppid.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


@pytest.mark.timeout(240)
async def test_sigterm_stops_the_bench_and_every_process_it_started(
    kafka: KafkaService, database_url: str, tmp_path: Path
) -> None:
    args = ["-m", "coordinator", "bench", "--kafka", "external"]
    args += ["--bootstrap-servers", kafka.bootstrap_servers, "--database-url", database_url]
    args += ["--orders", "100000", "--window", "5", "--runs", "1", "--warmup", "0"]
    env = {
        **os.environ,
        "SAGA_KAFKA__IDEMPOTENT": "true" if kafka.supports_idempotence else "false",
    }
    log = tmp_path / "bench.log"
    with log.open("wb") as out:
        bench = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
        )
    try:
        # Running: the coordinator and the three participants are up and sagas are ending.
        while "sagas ended" not in log.read_text(errors="replace"):
            assert bench.returncode is None, log.read_text(errors="replace")
            await asyncio.sleep(0.2)
        started = _children(bench.pid)
        assert len(started) >= len(CHILDREN), log.read_text(errors="replace")

        bench.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bench.wait(), timeout=120)
    finally:
        if bench.returncode is None:
            bench.kill()
            await bench.wait()

    assert code == 128 + signal.SIGTERM, log.read_text(errors="replace")
    assert [pid for pid in started if _alive(pid)] == []
