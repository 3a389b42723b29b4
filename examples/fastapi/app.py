"""A FastAPI app that uses Clarion: tickets for its browsers, publications after its writes, and
webhooks it receives from Clarion, verified.

Run the hub and this app (see README.md)::

    CLARION_API_KEY=secret clarion serve --config hub.toml
    CLARION_URL=http://127.0.0.1:8000 CLARION_API_KEY=secret \\
        CLARION_WEBHOOK_SECRET=whsec_… uvicorn app:app --port 8001

Who the user is comes from an ``X-User`` header here, to keep the example short; a real app
takes it from its session or its own authentication dependency.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clarion.client import AsyncClient, HubUnavailable, Ticket
from clarion.errors import SignatureError
from clarion.webhooks import Verifier

log = logging.getLogger("clarion_example")

# The channel every note is published into; the hub's "notes" namespace keeps its history, so
# a browser that reconnects gets the notes it missed (see README.md for the hub's config).
NOTES_CHANNEL = "notes:board"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client for the process: it keeps a pool of keep-alive connections to the hub.
    async with AsyncClient(os.environ.get("CLARION_URL", "http://127.0.0.1:8000"),
                           api_key=os.environ["CLARION_API_KEY"], timeout=5.0) as hub:
        app.state.hub = hub
        # Parsed at startup, so a malformed secret stops the app instead of every webhook.
        # Several secrets, space-separated, while a listener's secret is being rotated.
        app.state.webhooks = Verifier(os.environ["CLARION_WEBHOOK_SECRET"].split())
        app.state.notes = []
        app.state.received = {}
        yield


app = FastAPI(title="Clarion example", lifespan=lifespan)


@app.exception_handler(HubUnavailable)
async def hub_unavailable(request: Request, exc: HubUnavailable) -> JSONResponse:
    # The hub (or its Redis) is away: say so, and when to try again, instead of a bare 500.
    headers = {"retry-after": str(max(1, math.ceil(exc.retry_after or 1)))}
    return JSONResponse({"detail": "realtime service unavailable"}, 503, headers=headers)


# -- dependencies ---------------------------------------------------------------------------


def hub(request: Request) -> AsyncClient:
    client: AsyncClient = request.app.state.hub
    return client


def current_user(x_user: Annotated[str, Header(min_length=1, max_length=64)]) -> str:
    return x_user


async def realtime_ticket(user: Annotated[str, Depends(current_user)],
                          client: Annotated[AsyncClient, Depends(hub)]) -> Ticket:
    """A one-time ticket for the current user, subscribed to the notes channel on connect."""
    return await client.ticket(user, info={"name": user}, channels=[NOTES_CHANNEL])


# -- views ----------------------------------------------------------------------------------


@app.post("/realtime/ticket")
async def issue_ticket(ticket: Annotated[Ticket, Depends(realtime_ticket)]) -> dict[str, Any]:
    """What the page connects with: ``new WebSocket(hub + "/connection/websocket")`` and a
    connect command with ``{"token": ticket}``, or ``/connection/sse?token=<ticket>``."""
    return {"ticket": ticket.ticket, "expires_in": ticket.expires_in}


class NoteIn(BaseModel):
    text: str = Field(min_length=1, max_length=1000)


@app.post("/notes", status_code=201)
async def add_note(note: NoteIn, user: Annotated[str, Depends(current_user)],
                   client: Annotated[AsyncClient, Depends(hub)]) -> dict[str, Any]:
    """Write first, then publish: a publication must never announce a write that failed."""
    notes: list[dict[str, Any]] = app.state.notes
    saved = {"id": len(notes) + 1, "text": note.text, "user": user}
    notes.append(saved)
    try:
        # The note's id as the idempotency key: retrying this publish cannot show it twice.
        result = await client.publish(NOTES_CHANNEL, saved,
                                      idempotency_key=f"note-{saved['id']}")
    except HubUnavailable:
        # The note is saved; pages that missed it load it on their next fetch.
        log.exception("note %s saved but not published", saved["id"])
        return {"note": saved, "published": None}
    return {"note": saved, "published": {"offset": result.offset, "epoch": result.epoch}}


@app.get("/notes")
async def list_notes() -> list[dict[str, Any]]:
    notes: list[dict[str, Any]] = app.state.notes
    return notes


@app.post("/webhooks/clarion", status_code=204)
async def receive_webhook(request: Request) -> Response:
    """A webhook from Clarion: checked against the raw body before anything is trusted, and
    handled once per ``webhook-id`` (the id stays the same across retries)."""
    body = await request.body()
    try:
        msg_id = request.app.state.webhooks.verify(body, request.headers)
    except SignatureError as exc:
        # The message says what was wrong; no detail goes back to the sender.
        log.warning("webhook refused: %s", exc)
        raise HTTPException(400, "invalid signature") from None
    received: dict[str, Any] = request.app.state.received
    if msg_id not in received:
        received[msg_id] = await request.json()
    return Response(status_code=204)


@app.get("/webhooks/received")
async def received_webhooks() -> dict[str, Any]:
    """What arrived, by webhook id (a real app would act on each one instead)."""
    received: dict[str, Any] = app.state.received
    return received
