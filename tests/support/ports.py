"""A free local port: for a served demo, or the rendezvous of a multi-process launch, so that tests running side by
side (`pytest -n 2`) never meet on a fixed one such as torchrun's 29500."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
