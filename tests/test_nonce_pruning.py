"""Seen nonces are forgotten once their requests could only be refused as stale."""

from datetime import timedelta

import pytest
from django.utils import timezone

from peers.auth import prune_seen_nonces
from peers.models import SeenNonce

pytestmark = pytest.mark.django_db


def test_it_forgets_nonces_older_than_twice_the_window_and_keeps_recent_ones(settings):
    old = SeenNonce.objects.create(node="hq", nonce="a" * 32, timestamp=0)
    SeenNonce.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(seconds=2 * settings.REQUEST_MAX_SKEW_S + 5)
    )
    recent = SeenNonce.objects.create(node="hq", nonce="b" * 32, timestamp=0)

    assert prune_seen_nonces() == 1
    assert list(SeenNonce.objects.values_list("pk", flat=True)) == [recent.pk]
