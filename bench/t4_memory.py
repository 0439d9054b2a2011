"""Target 4: a worker's memory.

``sdpipe worker --processes 1`` (default threads) against ``sdpipe mock-sd`` at zero latency; the
worker process is the one child of the ``sdpipe worker`` process, read from /proc.

- Growth: after a warm-up, N small jobs are submitted at once; the worker's RSS is read when 10 %
  of them are done and when all are. Target: RSS after job N within 10 % of RSS after job N/10.
- Peak: then, idle, the worker's RSS is read; three 4096² jobs run one after the other, the peak
  (``VmHWM``, reset before each) read after each. Target: the median peak ≤ the idle RSS + 6 × the
  decoded image (4096 × 4096 × 3 bytes). Memory a job leaves behind counts against the next one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench._common import Row, cpu_seconds, descendants, median, read_status_kb, reset_peak_rss, services
from bench._jobs import redis_settings, specs, wait_batch
from bench._redis import private_redis

PEAK_LIMIT = 6.0
GROWTH_LIMIT = 1.10


def _worker_pid(top: int) -> int:
    """The busiest process below ``sdpipe worker`` (the Dramatiq worker process, not the supervisor)."""
    tree = [pid for pid in descendants(top) if pid != top]
    if not tree:
        raise RuntimeError("sdpipe worker has no worker process")
    cpu = cpu_seconds(tree)
    return max(cpu, key=lambda pid: cpu[pid])


class _Sampler:
    """Reads a process's RSS every few ms in a thread: the peak, for when VmHWM cannot be reset."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, read_status_kb(self.pid, "VmRSS"))
            self._stop.wait(0.002)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(folder: Path, *, tiny: bool) -> list[Row]:
    from actors import open_runtime

    big, small, count = (1024, 128, 40) if tiny else (4096, 256, 500)
    big_jobs = 1 if tiny else 3
    early = count // 10
    with private_redis() as url, services(folder, url) as started:
        mock = started.mock_sd(latency_ms=0)
        top = started.worker(mock, processes=1)
        settings = redis_settings(url, mock, started.output_dir)
        with open_runtime(settings) as runtime:
            warm = specs(settings, 4, size=512, seed=1)
            runtime.submit(warm)
            wait_batch(runtime.store, warm[0].batch_id or "", len(warm), timeout_s=120)
            pid = _worker_pid(top)

            # Growth over many consecutive small jobs.
            rss: dict[str, int] = {}

            def sample(done: int) -> None:
                if done >= early and "early" not in rss:
                    rss["early"] = read_status_kb(pid, "VmRSS")
                    rss["early_at"] = done

            batch = specs(settings, count, size=small, seed=10)
            runtime.submit(batch)
            wait_batch(runtime.store, batch[0].batch_id or "", count, timeout_s=900, interval_s=0.005, on_poll=sample)
            rss["late"] = read_status_kb(pid, "VmRSS")

            # Peak of big jobs, one at a time, over the idle RSS before the first.
            time.sleep(0.5)
            idle_kb = read_status_kb(pid, "VmRSS")
            peaks, hwm_reset = [], True
            for index in range(big_jobs):
                hwm_reset = reset_peak_rss(pid) and hwm_reset
                job = specs(settings, 1, size=big, seed=7 + index)
                with _Sampler(pid) as sampler:
                    runtime.submit(job)
                    wait_batch(runtime.store, job[0].batch_id or "", 1, timeout_s=600)
                peaks.append(read_status_kb(pid, "VmHWM") if hwm_reset else sampler.peak_kb)
            after_kb = read_status_kb(pid, "VmRSS")
    peak_kb = median(peaks)
    decoded_kb = big * big * 3 / 1024
    return [
        Row(
            target="4",
            name=f"peak RSS over idle, {big}² job (median of {big_jobs})",
            unit="MB",
            measured=(peak_kb - idle_kb) / 1024,
            baseline=decoded_kb / 1024,
            baseline_name="decoded image size",
            limit=PEAK_LIMIT,
            note=f"idle {idle_kb / 1024:.0f} MB, peak {peak_kb / 1024:.0f} MB"
            + ("" if hwm_reset else " (sampled every 2 ms: VmHWM could not be reset)"),
            details={
                "idle_kb": idle_kb,
                "peak_kb": peak_kb,
                "peaks_over_idle_mb": [round((kb - idle_kb) / 1024, 1) for kb in peaks],
                "peak_source": "VmHWM" if hwm_reset else "sampled VmRSS",
                "rss_after_kb": after_kb,
            },
        ),
        Row(
            target="4",
            name=f"RSS after job {count} vs after job {rss['early_at']} ({small}²)",
            unit="MB",
            measured=rss["late"] / 1024,
            baseline=rss["early"] / 1024,
            baseline_name=f"RSS after job {rss['early_at']}",
            limit=GROWTH_LIMIT,
            details={"rss_kb": rss},
        ),
    ]
