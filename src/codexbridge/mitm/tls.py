"""Lighter TLS connections between client and proxy: idle record buffers given back, one parsed certificate and key
per certificate instead of one per connection, and memory BIOs that do not keep their largest burst's size."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mitmproxy.net import tls as net_tls
from OpenSSL import SSL, crypto

CONTEXT_FACTORIES = ("create_client_proxy_context", "create_proxy_server_context")
CONNECTION_METHODS = ("use_certificate", "use_privatekey")
PARSED_CAP = 128  # parsed certificates (and keys) kept: above mitmproxy's certstore cap of 100 entries
_stock: dict[str, Any] = {}
_lib = SSL._lib  # OpenSSL's own calls (checked at load)
_ffi = SSL._ffi


def release_buffers(context: SSL.Context) -> SSL.Context:
    """An idle connection's record buffers (~34 KB) go back from the handshake on (SSL_MODE_RELEASE_BUFFERS): measured
    ~28 KB less per idle connection when set before the handshake, ~13 KB when set only once the session starts."""
    # (pyOpenSSL refuses set_mode on a context already used; the mode only applies to connections made later)
    _lib.SSL_CTX_set_mode(context._context, _lib.SSL_MODE_RELEASE_BUFFERS)
    return context


def _lighter(name: str) -> Any:
    stock = _stock[name]

    @functools.wraps(stock)
    def factory(*args: Any, **kwargs: Any) -> SSL.Context:
        return release_buffers(stock(*args, **kwargs))  # (stock caches its contexts; setting the mode again is free)

    return factory


class _Parsed:
    """pyOpenSSL's objects for the cryptography objects mitmproxy hands to a connection, made once each (by identity;
    the cryptography object is kept, so its id stays its own). pyOpenSSL makes them anew per call by a DER round trip,
    and each connection then holds its own parsed copy: ~13 KB of OpenSSL memory per TLS connection, plus the
    serialisation, parsing and RSA blinding set-up of a fresh private key in every handshake."""

    def __init__(self, convert: Callable[[Any], Any], cap: int = PARSED_CAP) -> None:
        self.convert = convert
        self.cap = cap
        self.made: OrderedDict[int, tuple[Any, Any]] = OrderedDict()

    def get(self, obj: Any) -> Any:
        key = id(obj)
        hit = self.made.get(key)
        if hit is not None and hit[0] is obj:
            self.made.move_to_end(key)
            return hit[1]
        parsed = self.convert(obj)
        self.made[key] = (obj, parsed)
        if len(self.made) > self.cap:
            self.made.popitem(last=False)
        return parsed


certificates = _Parsed(crypto.X509.from_cryptography)
private_keys = _Parsed(crypto.PKey.from_cryptography_key)


def use_certificate(self: SSL.Connection, cert: Any) -> None:
    """pyOpenSSL's Connection.use_certificate, with the certificate parsed once (see _Parsed)."""
    if isinstance(cert, crypto.X509):
        return _stock["use_certificate"](self, cert)  # (with pyOpenSSL's deprecation warning)
    if not _lib.SSL_use_certificate(self._ssl, certificates.get(cert)._x509):
        SSL._raise_current_error()
    return None


def use_privatekey(self: SSL.Connection, pkey: Any) -> None:
    """pyOpenSSL's Connection.use_privatekey, with the key loaded once (see _Parsed)."""
    if isinstance(pkey, crypto.PKey):
        return _stock["use_privatekey"](self, pkey)
    if not _lib.SSL_use_PrivateKey(self._ssl, private_keys.get(pkey)._pkey):
        self._context._raise_passphrase_exception()
    return None


def _pending(bio: Any) -> int:
    return int(_lib.BIO_get_mem_data(bio, _ffi.new("char **")))


_OUT = _ffi.new("char[]", 1 << 16)  # one buffer for every encrypt(): the event loop runs one at a time


def encrypt(connection: SSL.Connection, data: bytes) -> bytes:
    """The TLS records for `data` (what sendall, then bio_read until WantReadError, give), made with OpenSSL's calls
    directly: pyOpenSSL's pair costs twice as much per frame, most of it the exception that ends its read loop
    (measured: 9.8-12.8 vs 4.7-5.8 us for a 200-byte frame). Raises SSL.Error as sendall does."""
    ssl = connection._ssl
    result = _lib.SSL_write(ssl, data, len(data)) if data else 0
    if result != len(data):  # an error, or a partial write (pyOpenSSL's contexts allow them): sendall's loop
        if result <= 0 and data:
            connection._raise_ssl_error(ssl, result)
        connection.sendall(data[result:])
    bio = connection._from_ssl
    if _lib.BIO_get_mem_data(bio, _ffi.NULL) <= 0:
        return b""
    pieces = []
    while (n := _lib.BIO_read(bio, _OUT, 1 << 16)) > 0:
        pieces.append(_ffi.buffer(_OUT, n)[:])
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def shed_bios(connection: SSL.Connection) -> bool:
    """Gives a connection whose memory BIOs are empty a fresh pair: a memory BIO keeps the size of the most it ever
    held (the handshake's flight, a client's large frame, a burst encrypted at once) for as long as the connection
    lives. True when done; False when the connection has no memory BIOs or they hold bytes (then nothing changes)."""
    into, out = getattr(connection, "_into_ssl", None), getattr(connection, "_from_ssl", None)
    if into is None or out is None or _pending(into) or _pending(out):
        return False
    new_into = _lib.BIO_new(_lib.BIO_s_mem())
    if new_into == _ffi.NULL:
        return False
    new_out = _lib.BIO_new(_lib.BIO_s_mem())
    if new_out == _ffi.NULL:
        _lib.BIO_free(new_into)
        return False
    _lib.SSL_set_bio(connection._ssl, new_into, new_out)  # the connection owns both and frees the old pair
    connection._into_ssl, connection._from_ssl = new_into, new_out
    return True


def install() -> None:
    """Idempotent: mitmproxy's tlsconfig looks its context factories up in net_tls per connection, and calls its
    connections' use_certificate and use_privatekey with its certstore entry's cryptography objects."""
    if _stock:
        return
    for name in CONTEXT_FACTORIES:
        _stock[name] = getattr(net_tls, name)
        setattr(net_tls, name, _lighter(name))
    for name, replacement in zip(CONNECTION_METHODS, (use_certificate, use_privatekey), strict=True):
        _stock[name] = getattr(SSL.Connection, name)
        setattr(SSL.Connection, name, replacement)


def uninstall() -> None:
    for name, stock in _stock.items():
        setattr(SSL.Connection if name in CONNECTION_METHODS else net_tls, name, stock)
    _stock.clear()
    certificates.made.clear()
    private_keys.made.clear()
