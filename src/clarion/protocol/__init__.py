"""Sans-IO codecs: the bytes on the wire, with no sockets, loops or clocks of their own."""
