"""Reading server-sent events in tests."""

from __future__ import annotations


def sse_blocks(text: str) -> list[dict]:
    """The complete server-sent events in text, each as {field: value}; a comment block
    (`: keepalive`) as {"comment": "keepalive"}."""
    blocks = []
    for block in text.split("\n\n")[:-1]:
        fields: dict = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            fields["comment" if name == "" else name] = value.removeprefix(" ")
        blocks.append(fields)
    return blocks
