"""TLS served by the hub itself (``certfile`` and ``keyfile``), for deployments without a proxy
in front that terminates it.

The certificate is read once, at startup: a bad or unreadable file stops the start with an
error that names it, rather than a hub that accepts connections and fails every handshake.
Renewing a certificate takes a restart (see docs/deployment/tls.md).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from clarion.errors import ConfigError

__all__ = ["server_context"]


def server_context(certfile: str, keyfile: str = "") -> ssl.SSLContext | None:
    """A server context for ``certfile`` (the certificate chain, PEM) and ``keyfile`` (its
    private key, PEM; may be left out when ``certfile`` holds both). None without a certfile."""
    if not certfile:
        if keyfile:
            raise ConfigError("keyfile is set without certfile: TLS needs both (or a certfile "
                              "that holds the key too)")
        return None
    for name, path in (("certfile", certfile), ("keyfile", keyfile)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{name} {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # TLS 1.2 and up, the library's cipher choice: what Mozilla's "intermediate" profile asks.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # HTTP/1.1 is all the hub speaks; saying so lets an HTTP/2-first client settle at once.
    context.set_alpn_protocols(["http/1.1"])
    try:
        # An encrypted key would make OpenSSL prompt on the terminal and hang a service start:
        # an empty password makes it a load error instead.
        context.load_cert_chain(certfile, keyfile or None, password=_no_password)
    except ssl.SSLError as exc:  # an OSError too: caught first
        # OpenSSL's reason ("PEM lib", "KEY_VALUES_MISMATCH") says which part is wrong.
        reason = exc.reason or str(exc)
        hint = (" (the key does not belong to the certificate)" if "MISMATCH" in reason
                else " (is it PEM, with the key unencrypted?)")
        raise ConfigError(f"TLS: certfile {certfile}"
                          + (f" / keyfile {keyfile}" if keyfile else "")
                          + f" could not be loaded: {reason}{hint}") from None
    except PermissionError as exc:
        raise ConfigError(f"TLS: cannot read {exc.filename or certfile}: permission denied"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"TLS: cannot read {exc.filename or certfile}: {exc.strerror}"
                          ) from None
    return context


def _no_password() -> bytes:
    return b""
