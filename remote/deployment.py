"""The Ray Serve deployment: a FastAPI WebSocket ingress whose replica also renders (remote.service.RenderService).

Kept in its own module, without postponed annotations, because FastAPI resolves the handler's type hints from
module globals; importing it needs ray[serve] (requirements-serve.txt).
"""
import asyncio

from fastapi import FastAPI, WebSocket
from ray import serve

from remote.service import DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_BATCH, RenderService

# no /docs, /redoc or /openapi.json: they answer without the token (docs/remote.md, Security)
api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name="AvatarRenderer")
@serve.ingress(api)
class AvatarRenderer:
    def __init__(self, settings: dict):
        self.service = RenderService(settings)
        # serve.batch's limits are set per replica from the settings (the decorator only gives the defaults)
        self.render.set_max_batch_size(int(settings.get("max_batch", DEFAULT_MAX_BATCH)))
        self.render.set_batch_wait_timeout_s(float(settings.get("batch_wait_ms", DEFAULT_BATCH_WAIT_MS)) / 1000.0)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_MS / 1000.0)
    async def render(self, requests: list) -> list:
        # a worker thread: the event loop keeps receiving (and batching) the other connections' frames meanwhile
        return await asyncio.to_thread(self.service.render_batch, requests)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return self.service.health()

    @api.websocket("/")
    async def connect(self, ws: WebSocket) -> None:
        await ws.accept()
        await self.service.serve_connection(ws, self.render)
