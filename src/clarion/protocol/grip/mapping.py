"""One channel space: how a native publication (JSON ``data``) and a GRIP item map onto each
other, so a message published either way reaches every kind of subscriber.

Native to GRIP (``/api/publish`` reaching GRIP-held clients):
- a JSON string ``"text"`` becomes the text itself in every format (add your own newline);
- any other JSON value becomes its compact JSON: ``http-stream`` content gets a ``\\n`` after
  it (one message per line), ``http-response`` body and ``ws-message`` text get it as is.

GRIP to native (``/publish/`` reaching WebSocket/SSE/stream/poll clients): the data is taken from
``ws-message``, else ``http-stream``, else ``http-response``; text that is a JSON document
(surrounding whitespace ignored) is delivered as that JSON value, other text as a JSON string,
binary content as ``{"content-bin": "<base64>"}``. Items that carry no content (a ``close``
or ``hint`` action) do not reach native subscribers.
"""

from __future__ import annotations

import base64

import msgspec

from clarion.protocol.grip.items import (
    Formats,
    HttpResponseFormat,
    HttpStreamFormat,
    Item,
    WsMessageFormat,
)

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


def item_from_native(channel: str, data: bytes) -> Item:
    value = _decode.decode(data)
    if isinstance(value, str):
        text = value
        stream = value
        content_type = "text/plain; charset=utf-8"
    else:
        text = _encode.encode(value).decode()
        stream = text + "\n"
        content_type = "application/json"
    return Item(channel=channel, formats=Formats(
        http_response=HttpResponseFormat(headers=[("Content-Type", content_type)], body=text),
        http_stream=HttpStreamFormat(content=stream),
        ws_message=WsMessageFormat(content=text)))


def native_data(item: Item) -> bytes | None:
    f = item.formats
    if f is None:
        return None
    text: str | None = None
    binary: bytes | None = None
    if f.ws_message is not None and f.ws_message.action == "send":
        ws = f.ws_message
        if ws.type in (None, "text", "binary"):
            text, binary = (None, ws.content_bytes) if ws.is_binary else (ws.content, None)
    if text is None and binary is None and f.http_stream is not None \
            and f.http_stream.action == "send":
        s = f.http_stream
        text, binary = (None, s.content_bytes) if s.content_bin is not None else (s.content, None)
    if text is None and binary is None and f.http_response is not None \
            and f.http_response.action == "send":
        r = f.http_response
        text, binary = (None, r.body_bytes) if r.body_bin is not None else (r.body, None)
    if binary is not None:
        try:
            text = binary.decode()
        except UnicodeDecodeError:
            return _encode.encode({"content-bin": base64.b64encode(binary).decode()})
    if text is None:
        return None
    stripped = text.strip()
    if stripped:
        try:
            return _encode.encode(_decode.decode(stripped))
        except msgspec.DecodeError:
            pass
    return _encode.encode(text)
