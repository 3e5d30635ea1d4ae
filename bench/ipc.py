"""One-way hop latency of 20 ms audio frames between two OS processes.

Carries 640-byte frames (20 ms of 16 kHz PCM16) from a producer process to a
consumer process over three transports, measured in the same run:

  ring   the engine's shared-memory SPSC ring (ipc.pool / ipc.ring); the consumer
         parks in RingReader.wait(), which spins `--spin-us` and then sleeps on
         the futex doorbell
  queue  multiprocessing.Queue (spawn context)
  zmq    ZeroMQ PUSH/PULL over ipc:// (socket file in a temporary directory)

in two modes:

  realtime  one frame every 20 ms on an absolute schedule (the production load)
  flat-out  frames back to back: throughput, and latency under backlog

Latency = the consumer's time.monotonic_ns() once the payload is copied out minus
the producer's time.monotonic_ns() taken just before publishing (CLOCK_MONOTONIC
is system-wide). The ring carries the stamp in the frame's t_ns, queue and zmq in
the payload's first 8 bytes. A refused ring write (ring full) is counted and
retried after time.sleep(0) with a fresh stamp, so every frame gets through.
Consumer CPU time (getrusage over its whole receive loop, idle waits included)
is reported per frame received. The first `--warmup` frames are left out of the
latency statistics.

Run from the repository root (about 2.5 minutes with the defaults):

    python bench/ipc.py                  # prints a table, writes bench/results/ipc.json
    python bench/ipc.py --realtime-frames 500 --spin-us 50 0 200   # ring spin sweep
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# `python bench/ipc.py` puts bench/ first on sys.path, where this very file would
# shadow the `ipc` package: drop it and put the repository root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from ipc.pool import RingPool  # noqa: E402
from ipc.ring import RingReader, RingWriter  # noqa: E402

FRAME_BYTES = 640
SAMPLE_RATE = 16_000
PERIOD_NS = 20_000_000
STAMP = struct.Struct("<Q")
TRANSPORTS = ("ring", "queue", "zmq")
MODES = ("realtime", "flat-out")
TARGET_P50_US = 50.0
TARGET_P99_US = 1000.0
IDLE_TIMEOUT_S = 10.0  # a consumer that hears nothing this long gives up


def producer_main(spec: dict[str, Any], chan: Any, ready: Any, out: Connection) -> None:
    """Send spec['frames'] frames; report ring refusals and which writes woke the consumer."""
    total, realtime, transport = spec["frames"], spec["mode"] == "realtime", spec["transport"]
    payload = bytearray(FRAME_BYTES)
    woken = np.zeros(total, np.uint8)
    refused = retried = 0
    pool: RingPool | None = None
    zctx: zmq.Context[Any] | None = None
    try:
        if transport == "ring":
            pool = RingPool.attach(chan)
            writer = RingWriter(pool.inbound[0])
            bell = pool.inbound[0].doorbell
        elif transport == "zmq":
            zctx = zmq.Context()
            sock = zctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 2000)
            sock.connect(chan)
        if not ready.wait(30):
            raise RuntimeError("consumer never became ready")
        start = time.monotonic_ns() + 20_000_000
        for i in range(total):
            if realtime:
                delay = start + i * PERIOD_NS - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
            if transport == "ring":
                before, attempts = bell.wakeups, 0
                while not writer.write(payload, SAMPLE_RATE, t_ns=time.monotonic_ns()):
                    attempts += 1
                    time.sleep(0)
                refused += attempts
                retried += attempts > 0
                woken[i] = bell.wakeups != before
            elif transport == "queue":
                STAMP.pack_into(payload, 0, time.monotonic_ns())
                chan.put(bytes(payload))
            else:
                STAMP.pack_into(payload, 0, time.monotonic_ns())
                sock.send(payload)
        out.send({"refused": refused, "retried": retried, "woken": woken})
    finally:
        if pool is not None:
            pool.close()
        if zctx is not None:
            zctx.destroy()


def consumer_main(spec: dict[str, Any], chan: Any, ready: Any, out: Connection) -> None:
    """Receive spec['frames'] frames; send back send/receive stamps and CPU time used."""
    total, transport = spec["frames"], spec["transport"]
    sent = np.zeros(total, np.int64)
    recv = np.zeros(total, np.int64)
    pool: RingPool | None = None
    zctx: zmq.Context[Any] | None = None
    got = 0
    try:
        if transport == "ring":
            pool = RingPool.attach(chan)
            reader = RingReader(pool.inbound[0])
        elif transport == "zmq":
            zctx = zmq.Context()
            sock = zctx.socket(zmq.PULL)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, int(IDLE_TIMEOUT_S * 1000))
            sock.bind(chan)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        ready.set()
        if transport == "ring":
            spin_s = spec["spin_s"]
            while got < total:
                if not reader.wait(IDLE_TIMEOUT_S, spin_s):
                    raise TimeoutError(f"ring: nothing for {IDLE_TIMEOUT_S} s after {got} frames")
                while got < total and (frame := reader.read()) is not None:
                    recv[got] = time.monotonic_ns()
                    sent[got] = frame.t_ns
                    got += 1
        elif transport == "queue":
            while got < total:
                data = chan.get(timeout=IDLE_TIMEOUT_S)
                recv[got] = time.monotonic_ns()
                sent[got] = STAMP.unpack_from(data)[0]
                got += 1
        else:
            while got < total:
                data = sock.recv()
                recv[got] = time.monotonic_ns()
                sent[got] = STAMP.unpack_from(data)[0]
                got += 1
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        out.send({"sent": sent, "recv": recv,
                  "user_s": ru1.ru_utime - ru0.ru_utime, "sys_s": ru1.ru_stime - ru0.ru_stime})
    finally:
        if pool is not None:
            pool.close()
        if zctx is not None:
            zctx.destroy()


def _receive(conn: Connection, proc: BaseProcess, timeout_s: float) -> dict[str, Any]:
    if not conn.poll(timeout_s):
        raise TimeoutError(f"{proc.name}: no result within {timeout_s:.0f} s")
    try:
        return conn.recv()  # type: ignore[no-any-return]
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"{proc.name} died without a result (exit code {proc.exitcode})") from None


def run_case(ctx: SpawnContext, transport: str, mode: str, frames: int, slots: int,
             spin_us: float, warmup: int) -> dict[str, Any]:
    """One producer/consumer pair over one transport; returns the summary row."""
    spec: dict[str, Any] = {"transport": transport, "mode": mode, "frames": frames + warmup, "spin_s": spin_us * 1e-6}
    pool: RingPool | None = None
    tmpdir: str | None = None
    chan: Any = None
    procs: list[BaseProcess] = []
    try:
        if transport == "ring":
            chan = f"benchipc-{os.getpid()}-pool"
            pool = RingPool.create(chan, max_calls=1, slots=slots, capacity=FRAME_BYTES)
        elif transport == "queue":
            chan = ctx.Queue()
        else:
            tmpdir = tempfile.mkdtemp(prefix="benchipc-")
            chan = f"ipc://{tmpdir}/frames.sock"
        ready = ctx.Event()
        c_recv, c_send = ctx.Pipe(duplex=False)
        p_recv, p_send = ctx.Pipe(duplex=False)
        consumer = ctx.Process(target=consumer_main, args=(spec, chan, ready, c_send), name=f"{transport}-consumer")
        producer = ctx.Process(target=producer_main, args=(spec, chan, ready, p_send), name=f"{transport}-producer")
        procs = [consumer, producer]
        for proc in procs:
            proc.start()
        c_send.close()  # so a dead child reads as EOF, not as silence
        p_send.close()
        budget = 60 + (spec["frames"] * PERIOD_NS / 1e9 if mode == "realtime" else 0)
        cons = _receive(c_recv, consumer, budget)
        prod = _receive(p_recv, producer, 30)
        for proc in procs:
            proc.join(30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            if proc.pid is not None:
                proc.join(5)
        if pool is not None:
            pool.close()
            pool.unlink()
        if transport == "queue" and chan is not None:
            chan.close()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return summarize(transport, mode, spin_us, slots, warmup, cons, prod)


def summarize(transport: str, mode: str, spin_us: float, slots: int, warmup: int,
              cons: dict[str, Any], prod: dict[str, Any]) -> dict[str, Any]:
    sent, recv = cons["sent"][warmup:], cons["recv"][warmup:]
    lat = (recv - sent) / 1e3
    p50, p90, p99, p999 = np.percentile(lat, [50, 90, 99, 99.9])
    row: dict[str, Any] = {
        "transport": transport, "mode": mode, "n": int(lat.size),
        "p50_us": p50, "p90_us": p90, "p99_us": p99, "p99_9_us": p999, "max_us": float(lat.max()),
        "throughput_fps": lat.size / ((recv[-1] - sent[0]) / 1e9) if mode == "flat-out" else None,
        "consumer_cpu_us_per_frame": (cons["user_s"] + cons["sys_s"]) / cons["sent"].size * 1e6,
        "consumer_sys_us_per_frame": cons["sys_s"] / cons["sent"].size * 1e6,
    }
    if transport == "ring":
        woken = prod["woken"][warmup:].astype(bool)
        row.update({
            "spin_us": spin_us, "slots": slots, "drops": prod["refused"], "frames_retried": prod["retried"],
            "futex_woken_frac": float(woken.mean()),
            "p50_woken_us": float(np.median(lat[woken])) if woken.any() else None,
            "p50_spun_us": float(np.median(lat[~woken])) if (~woken).any() else None,
        })
    return {k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()}


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'transport':<14}{'mode':<10}{'n':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}"
            f"{'frames/s':>10}{'cpu/frame':>11}  notes")
    print("\nlatency in us; cpu/frame = consumer CPU (user+sys) per frame received, in us")
    print(head)
    print("-" * len(head))
    for r in rows:
        name = r["transport"] + (f" s{r['spin_us']:g}" if r["transport"] == "ring" else "")
        fps = f"{r['throughput_fps']:>10.0f}" if r["throughput_fps"] is not None else f"{'-':>10}"
        notes = ""
        if r["transport"] == "ring":
            notes = f"futex-woken {r['futex_woken_frac']:.1%}, drops {r['drops']} ({r['frames_retried']} frames)"
            if r["p50_woken_us"] is not None and r["p50_spun_us"] is not None:
                notes += f", p50 woken {r['p50_woken_us']:.0f} / spun {r['p50_spun_us']:.0f}"
        print(f"{name:<14}{r['mode']:<10}{r['n']:>7}{r['p50_us']:>9.1f}{r['p90_us']:>9.1f}{r['p99_us']:>9.1f}"
              f"{r['p99_9_us']:>9.1f}{r['max_us']:>9.1f}{fps}{r['consumer_cpu_us_per_frame']:>11.1f}  {notes}")


def ratios(rows: list[dict[str, Any]], spin_us: float) -> dict[str, dict[str, float]]:
    """baseline / ring for p50 and p99, per mode (ring at the first --spin-us value)."""
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        ring = next(r for r in rows if r["transport"] == "ring" and r["mode"] == mode and r["spin_us"] == spin_us)
        for r in rows:
            if r["mode"] == mode and r["transport"] != "ring":
                out[f"{r['transport']}/ring {mode}"] = {
                    "p50": r["p50_us"] / ring["p50_us"], "p99": r["p99_us"] / ring["p99_us"]}
    return out


def machine_info() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "numpy": np.__version__, "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realtime-frames", type=int, default=2000, help="frames per transport, 20 ms apart")
    ap.add_argument("--flatout-frames", type=int, default=20000, help="frames per transport, back to back")
    ap.add_argument("--warmup", type=int, default=50, help="first frames left out of the statistics")
    ap.add_argument("--realtime-slots", type=int, default=64, help="ring slots in realtime mode")
    ap.add_argument("--flatout-slots", type=int, default=1024, help="ring slots in flat-out mode")
    ap.add_argument("--spin-us", type=float, nargs="+", default=[50.0],
                    help="ring consumer spin before the futex sleep; several values run the realtime ring "
                         "once each; the first is used for flat-out, the ratios and the targets")
    ap.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ipc.json")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no /dev/shm leftovers
    if "ring" not in args.transports:
        ap.error("the ring is the subject of this benchmark: keep it in --transports")

    ctx = mp.get_context("spawn")
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for mode in MODES:
        frames = args.realtime_frames if mode == "realtime" else args.flatout_frames
        slots = args.realtime_slots if mode == "realtime" else args.flatout_slots
        for transport in args.transports:
            spins = args.spin_us if transport == "ring" and mode == "realtime" else args.spin_us[:1]
            for spin_us in spins:
                label = f"{transport}" + (f" (spin {spin_us:g} us)" if transport == "ring" else "")
                print(f"{mode:>9}: {label}, {frames} frames ...", flush=True)
                rows.append(run_case(ctx, transport, mode, frames, slots, spin_us, args.warmup))

    print_table(rows)
    spin0 = args.spin_us[0]
    rat = ratios(rows, spin0)
    print("\nbaseline / ring (higher = ring faster):")
    for key, val in rat.items():
        print(f"  {key:<24} p50 x{val['p50']:.1f}   p99 x{val['p99']:.1f}")

    ring_rt = next(r for r in rows if r["transport"] == "ring" and r["mode"] == "realtime" and r["spin_us"] == spin0)
    targets = {"p50_us": TARGET_P50_US, "p99_us": TARGET_P99_US, "mode": "realtime", "spin_us": spin0,
               "p50_met": ring_rt["p50_us"] <= TARGET_P50_US, "p99_met": ring_rt["p99_us"] <= TARGET_P99_US}
    print(f"\ntargets (ring, realtime, spin {spin0:g} us, {os.cpu_count()} cores):")
    for q, limit in (("p50", TARGET_P50_US), ("p99", TARGET_P99_US)):
        verdict = "MET" if targets[f"{q}_met"] else "MISSED"
        print(f"  {q} <= {limit:g} us: {ring_rt[f'{q}_us']:.1f} us  {verdict}")

    result = {
        "benchmark": "ipc one-way hop latency, 640-byte frames",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "duration_s": round(time.monotonic() - started, 1),
        "results": rows, "ratios_baseline_over_ring": rat, "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} ({result['duration_s']} s)")


if __name__ == "__main__":
    main()
