"""Wait on a condition with a deadline: integration tests never sleep a fixed time."""

from p2psocial.devnet import wait_until


def wait_for(predicate, *, timeout: float = 30.0, message: str = "condition", interval=0.1):
    return wait_until(predicate, timeout=timeout, message=message, interval=interval)
