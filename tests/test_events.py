"""Live events: publish to Redis streams, relay them as server-sent events, resume from a
cursor, and refuse anyone without a verified session. Against a private Redis."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import redis
from asgiref.sync import async_to_sync
from django.test import AsyncClient, AsyncRequestFactory, Client

from p2psocial import events, redis_client
from p2psocial.devnet import free_port
from p2psocial.event_views import relay, stream
from tests.helpers.accounts import logged_in, post_password
from tests.helpers.factories import make_person
from tests.helpers.redis import running_redis
from tests.helpers.sse import sse_blocks

ALICE, BOB = 101, 102  # user ids: the relay needs no database rows
EVENT_STREAM = {"accept": "text/event-stream"}  # what a browser's EventSource sends
WAIT_S = 5.0


class Reader:
    """Reads one relay's events with a deadline on each."""

    def __init__(self, body):
        self.body = body
        self.pending: list[dict] = []
        self.ended = False

    async def next(self, timeout_s: float = WAIT_S) -> dict | None:
        """The next block, or None when the stream ended."""
        text = ""
        while not self.pending:
            try:
                chunk = await asyncio.wait_for(anext(self.body), timeout_s)
            except StopAsyncIteration:
                self.ended = True
                return None
            text += chunk.decode() if isinstance(chunk, bytes) else chunk
            self.pending = sse_blocks(text)
        return self.pending.pop(0)

    async def event(self, timeout_s: float = WAIT_S) -> dict:
        """The next event, skipping keepalives."""
        while True:
            block = await self.next(timeout_s)
            assert block is not None, "the stream ended"
            if "event" in block:
                return block

    async def rest(self) -> list[dict]:
        """Every block until the stream ends (its lifetime)."""
        blocks = []
        while (block := await self.next()) is not None:
            blocks.append(block)
        return blocks

    async def close(self) -> None:
        await self.body.aclose()


async def opened(user_id: int, cursor: str | None = None) -> tuple[Reader, dict]:
    """A relay for user_id and its first event (ready or reset)."""
    reader = Reader(relay(user_id, cursor))
    return reader, await reader.event()


def publish_soon(*calls) -> None:
    """Publish from a worker thread, as another process would, while the relay waits."""

    async def later():
        await asyncio.sleep(0.05)
        await asyncio.to_thread(lambda: [call() for call in calls])

    asyncio.get_running_loop().create_task(later())


def xread_connections(url: str) -> int:
    clients = redis.Redis.from_url(url).client_list()
    return sum(1 for c in clients if c.get("cmd") in ("xread", "multi", "exec"))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with running_redis(tmp_path_factory.mktemp("events-redis")) as url:
        yield url


@pytest.fixture
def live(settings, redis_url):
    """A fresh private Redis for events, short heartbeats."""
    settings.REDIS_URL = redis_url
    settings.EVENT_HEARTBEAT_S = 0.5
    settings.EVENT_STREAM_MAX_S = 60.0
    redis.Redis.from_url(redis_url).flushdb()
    redis_client.get.cache_clear()
    yield redis_url
    redis_client.get.cache_clear()


# --- publish and relay ------------------------------------------------------------------


def test_an_event_published_for_a_person_reaches_their_stream(live):
    async def scenario():
        reader, first = await opened(ALICE)
        publish_soon(lambda: events.publish(ALICE, "message.status", {"id": 7, "status": "read"}))
        event = await reader.event()
        await reader.close()
        return first, event

    first, event = async_to_sync(scenario)()

    assert first["event"] == "ready" and events.Cursor.parse(first["id"])
    assert first["retry"] == "1000"
    assert (event["event"], json.loads(event["data"])) == (
        "message.status",
        {"id": 7, "status": "read"},
    )
    assert events.Cursor.parse(event["id"]).personal != events.Cursor.parse(first["id"]).personal


def test_another_persons_events_never_reach_the_stream(live):
    async def scenario():
        reader, _ = await opened(ALICE)
        publish_soon(
            lambda: events.publish(BOB, "message.created", {"id": 1}),
            lambda: events.publish(ALICE, "message.created", {"id": 2}),
        )
        event = await reader.event()
        await reader.close()
        return event

    event = async_to_sync(scenario)()

    assert json.loads(event["data"]) == {"id": 2}


def test_a_node_wide_event_reaches_every_person(live):
    async def scenario():
        alice, _ = await opened(ALICE)
        bob, _ = await opened(BOB)
        publish_soon(lambda: events.publish_all("presence.changed", {"user": "dávid"}))
        seen = [await alice.event(), await bob.event()]
        await alice.close()
        await bob.close()
        return seen

    seen = async_to_sync(scenario)()

    assert [(e["event"], json.loads(e["data"])) for e in seen] == [
        ("presence.changed", {"user": "dávid"})
    ] * 2


def test_an_idle_stream_sends_keepalives(live):
    async def scenario():
        reader, _ = await opened(ALICE)
        block = await reader.next()
        await reader.close()
        return block

    assert async_to_sync(scenario)() == {"comment": "keepalive"}


def test_the_stream_ends_after_its_lifetime_and_closes_its_redis_connection(live, settings):
    settings.EVENT_STREAM_MAX_S = 1.0

    async def scenario():
        reader, _ = await opened(ALICE)
        await reader.rest()
        return reader.ended

    before = xread_connections(live)
    assert async_to_sync(scenario)() is True
    assert xread_connections(live) == before


def test_a_cancelled_stream_closes_its_redis_connection(live):
    """As when the browser leaves: Django cancels the response while it waits on Redis."""

    async def scenario():
        body = relay(ALICE, None)
        task = asyncio.create_task(_drain(body))
        await asyncio.sleep(0.3)  # the relay is now blocked in XREAD
        during = await asyncio.to_thread(xread_connections, live)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return during

    async def _drain(body):
        async for _ in body:
            pass

    before = xread_connections(live)
    during = async_to_sync(scenario)()

    assert during == before + 1
    assert xread_connections(live) == before


# --- resuming ---------------------------------------------------------------------------


def test_resuming_from_a_cursor_gets_exactly_the_missed_events_in_order(live):
    async def scenario():
        reader, _ = await opened(ALICE)
        publish_soon(lambda: events.publish(ALICE, "test.n", {"n": 1}))
        seen = await reader.event()
        await reader.close()
        await asyncio.to_thread(events.publish, ALICE, "test.n", {"n": 2})
        await asyncio.to_thread(events.publish_all, "test.n", {"n": 3})
        await asyncio.to_thread(events.publish, BOB, "test.n", {"n": 99})
        await asyncio.to_thread(events.publish, ALICE, "test.n", {"n": 4})
        again, first = await opened(ALICE, seen["id"])
        missed = [await again.event() for _ in range(3)]
        quiet = await again.next()
        await again.close()
        return first, missed, quiet

    first, missed, quiet = async_to_sync(scenario)()

    assert first["event"] == "ready"
    numbers = [json.loads(e["data"])["n"] for e in missed]
    assert sorted(numbers) == [2, 3, 4]
    assert numbers.index(2) < numbers.index(4)  # the person's own, in order
    assert quiet == {"comment": "keepalive"}


def test_a_reconnect_with_the_ready_cursor_misses_nothing_published_in_between(live):
    async def scenario():
        reader, first = await opened(ALICE)
        await reader.close()
        await asyncio.to_thread(events.publish, ALICE, "test.n", {"n": 1})
        again, _ = await opened(ALICE, first["id"])
        event = await again.event()
        await again.close()
        return event

    assert json.loads(async_to_sync(scenario)()["data"]) == {"n": 1}


def test_a_cursor_behind_the_kept_events_gets_a_reset_then_new_events(live, settings):
    settings.EVENT_BACKLOG_EVENTS = 10

    async def scenario():
        reader, first = await opened(ALICE)
        await reader.close()
        for n in range(250):  # Redis trims whole blocks of 100 entries
            await asyncio.to_thread(events.publish, ALICE, "test.n", {"n": n})
        again, reset = await opened(ALICE, first["id"])
        publish_soon(lambda: events.publish(ALICE, "test.n", {"n": "after"}))
        after = await again.event()
        await again.close()
        return reset, after

    reset, after = async_to_sync(scenario)()

    assert reset["event"] == "reset" and events.Cursor.parse(reset["id"])
    assert json.loads(after["data"]) == {"n": "after"}


def test_a_cursor_from_before_redis_lost_its_data_gets_a_reset(live):
    async def scenario():
        reader, first = await opened(ALICE)
        await reader.close()
        await asyncio.to_thread(redis.Redis.from_url(live).flushdb)
        await asyncio.to_thread(events.publish, ALICE, "test.n", {"n": 1})
        again, answer = await opened(ALICE, first["id"])
        await again.close()
        return answer

    assert async_to_sync(scenario)()["event"] == "reset"


def test_a_cursor_older_than_the_streams_lifetime_gets_a_reset(live):
    async def scenario():
        reader, first = await opened(ALICE)
        await reader.close()
        epoch = events.Cursor.parse(first["id"]).epoch
        again, answer = await opened(ALICE, str(events.Cursor(epoch, "1-0", "1-0")))
        await again.close()
        return answer

    assert async_to_sync(scenario)()["event"] == "reset"


@pytest.mark.parametrize("cursor", ["", "garbage", "0123456789abcdef:1-0", "x" * 5000])
def test_a_cursor_that_is_not_ours_gets_a_reset(live, cursor):
    async def scenario():
        reader, answer = await opened(ALICE, cursor)
        await reader.close()
        return answer

    assert async_to_sync(scenario)()["event"] == ("ready" if cursor == "" else "reset")


def test_an_event_too_big_or_with_a_kind_that_could_break_the_stream_is_refused(live):
    with pytest.raises(ValueError):
        events.publish(ALICE, "message\nevent: forged", {})
    with pytest.raises(ValueError):
        events.publish(ALICE, "reset", {})
    with pytest.raises(ValueError):
        events.publish_all("message.created", {"text": "x" * events.EVENT_MAX_BYTES})
    assert redis.Redis.from_url(live).xlen(events.person_key(ALICE)) == 0


# --- best effort ------------------------------------------------------------------------


@pytest.fixture
def redis_down(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    redis_client.get.cache_clear()
    yield
    redis_client.get.cache_clear()


def test_publishing_with_redis_down_logs_and_never_raises(redis_down, caplog):
    with caplog.at_level(logging.WARNING, logger="p2psocial.events"):
        events.publish(ALICE, "message.created", {"id": 1})
        events.publish_all("presence.changed", {"user": "alice"})

    assert [r.getMessage() for r in caplog.records] == ["event not published"] * 2


def test_a_stream_with_redis_down_ends_and_asks_for_a_slower_reconnect(redis_down):
    async def scenario():
        reader = Reader(relay(ALICE, None))
        return [await reader.next(), await reader.next()]

    assert async_to_sync(scenario)() == [{"retry": "5000", "comment": "unavailable"}, None]


@pytest.mark.django_db
def test_publish_on_commit_waits_for_the_commit(live, django_capture_on_commit_callbacks):
    stored = redis.Redis.from_url(live)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        events.publish_on_commit(ALICE, "message.created", {"id": 1})
        events.publish_all_on_commit("presence.changed", {"user": "alice"})
    assert stored.exists(events.person_key(ALICE), events.node_key()) == 0

    for callback in callbacks:
        callback()

    assert stored.xlen(events.person_key(ALICE)) == stored.xlen(events.node_key()) == 1


def test_streams_expire_and_keep_a_bounded_backlog(live, settings):
    settings.EVENT_BACKLOG_EVENTS = 10
    for n in range(250):
        events.publish(ALICE, "test.n", {"n": n})
    stored = redis.Redis.from_url(live)

    assert 0 < stored.ttl(events.person_key(ALICE)) <= settings.EVENT_BACKLOG_TTL_S
    assert stored.xlen(events.person_key(ALICE)) < 250


def test_keys_are_namespaced_by_the_nodes_queue(settings):
    settings.CELERY_TASK_DEFAULT_QUEUE = "p2p-node-hq"
    hq = (events.person_key(ALICE), events.node_key())
    settings.CELERY_TASK_DEFAULT_QUEUE = "p2p-node-branch"

    assert not {*hq} & {events.person_key(ALICE), events.node_key()}


# --- the view ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_anonymous_request_gets_401_json_not_a_stream(live):
    response = async_to_sync(AsyncClient().get)("/events/", headers=EVENT_STREAM)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "login_required"


@pytest.mark.django_db
def test_an_anonymous_request_not_asking_for_a_stream_gets_none_either(live):
    response = async_to_sync(AsyncClient().get)("/events/")

    assert response.status_code in (302, 401)  # the login page, or 401 JSON
    assert not response.streaming


@pytest.mark.django_db
def test_a_password_only_session_gets_401_json_not_a_stream(live):
    make_person("alice")
    client = Client()
    post_password(client, "alice")
    browser = AsyncClient()
    browser.cookies = client.cookies

    response = async_to_sync(browser.get)("/events/", headers=EVENT_STREAM)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "login_required"


@pytest.mark.django_db
def test_the_view_itself_refuses_a_person_without_the_second_factor(live):
    """Not only the middleware: the view checks the session it is given."""
    user, _ = make_person("alice")
    user.is_verified = lambda: False  # as django_otp's middleware marks a password-only login

    async def as_password_only():
        request = AsyncRequestFactory().get("/events/", headers=EVENT_STREAM)

        async def auser():
            return user

        request.auser = auser
        return await stream(request)

    response = async_to_sync(as_password_only)()

    assert response.status_code == 401
    assert not response.streaming


@pytest.fixture
def alice_browser(live, settings):
    """Alice, logged in with both factors, in an AsyncClient; streams end after 1 s."""
    settings.EVENT_STREAM_MAX_S = 1.0
    user, secret = make_person("alice")
    browser = AsyncClient()
    browser.cookies = logged_in(Client(), "alice", secret).cookies
    return user, browser


@pytest.mark.django_db
def test_a_verified_person_gets_their_stream_with_the_headers_proxies_need(alice_browser):
    user, browser = alice_browser

    async def scenario():
        response = await browser.get("/events/", headers=EVENT_STREAM)
        publish_soon(lambda: events.publish(user.pk, "test.n", {"n": 1}))
        return response, await Reader(response.streaming_content).rest()

    response, blocks = async_to_sync(scenario)()

    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-store"
    assert response["X-Accel-Buffering"] == "no"
    named = [b["event"] for b in blocks if "event" in b]
    assert named == ["ready", "test.n"]


@pytest.mark.django_db
def test_last_event_id_resumes_the_stream_over_the_cursor_parameter(alice_browser):
    user, browser = alice_browser

    async def scenario():
        reader, first = await opened(user.pk)
        await reader.close()
        await asyncio.to_thread(events.publish, user.pk, "test.n", {"n": 1})
        response = await browser.get(
            "/events/?cursor=garbage", headers={**EVENT_STREAM, "Last-Event-ID": first["id"]}
        )
        return [b for b in await Reader(response.streaming_content).rest() if "event" in b]

    ready, event = async_to_sync(scenario)()

    assert ready["event"] == "ready"
    assert json.loads(event["data"]) == {"n": 1}


@pytest.mark.django_db
def test_a_post_is_refused(live):
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)

    assert client.post("/events/", headers=EVENT_STREAM).status_code == 405
