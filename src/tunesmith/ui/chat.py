"""Chat with runs through ``tunesmith serve``'s own OpenAI-compatible app.

Choosing a run loads it with :func:`tunesmith.serve.serve` (the adapter and its base on one
backend, so the base answers the same prompt for the side-by-side view) and starts its
engines. The UI's ``/v1/*`` is that app: a request goes to the loaded app that serves its
``model`` name, so the browser speaks exactly the API ``tunesmith serve`` speaks, streaming
included. At most ``max_loaded`` runs stay loaded (least recently chosen is dropped).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from typing import Any

from tunesmith.rundir import RunDir


class ChatModels:
    """Loaded serve apps, one per chosen run; an ASGI app routing ``/v1/*`` by model name."""

    def __init__(self, max_loaded: int = 2, default_max_tokens: int = 128):
        self.max_loaded = max_loaded
        self.default_max_tokens = default_max_tokens
        self._apps: OrderedDict[str, Any] = OrderedDict()  # run path -> serve app
        self._lock = threading.Lock()

    def load(self, run: RunDir, base: str | None = None) -> dict[str, str]:
        """Load ``run`` (once) and return its served names: ``{"model", "base"}``.

        ``base`` overrides the base the run names (a path relative to the workspace that the
        run recorded as given, resolved by the caller).
        """
        from tunesmith.serve import serve

        key = str(run.path.resolve())
        with self._lock:
            if key not in self._apps:
                app = serve(key, model=base, api_key="", default_max_tokens=self.default_max_tokens)
                for engine in app.state.server.engines.values():
                    engine.start()
                self._apps[key] = app
                while len(self._apps) > self.max_loaded:
                    _, old = self._apps.popitem(last=False)
                    old.state.server.stop()
            self._apps.move_to_end(key)
            models = self._apps[key].state.server.models
        base = next((n for n, m in models.items() if m.kind == "base"), None)
        own = next((n for n, m in models.items() if m.kind != "base"), base)
        return {"model": own, "base": base}

    def stop(self) -> None:
        with self._lock:
            for app in self._apps.values():
                app.state.server.stop()
            self._apps.clear()

    def _app_for(self, model: str | None):
        for app in reversed(self._apps.values()):
            if model is None or model in app.state.server.models:
                return app
        return None

    async def __call__(self, scope, receive, send) -> None:
        """ASGI: replay the request to the serve app that serves its ``model``."""
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        model = None
        if body:
            try:
                parsed = json.loads(body)
                model = parsed.get("model") if isinstance(parsed, dict) else None
            except ValueError:
                model = None
        app = self._app_for(model if isinstance(model, str) else None)
        if app is None:
            return await _not_loaded(send, model)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        # Mounted under /v1: the serve app routes on the full path, so undo the mount's root.
        inner = dict(scope, root_path=scope.get("app_root_path", ""))
        await app(inner, replay, send)


async def _not_loaded(send, model: Any) -> None:
    text = (
        f"the model {model!r} is not loaded; choose its run on the Chat page first"
        if model
        else "no run is loaded; choose one on the Chat page first"
    )
    payload = json.dumps(
        {"error": {"message": text, "type": "invalid_request_error", "code": "model_not_found"}}
    ).encode()
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": payload})
    await asyncio.sleep(0)
