"""Rules for what people type that the network itself also checks."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from peers import protocol

USERNAME_HELP = "Required. 1 to 150 characters: letters A-Z and a-z, digits 0-9, and . _ + - only."


def validate_username(value: str) -> None:
    """Refuse a name the protocol refuses: the login server would refuse the node's whole report,
    so everyone on this node would go offline network-wide."""
    try:
        protocol.validate_username(value)
    except protocol.ProtocolError:
        raise ValidationError(
            "This username cannot be used on the network. Use 1 to 150 characters: letters "
            "A-Z and a-z, digits 0-9, and . _ + - only (no spaces, @ or accented letters).",
            code="invalid_username",
        ) from None
