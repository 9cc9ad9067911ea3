import itertools

import pytest
from ci_skips import pytest_runtest_makereport  # noqa: F401 (the hook: in CI a skip fails)
from servers import RedisServer, need, start_gunicorn, start_nginx

from app import create_app

# Short periods so that no test waits a real second per event.
FAST = {"HEARTBEAT": 0.2, "PING_INTERVAL": 0.1, "RETRY_MS": 100}

# Debian's chromium with the flags measured in TOOLCHAIN.md: Playwright cannot
# download its own browsers here, and these keep chromium quiet and offline.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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
    """Start real gunicorn servers (gevent worker) for one test; stop them all after.

    ``port=`` restarts a server where an earlier one listened, as a deploy would.
    """
    def start_one(env=None, args=(), port=None, open_files=None):
        settings = {f"SSE_{key}": str(value) for key, value in FAST.items()}
        return start_gunicorn(tmp_path, env={**settings, **(env or {})}, args=args, port=port,
                              open_files=open_files)

    yield from stopped_after(start_one)


@pytest.fixture
def nginx(tmp_path):
    """Start the shipped nginx.conf in front of a server for one test; stop it after."""
    prefixes = (tmp_path / f"nginx-{n}" for n in itertools.count())

    def start_one(upstream, replace=()):
        return start_nginx(next(prefixes), upstream.url, replace)

    yield from stopped_after(start_one)


def stopped_after(start_one):
    """For a fixture: yield a function that starts servers, then stop every one it started."""
    started = []

    def start(*args, **kwargs):
        started.append(start_one(*args, **kwargs))
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server for one test (``.url``, ``.stop()``, ``.start()``); stopped after."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args(pytestconfig):
    """Launch Debian's chromium for pytest-playwright (skip without it on a laptop, fail in CI)."""
    return {"executable_path": need("chromium"), "args": CHROMIUM_ARGS,
            "headless": not pytestconfig.getoption("--headed")}


@pytest.fixture(scope="session")
def base_url():
    """No fixed base URL: every browser test starts its own server on a free port."""
    need("chromium")
    return None


# Fixtures that start a real gunicorn, nginx, redis-server or chromium (or need one).
SERVER_FIXTURES = {"gunicorn", "nginx", "redis_server", "redis_broker", "proxy", "lesson", "page",
                   "browser", "context"}


def pytest_collection_modifyitems(items):
    """Mark every test that starts a real server ``integration``, and run browser tests last.

    ``pytest -m "not integration"`` then runs only what needs no process of its
    own, in seconds. A test that starts one without these fixtures marks itself.

    Browser tests go last: Playwright's sync API leaves its event loop marked as
    running in the main thread from the first browser test to the end of the
    session, and asyncio.run() (the many-clients tests) refuses to start under it.
    """
    for item in items:
        if SERVER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: "browser" in item.fixturenames)  # stable: the rest keep order
