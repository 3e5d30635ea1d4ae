"""The engine's command line, run as `python -m engine`: `supervisor [--config FILE]`, `check-config`, `call NUMBER`,
`forget NUMBER`, `trace FILE`, `soak`, `dial`.

It ties the layers together (the supervisor in procs/, the soak tool in tools/, the trace report in engine/), so it
lives in the top layer. Each command imports what it needs when it runs: `check-config` or `trace` never load the
processes' libraries.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from engine.config import E164, Config
from engine.config_load import ConfigError, load_config

DEFAULT_CONFIG_ENV = "ENGINE_CONFIG"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Real-time voice-call engine.")
    parser.add_argument("--config", default=os.environ.get(DEFAULT_CONFIG_ENV),
                        help=f"TOML config file (default: ${DEFAULT_CONFIG_ENV}, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("supervisor", help="run the engine: supervisor plus transport, speech, llm and tts processes")
    sub.add_parser("check-config", help="validate the configuration and print it as TOML, secrets redacted")
    call = sub.add_parser("call", help="place an outbound call through Twilio that connects to this engine")
    call.add_argument("to", help="number to call, E.164 (+15551234567)")
    forget = sub.add_parser("forget", help="delete what the engine remembers of a caller (memory.path)")
    forget.add_argument("number", help="the caller's number, E.164 (+15551234567)")
    trace = sub.add_parser("trace", help="latency report from a trace file (engine.trace_file)")
    trace.add_argument("file", help="the JSONL trace file")
    trace.add_argument("--perfetto", metavar="OUT", help="also write a Chrome/Perfetto trace (open in ui.perfetto.dev)")
    trace.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    trace.add_argument("--waterfalls", type=int, default=5, help="how many of the latest replies to draw")
    soak = sub.add_parser("soak", help="many synthetic callers against a fresh engine, with faults; a report")
    from tools.soak import add_arguments

    add_arguments(soak)
    dial = sub.add_parser("dial", help="call a running engine as Twilio would (or through its playground) and "
                                       "print the call as it happens; its audio to a WAV")
    from tools.dial import add_arguments as add_dial_arguments

    add_dial_arguments(dial)
    args = parser.parse_args(argv)
    if args.command == "trace":
        return _trace(args)
    if args.command == "soak":
        from tools.soak import run_soak

        try:
            return run_soak(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from engine.privacy import redacted

    if args.command == "check-config":  # secrets are shown as set or not, never as they are
        import msgspec

        shown = redacted(cfg)
        sys.stdout.write(msgspec.toml.encode(shown).decode() if hasattr(msgspec, "toml") else str(shown))
        return 0
    if args.command == "call":
        from engine.outbound import OutboundCallError, place_call

        try:
            print(f"calling {args.to}: {place_call(cfg, args.to)}")
        except OutboundCallError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "forget":
        return _forget(cfg, args.number)
    if args.command == "dial":
        from tools.dial import run_dial

        return run_dial(cfg, args)
    from procs.child import setup_logging
    from procs.supervisor import run_supervisor

    setup_logging(cfg.engine.log_level, "supervisor")
    logging.getLogger(__name__).debug("config: %s", redacted(cfg))
    return run_supervisor(cfg)


def _forget(cfg: Config, number: str) -> int:
    from pathlib import Path

    from engine.memory import CallerMemory

    if not E164.fullmatch(number):
        print(f"error: {number!r} is not an E.164 number (like +15551234567)", file=sys.stderr)
        return 2
    path = Path(cfg.memory.path).expanduser()
    if not path.exists():
        print(f"nothing is remembered of {number}: {path} does not exist")
        return 0
    memory = CallerMemory(path, cfg.memory.max_turns, cfg.memory.retention_days)
    try:
        print(f"forgot {number}: {memory.forget(number)} turns deleted from {path}")
    finally:
        memory.close()
    return 0


def _trace(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from engine.trace import read_events
    from engine.trace_report import replies, report, summarize, write_perfetto

    path = Path(args.file)
    if not path.is_file():
        print(f"error: no trace file at {path}", file=sys.stderr)
        return 2
    found = replies(read_events(path))
    print(report(found, args.waterfalls))
    if args.perfetto:
        write_perfetto(found, Path(args.perfetto))
        print(f"perfetto trace: {args.perfetto}")
    if args.json:
        Path(args.json).write_text(json.dumps(summarize(found), indent=2))
    return 0
