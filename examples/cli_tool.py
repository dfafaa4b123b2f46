"""A command-line tool that reports its own usage, with a stable anonymous id across runs.

    python examples/cli_tool.py greet Ada
    python examples/cli_tool.py --identity-file ~/.config/mytool/analytics-id.json greet Ada

`stateful=True` keeps the anonymousId and the identified user in `identity_path` (a 0600
file), so every run of the tool on this machine is the same anonymous visitor, until it
calls `identify`. Short-lived processes are the exit flush's job: the client delivers
what is queued at exit within `shutdown_timeout` (here 3 s), so a slow or absent network
never makes the tool hang. Without ANALYTICS_SDK_DATA_PLANE_URL it uses the dev server.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from analytics_sdk import Client
from analytics_sdk.devserver import DevServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cli_tool")
    parser.add_argument("--identity-file", type=Path,
                        default=Path(tempfile.gettempdir()) / "analytics-sdk-cli-tool-id.json")
    parser.add_argument("--login", help="identify as this user from now on")
    sub = parser.add_subparsers(dest="command", required=True)
    greet = sub.add_parser("greet")
    greet.add_argument("name")
    args = parser.parse_args(argv)

    url = os.environ.get("ANALYTICS_SDK_DATA_PLANE_URL")
    server = None if url else DevServer().start()
    client = Client(
        os.environ.get("ANALYTICS_SDK_WRITE_KEY") or (server.write_key if server else None),
        url or (server.url if server else None),
        stateful=True,
        identity_path=args.identity_file,
        shutdown_timeout=3.0,
    )
    if args.login:
        client.identify(args.login, {"login_source": "cli"})  # remembered in the identity file
    client.track(event="Command Run", properties={"command": args.command})
    print(f"hello, {args.name}")
    print(f"(anonymousId {client.anonymous_id}, userId {client.user_id})")
    client.shutdown()
    if server is not None:
        print(f"the dev server stored {len(server.events())} events")
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
