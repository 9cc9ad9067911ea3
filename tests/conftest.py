import pytest
from servers import RedisServer, need, start_gunicorn

from app import create_app

# Short periods so that no test waits a real second per event.
FAST = {"HEARTBEAT": 0.2, "PING_INTERVAL": 0.1, "RETRY_MS": 100}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Keep a developer's own SSE_*, REDIS_URL or OPENAI_* settings out of the tests."""
    import os

    for name in list(os.environ):
        if name.startswith(("SSE_", "OPENAI_")) or name in ("REDIS_URL", "PUBLISH_TOKEN"):
            monkeypatch.delenv(name)


@pytest.fixture
def app():
    return create_app({"TESTING": True, **FAST})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def gunicorn(tmp_path):
    """Start real gunicorn servers (gevent worker) for one test; stop them all after."""
    started = []

    def start(env=None, args=()):
        settings = {f"SSE_{key}": str(value) for key, value in FAST.items()}
        server = start_gunicorn(tmp_path, env={**settings, **(env or {})}, args=args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server for one test (``.url``, ``.stop()``, ``.start()``); stopped after."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's chromium: playwright cannot download its own browsers on this machine."""
    return {**browser_type_launch_args, "executable_path": need("chromium"), "args": [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]}


@pytest.fixture(scope="session")
def base_url():
    """Each test starts its own server; overriding this also silences a pytest 9 warning."""
    return None


def pytest_collection_modifyitems(items):
    """Run the browser tests last.

    Playwright's sync API leaves its event loop marked as running in the main
    thread from the first browser test to the end of the session, and
    asyncio.run() (the many-clients tests) refuses to start under it.
    """
    items.sort(key=lambda item: "browser" in item.fixturenames)  # stable: the rest keep order
