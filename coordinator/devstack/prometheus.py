"""A real Prometheus server on loopback, scraping given targets, with a small query client.

Used by the observability test and ``deploy/render_metrics.py``: the binary is the one on
``PATH`` (Debian's ``prometheus`` package installs ``/usr/bin/prometheus`` and ``promtool``;
``.ci/run`` installs it). Storage lives in a scratch directory removed on :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coordinator.devstack.errors import (
    DevStackError,
    PrerequisiteMissingError,
    ServiceStartError,
)
from coordinator.devstack.lifecycle import Lifecycle
from coordinator.devstack.ports import LOOPBACK, free_port
from coordinator.devstack.process import ManagedProcess, make_scratch_dir, remove_scratch_dir

__all__ = ["PrometheusClient", "PrometheusQueryError", "PrometheusServer", "scrape_config"]

_INSTALL_HINT = "install Debian's package: apt-get install prometheus"


class PrometheusQueryError(DevStackError):
    """Prometheus answered a query with an error."""


def scrape_config(
    jobs: Mapping[str, Sequence[str]],
    *,
    scrape_interval_s: float,
    rule_files: Sequence[Path] = (),
) -> dict[str, Any]:
    """A Prometheus configuration scraping ``jobs`` (job name -> ``host:port`` targets).

    Returned as a dict: written as JSON, which every YAML reader (Prometheus') accepts.
    """
    interval = f"{int(scrape_interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs.items()
        ],
    }


class PrometheusClient:
    """The few calls of Prometheus' HTTP API the tests and the picture need.

    Args:
        url: The server's base URL, e.g. ``http://localhost:9090``.
    """

    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._url

    async def _ready(self) -> bool:
        try:
            await asyncio.to_thread(self._get_raw, "/-/ready", {})
        except (OSError, urllib.error.URLError):
            return False
        return True

    def _get_raw(self, path: str, params: Mapping[str, str]) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body: bytes = response.read()
            return body

    async def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>`` and return its ``data``.

        Raises:
            PrometheusQueryError: The answer's status is not ``success``.
        """
        try:
            raw = await asyncio.to_thread(self._get_raw, f"/api/v1/{path}", params)
        except urllib.error.HTTPError as error:
            raw = error.read()
        answer = json.loads(raw)
        if answer.get("status") != "success":
            raise PrometheusQueryError(
                f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}"
            )
        return answer["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; returns the vector's (or matrix's) series."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = await self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    async def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]:
        """A range query; returns the matrix's series (``metric`` and ``values``)."""
        data = await self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step_s:g}"
        )
        return list(data["result"])

    async def metric_names(self) -> set[str]:
        """Every metric name Prometheus has stored."""
        return set(await self.api("label/__name__/values"))

    async def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health."""
        return list((await self.api("targets"))["activeTargets"])


class PrometheusServer(PrometheusClient, Lifecycle):
    """Runs ``prometheus`` scraping ``jobs`` every ``scrape_interval_s``.

    Args:
        jobs: Job name -> scrape targets (``host:port``; the path is ``/metrics``).
        scrape_interval_s: Scrape and rule evaluation interval.
        rule_files: Rule files to load (alerts and recording rules).
        binary: The executable; ``prometheus`` on ``PATH`` when None.
    """

    def __init__(
        self,
        jobs: Mapping[str, Sequence[str]],
        *,
        scrape_interval_s: float = 1.0,
        rule_files: Sequence[Path] = (),
        binary: str | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.jobs = {job: list(targets) for job, targets in jobs.items()}
        self.scrape_interval_s = scrape_interval_s
        self.rule_files = list(rule_files)
        super().__init__("")
        self._binary = binary
        self._startup_timeout_s = startup_timeout_s
        self._workdir: Path | None = None
        self._process: ManagedProcess | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:40123``."""
        if self._port == 0:
            raise RuntimeError("Prometheus is not started")
        return f"http://{LOOPBACK}:{self._port}"

    async def start(self) -> None:
        """Write the configuration, start the server and wait until it is ready.

        Raises:
            PrerequisiteMissingError: No ``prometheus`` executable.
            ServiceStartError: It exited or was not ready in time.
        """
        if self._process is not None:
            return
        binary = self._binary or shutil.which("prometheus")
        if binary is None:
            raise PrerequisiteMissingError(f"no prometheus executable on PATH; {_INSTALL_HINT}")
        self._workdir = workdir = make_scratch_dir("saga-prometheus-")
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(
                scrape_config(
                    self.jobs,
                    scrape_interval_s=self.scrape_interval_s,
                    rule_files=self.rule_files,
                ),
                indent=2,
            )
        )
        self._port = free_port()
        self._process = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self._port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            log_path=workdir / "prometheus.log",
            cwd=workdir,
        )
        self._process.spawn()
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            if not self._process.is_running():
                raise ServiceStartError(
                    "prometheus exited", service="prometheus", log_tail=self.log_tail()
                )
            if await self._ready():
                return
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"prometheus not ready after {self._startup_timeout_s:.0f}s",
                    service="prometheus",
                    log_tail=self.log_tail(),
                )
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """Stop the server and remove its storage. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            await process.stop()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            remove_scratch_dir(workdir)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        return "" if self._process is None else self._process.log_tail(lines)

    async def wait_until_up(self, timeout_s: float = 30.0) -> None:
        """Wait until every target has been scraped successfully.

        Raises:
            TimeoutError: Some target is still not up (the message says which).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            targets = await self.targets()
            down = [
                f"{t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t.get('lastError')}"
                for t in targets
                if t["health"] != "up"
            ]
            expected = sum(len(v) for v in self.jobs.values())
            if not down and len(targets) == expected:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("targets not up: " + "; ".join(down))
            await asyncio.sleep(self.scrape_interval_s / 2)
