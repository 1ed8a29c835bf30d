

def test_the_listening_socket_is_tcp_so_responses_are_not_delayed():
    """asyncio sets TCP_NODELAY only on sockets created with proto IPPROTO_TCP; without it each response waited
    for the client's delayed ACK (~40 ms a request on loopback)."""
    import socket

    from kolm_audit.cli.serve import _listen

    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0
    finally:
        sock.close()
