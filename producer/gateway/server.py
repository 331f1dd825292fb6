"""Serve the gateway with uvicorn: ``turnq gateway [--host 127.0.0.1 --port 8000]``.

    serve(get_settings(), host="127.0.0.1", port=0)   # port 0: any free port

Once the socket is bound it logs ``turnq gateway listening on http://HOST:PORT`` (the
ready line tests and ``ManagedProcess`` wait for; with port 0 it names the real port).
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from shared.settings import Settings

READY = "turnq gateway listening on"
log = logging.getLogger("uvicorn.error")


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                log.info("%s http://%s:%s", READY, host, port)


def serve(
    settings: Settings, host: str, port: int, *, access_log: bool = True, log_level: str = "info"
) -> None:
    from producer.gateway.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=5,  # open event streams end; turns are durable anyway
        server_header=False,
        proxy_headers=False,
    )
    _Server(config).run()
