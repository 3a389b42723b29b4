"""The GRIP proxy: Pushpin's job inside the hub process.

``proxy`` forwards client requests to origins and reads their instructions; ``hold`` keeps
long-polls and streams; ``wsover`` runs WebSocket-over-HTTP; ``control`` is the publish API;
``recent`` keeps the last publications so a hold being set up misses nothing; ``origin`` is the
HTTP client. Codecs live in ``clarion.protocol.grip``, shared with the Django middleware.
"""
