"""/health tells monitoring what is wrong, as JSON, without failing itself."""

import pytest
from django.test import Client

from p2psocial import redis_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def redis_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens on the discard port
    redis_client.get.cache_clear()
    yield
    redis_client.get.cache_clear()


TOKEN = "monitoring-token-for-tests"


@pytest.fixture(autouse=True)
def health_token(settings):
    settings.HEALTH_TOKEN = TOKEN


def test_it_answers_503_naming_redis_when_redis_is_down(redis_down):
    response = Client().get("/health", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"] == "ok"
    assert body["redis"].startswith("error: ")
    assert body["worker_heartbeat_age_s"] is None


def test_the_liveness_probe_answers_without_touching_anything(redis_down):
    response = Client().get("/health/live")
    assert response.status_code == 200
    assert response.content == b"ok"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_without_the_monitoring_token_it_shows_only_the_status(redis_down, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = Client().get("/health", headers=headers)
    assert response.status_code == 503
    assert response.json() == {"status": "degraded", "role": "node"}


def test_with_no_token_configured_nobody_sees_the_figures(settings):
    settings.HEALTH_TOKEN = ""
    response = Client().get("/health", headers={"Authorization": "Bearer "})
    assert set(response.json()) == {"status", "role"}
