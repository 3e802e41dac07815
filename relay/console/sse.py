"""Server-sent events: one ``event:``/``data:`` frame per update, JSON data, a comment as heartbeat."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def frame(event: str, data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {text}\n\n"


def response(frames: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=HEADERS)
