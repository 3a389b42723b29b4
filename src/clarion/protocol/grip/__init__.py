"""GRIP, sans-IO: everything the proxy and the Django middleware both need to agree on.

- ``sig``: ``Grip-Sig`` tokens and the key forms Pushpin accepts.
- ``headers``: the parameterised header syntax (``name; k=v, name2``).
- ``instruct``: response instructions, header form and ``application/grip-instruct`` JSON.
- ``items``: publish items and their formats, in both the shapes Pushpin accepts.
- ``wsevents``: the ``application/websocket-events`` codec and ``c:`` control messages.
- ``filters``: the subscription filters (skip-self, skip-users, require-sub, build-id, var-subst).
- ``routes``: Pushpin's routes-file syntax.
- ``mapping``: how native JSON publications and GRIP formats map onto each other.
"""
