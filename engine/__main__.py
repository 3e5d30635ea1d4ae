"""Command line: `python -m engine supervisor [--config FILE]`, `python -m engine check-config`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from engine.config import ConfigError, load_config

DEFAULT_CONFIG_ENV = "ENGINE_CONFIG"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Real-time voice-call engine.")
    parser.add_argument("--config", default=os.environ.get(DEFAULT_CONFIG_ENV),
                        help=f"TOML config file (default: ${DEFAULT_CONFIG_ENV}, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("supervisor", help="run the engine: supervisor plus transport, speech, llm and tts processes")
    sub.add_parser("check-config", help="validate the configuration and print it as TOML")
    call = sub.add_parser("call", help="place an outbound call through Twilio that connects to this engine")
    call.add_argument("to", help="number to call, E.164 (+15551234567)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "check-config":
        import msgspec

        sys.stdout.write(msgspec.toml.encode(cfg).decode() if hasattr(msgspec, "toml") else str(cfg))
        return 0
    if args.command == "call":
        from engine.outbound import OutboundCallError, place_call

        try:
            print(f"calling {args.to}: {place_call(cfg, args.to)}")
        except OutboundCallError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    from engine.supervisor import run_supervisor
    from procs.child import setup_logging

    setup_logging(cfg.engine.log_level, "supervisor")
    logging.getLogger(__name__).debug("config: %s", cfg)
    return run_supervisor(cfg)


if __name__ == "__main__":
    sys.exit(main())
