"""Lighter TLS sessions in memory: one parsed certificate and key shared by every connection, memory BIOs renewed only
when empty, and the layers' small event queues."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mitmproxy import options
from mitmproxy.proxy import context, events, layer
from mitmproxy.test import tflow
from OpenSSL import SSL

from codexbridge.mitm import tls
from codexbridge.mitm.layer import EventQueue, _lighter_queues

KEY = ec.generate_private_key(ec.SECP256R1())
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
NOW = dt.datetime.now(dt.UTC)
CERT = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME).public_key(KEY.public_key())
        .serial_number(1).not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
        .sign(KEY, hashes.SHA256()))


@pytest.fixture(autouse=True)
def _installed() -> Iterator[None]:
    tls.install()
    yield
    tls.uninstall()


def server() -> SSL.Connection:
    ctx = tls.release_buffers(SSL.Context(SSL.TLS_SERVER_METHOD))
    conn = SSL.Connection(ctx)
    conn.use_certificate(CERT)  # as mitmproxy's tlsconfig does, with its certstore entry's objects
    conn.use_privatekey(KEY)
    conn.set_accept_state()
    return conn


def pump(a: SSL.Connection, b: SSL.Connection) -> None:
    while True:
        try:
            b.bio_write(a.bio_read(65536))
        except SSL.WantReadError:
            return


def connected() -> tuple[SSL.Connection, SSL.Connection]:
    s = server()
    c = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
    c.set_connect_state()
    for _ in range(6):
        for end in (c, s):
            try:
                end.do_handshake()
            except SSL.WantReadError:
                pass
        pump(c, s)
        pump(s, c)
    return s, c


def exchange(s: SSL.Connection, c: SSL.Connection, size: int) -> None:
    send(c, s, b"q" * size)
    send(s, c, b"a" * size)


def send(sender: SSL.Connection, receiver: SSL.Connection, payload: bytes) -> None:
    sender.sendall(payload)
    pump(sender, receiver)
    got = b""
    while len(got) < len(payload):
        got += receiver.recv(65536)
    assert got == payload


def test_connections_share_one_parsed_certificate_and_key() -> None:
    (s1, c1), (s2, c2) = connected(), connected()
    for s, c in ((s1, c1), (s2, c2)):
        exchange(s, c, 100)
        peer = c.get_peer_certificate(as_cryptography=True)
        assert peer is not None and peer == CERT
    assert len(tls.certificates.made) == 1 and len(tls.private_keys.made) == 1
    assert SSL._lib.SSL_get_certificate(s1._ssl) == SSL._lib.SSL_get_certificate(s2._ssl)  # one X509 in OpenSSL


def test_what_pyopenssl_refuses_it_still_refuses() -> None:
    conn = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD))
    with pytest.raises(TypeError):
        conn.use_certificate(b"not a certificate")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        conn.use_privatekey("not a key")  # type: ignore[arg-type]
    other = ec.generate_private_key(ec.SECP256R1())
    conn.use_certificate(CERT)
    with pytest.raises(SSL.Error):
        conn.use_privatekey(other)  # not the certificate's key
    assert not tls.certificates.made or all(obj is CERT for obj, _ in tls.certificates.made.values())


def test_uninstall_gives_pyopenssl_its_methods_back() -> None:
    tls.uninstall()
    assert SSL.Connection.use_certificate is not tls.use_certificate
    assert SSL.Connection.use_privatekey is not tls.use_privatekey
    tls.install()
    assert SSL.Connection.use_certificate is tls.use_certificate


def test_empty_bios_are_renewed_and_the_connection_goes_on() -> None:
    s, c = connected()
    exchange(s, c, 40_000)  # the BIOs grew to hold it
    before = (s._into_ssl, s._from_ssl)
    assert tls.shed_bios(s)
    assert (s._into_ssl, s._from_ssl) != before
    exchange(s, c, 300)
    exchange(s, c, 20_000)


def test_bios_holding_bytes_are_kept() -> None:
    s, c = connected()
    s.sendall(b"not read yet")  # encrypted into the outgoing BIO, not taken out
    before = (s._into_ssl, s._from_ssl)
    assert not tls.shed_bios(s)
    assert (s._into_ssl, s._from_ssl) == before
    pump(s, c)
    assert c.recv(100) == b"not read yet"
    plain = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
    plain._into_ssl = plain._from_ssl = None  # a socket connection has no memory BIOs
    assert not tls.shed_bios(plain)


class _Stub(layer.Layer):
    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from ()


def test_the_sessions_layers_get_small_queues() -> None:
    ctx = context.Context(tflow.tclient_conn(), options.Options())
    outer = _Stub(ctx)
    between = layer.NextLayer(ctx)  # (not in ctx.layers, as in mitmproxy)
    inner = _Stub(ctx)
    outer.child_layer = between  # type: ignore[attr-defined]
    between.layer = inner
    inner.connections = {ctx.client: _Stub(ctx.fork())}  # type: ignore[attr-defined]  # an HTTP layer's
    waiting = events.Start()
    outer._paused_event_queue.append(waiting)  # a layer with events waiting keeps its queue
    _lighter_queues([outer, inner])
    assert list(outer._paused_event_queue) == [waiting] and type(outer._paused_event_queue) is not EventQueue
    for x in (between, inner, inner.connections[ctx.client]):  # type: ignore[attr-defined]
        assert type(x._paused_event_queue) is EventQueue
    queue = inner._paused_event_queue
    assert not queue
    first, second = events.Start(), events.Start()
    queue.append(first)
    queue.append(second)
    assert queue and list(queue) == [first, second]
    assert queue.popleft() is first and queue.popleft() is second and not queue


@pytest.mark.parametrize("size", [1, 200, 16384, 16385, 300_000])
def test_encrypt_makes_the_records_sendall_and_bio_read_make(size: int) -> None:
    s, c = connected()
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    records = tls.encrypt(s, payload)  # (beyond one record pyOpenSSL's contexts write partially: the rest follows)
    assert records and tls.encrypt(s, b"") == b""  # nothing left behind in the BIO
    c.bio_write(records)
    got = b""
    while len(got) < size:
        got += c.recv(1 << 20)
    assert got == payload
    send(s, c, b"after")  # the connection goes on, in step


def test_encrypt_raises_as_sendall_does_once_the_connection_is_shut() -> None:
    s, c = connected()
    s.shutdown()
    with pytest.raises(SSL.Error):
        tls.encrypt(s, b"late")
