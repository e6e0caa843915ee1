"""fastsocks inside your own asyncio application, with your own auth and rules.

Run it (``python examples/embed.py``), then e.g.
``curl --socks5-hostname alice:wonderland@127.0.0.1:1080 http://127.0.0.1:8000/``.

``check_password`` and ``may_connect`` stand in for your backends: an LDAP
bind, a call to an HTTP auth service, a database lookup.  They are
coroutines on the server's event loop, so they must await their I/O, never
block.
"""

from __future__ import annotations

import asyncio
import logging

import fastsocks

# Stand-ins for a directory service.
PASSWORDS = {"alice": "wonderland", "bob": "builder"}
BLOCKED_PORTS = {25}  # e.g. no outbound mail through the proxy


async def check_password(username: str, password: str, client: tuple[str, int]) -> bool | str:
    await asyncio.sleep(0)  # your LDAP / HTTP call goes here
    if PASSWORDS.get(username) != password:
        return False
    return username.lower()  # the name rules, limits and logs will use


async def may_connect(request: fastsocks.RequestInfo) -> bool:
    await asyncio.sleep(0)  # your policy service goes here
    return request.port not in BLOCKED_PORTS


async def main() -> None:
    settings = fastsocks.Settings(listen=[("127.0.0.1", 1080)], access_log="-")
    async with fastsocks.Server(settings, authenticate=check_password,
                                authorize=may_connect) as server:
        logging.info("SOCKS5 on %s", ", ".join(server.addresses))
        await server.wait_stopped()  # until server.stop() / server.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
