"""Benchmark /stream and /broadcast against the seeds' Express pattern, one core each.

Starts each server under test pinned to core 0 (``taskset -c 0``), runs the load
generator (bench/loadgen.py) on core 1, stops everything by PID, and writes
bench/results/<scenario>.json plus bench/results/bench.png.

Usage:
    make bench                                   # the full run (about an hour)
    make bench-smoke                             # a small run that checks the plumbing
    .venv/bin/python bench/run.py --scenarios streams --streams 1000,5000 --duration 10
    .venv/bin/python bench/run.py --scenarios fanout-steady   # 10k subscribers, 20 messages

Scenarios (each run --repeats times, a fresh server every time):
    streams       N concurrent /stream?interval=1 clients: delivery, lag, RSS and CPU per tick
    saturation    2k streams at interval=0.025: ticks/s delivered with the server's core full
    first-bytes   200 sequential connections to an idle server: time to first byte and event
    fanout        one POST /broadcast to N subscribers: time until all have it, max rate
    fanout-steady 10k subscribers, one POST /broadcast a second, 20 messages: CPU per
                  delivery, delivery latency, POST answer time, RSS per subscriber, losses

Servers: flask (gunicorn, one gevent worker), flask-redis (Redis broker, two workers),
express (bench/peers/express/server.js: one write per tick) and express-seed
(server-seed.js: the seeds' literal pattern, a write per event).
"""

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402  (beside this file, not an installed package)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEER = BENCH / "peers" / "express"
# The Express peers by server name: the careful one, and the seeds' literal one.
PEER_SCRIPTS = {"express": "server.js", "express-seed": "server-seed.js"}

# Enough for 19k streams on one worker under this machine's 20k open-file cap;
# the app refuses stream 19,501 with a 503 while the worker can still accept it.
FLASK_ENV = {"WORKER_CONNECTIONS": "20000", "SSE_MAX_STREAMS": "19500",
             "ACCESS_LOG": ""}  # a log line per stream would be part of the measurement


class Target:
    """A server under test: its processes, its URL, and how to stop it."""

    def __init__(self, name, args, port, cwd, env=None, workers=1, cpus="0", log_dir=None):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        log = open(Path(log_dir) / f"{name}-{port}.log", "w") if log_dir else subprocess.DEVNULL
        self.proc = subprocess.Popen(["taskset", "-c", cpus, *args], cwd=cwd,
                                     env={**os.environ, **(env or {})},
                                     stdout=log, stderr=subprocess.STDOUT)
        self.workers = workers
        self.extra_pids = []  # e.g. redis-server, counted with the server's CPU
        deadline = time.monotonic() + 30
        while not (self.ready() and len(self.pids()) >= workers):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start; see its log in {log_dir}")
            time.sleep(0.05)

    def ready(self):
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def pids(self):
        """The processes doing the work: gunicorn's workers, or node itself."""
        if self.workers == 0:
            return [self.proc.pid]
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def sample(self):
        """CPU seconds and RSS of the working processes (all their threads), right now."""
        cpu = rss = 0
        for pid in self.pids() + self.extra_pids:
            try:
                cpu += cpu_seconds(pid)
                status = Path(f"/proc/{pid}/status").read_text()
                rss += int(status.split("VmRSS:")[1].split()[0])
            except (OSError, IndexError):
                pass
        return {"time": time.time(), "cpu_seconds": cpu, "rss_kb": rss}

    def stop(self):
        """SIGINT stops gunicorn and node at once; SIGKILL if they do not within 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(name, port, args):
    """Start server ``name``: flask (one gevent worker), flask-redis, or an Express peer."""
    log_dir = args.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if name in PEER_SCRIPTS:
        return Target(name, ["node", PEER_SCRIPTS[name]], port, PEER, {"PORT": str(port)},
                      workers=0, cpus=args.server_cpus, log_dir=log_dir)
    if name not in ("flask", "flask-redis"):
        raise SystemExit(f"unknown server {name!r}: flask, flask-redis, "
                         f"{', '.join(PEER_SCRIPTS)}")
    env = dict(FLASK_ENV)
    workers = 1
    redis = None
    if name == "flask-redis":
        redis_port = loadgen_free_port()
        redis = subprocess.Popen(
            ["taskset", "-c", args.server_cpus, "redis-server", "--port", str(redis_port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(log_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        env.update(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", WEB_CONCURRENCY="2")
        workers = 2
    cmd = [sys.executable, "-m", "gunicorn", "app:app", "--bind", f"127.0.0.1:{port}",
           "--workers", str(workers)]
    try:
        target = Target(name, cmd, port, ROOT, env, workers=workers, cpus=args.server_cpus,
                        log_dir=log_dir)
    except Exception:
        stop_process(redis)
        raise
    if redis is not None:
        target.extra_pids.append(redis.pid)
        original_stop = target.stop

        def stop_both():
            original_stop()
            stop_process(redis)

        target.stop = stop_both
    return target


def cpu_seconds(pid):
    """Time on a CPU, summed over the threads of ``pid``, in nanoseconds from schedstat.

    /proc/PID/stat counts in clock ticks (10 ms here): too coarse for a few
    seconds of a mostly idle server.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def stop_process(proc):
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def loadgen_free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def warm_up(target, path="/stream?interval=0.05"):
    """A few short streams, so idle RSS includes the code paths every stream uses."""
    asyncio.run(loadgen.first_bytes(target.url + path, 20, 0.005, 10))


def stream_run(name, n, interval, args, rep, scenario):
    """One fresh server, n streams at ``interval``: what was delivered and what it cost."""
    target = start(name, loadgen_free_port(), args)
    perf = []

    def sample(moment):
        if moment == "start" and args.perf:
            perf.append(start_perf(target, args, f"{scenario}-{name}-{n}-{rep}"))
        return target.sample()

    try:
        warm_up(target)
        time.sleep(0.5)
        idle = target.sample()
        result = loadgen.run_streams(
            f"{target.url}/stream?interval={interval}", n, args.duration, settle=args.settle,
            rate=args.ramp_rate, sample=sample)
    finally:
        for proc in perf:
            proc.wait(30)
        target.stop()
    samples = result["samples"]
    ticks = result["events"].get("counter", 0)
    events = sum(result["events"].values())
    seconds = result["window_seconds"]
    established = result["ramped_established"]
    cpu = samples["end"]["cpu_seconds"] - samples["start"]["cpu_seconds"]
    expected_ticks = established / interval
    return {
        "scenario": scenario, "server": name, "n": n, "interval": interval, "repeat": rep,
        "established": established, "open_at_end": result["open"],
        "ramp_failed": result["ramp_failed"], "ramp_seconds": round(result["ramp_seconds"], 2),
        "ended_by_server": result["ended_by_server"], "count_gaps": result["count_gaps"],
        "ticks_per_s": ticks / seconds, "expected_ticks_per_s": expected_ticks,
        "delivered_ratio": ticks / seconds / expected_ticks if expected_ticks else None,
        "events_per_s": events / seconds,
        "expected_events_per_s": established * (2 / interval + 1 / 5),  # ping every 5 s
        "lag_p50_ms": result["lag"].percentile(50), "lag_p99_ms": result["lag"].percentile(99),
        "lag_max_ms": result["lag"].percentile(100),
        "rss_idle_kb": idle["rss_kb"], "rss_ramped_kb": samples["start"]["rss_kb"],
        "rss_per_stream_kb": (samples["start"]["rss_kb"] - idle["rss_kb"]) / max(1, established),
        "server_cpu_s": cpu, "server_cpu_fraction": cpu / seconds,
        "cpu_ms_per_1000_ticks": cpu * 1e6 / ticks if ticks else None,
        "loadgen_cpu_fraction": result["cpu_seconds"] / seconds,
        "loadgen_processes": result["processes"],
        "load_average": os.getloadavg(),
    }


def start_perf(target, args, label):
    """perf record -g on the server for the window; read it with perf report -i FILE."""
    out = args.out / "perf" / f"{label}.data"
    out.parent.mkdir(parents=True, exist_ok=True)
    pids = ",".join(str(p) for p in target.pids())
    return subprocess.Popen(
        ["perf", "record", "-F", "499", "-g", "-o", str(out), "-p", pids, "--",
         "sleep", str(args.duration)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def first_bytes_run(name, args, rep):
    """An idle server, ``--count`` connections one after another."""
    target = start(name, loadgen_free_port(), args)
    try:
        warm_up(target)
        result = asyncio.run(loadgen.first_bytes(
            f"{target.url}/stream?interval=1", args.count, 0.005, 10))
    finally:
        target.stop()
    return {"scenario": "first-bytes", "server": name, "repeat": rep, "count": args.count,
            "established": result["established"], "failed": result["failed"],
            "first_byte_p50_ms": result["first_byte"]["p50_ms"],
            "first_byte_p99_ms": result["first_byte"]["p99_ms"],
            "first_event_p50_ms": result["first_event"]["p50_ms"],
            "first_event_p99_ms": result["first_event"]["p99_ms"],
            "load_average": os.getloadavg()}


def fanout_run(name, n, args, rep):
    """N subscribers on GET /broadcast; POST /broadcast one message at a time, then faster."""
    target = start(name, loadgen_free_port(), args)
    try:
        probe = asyncio.run(loadgen.first_bytes(target.url + "/broadcast", 1, 0, 5))
        if not probe["established"]:
            return {"scenario": "fanout", "server": name, "n": n, "repeat": rep,
                    "skipped": f"GET /broadcast failed on {name}: {probe['failed']}"}
        idle = target.sample()
        result = loadgen.run_fanout(
            f"{target.url}/broadcast", n, args.messages, args.gap, rates=args.rates,
            step_seconds=args.step_seconds, rate=args.ramp_rate,
            sample=lambda moment: target.sample())
    finally:
        target.stop()
    result.update(scenario="fanout", server=name, n=n, repeat=rep, rss_idle_kb=idle["rss_kb"],
                  load_average=os.getloadavg())
    one = result["one_at_a_time"]
    result["all_have_it_p50_ms"] = one["all_have_it"]["p50_ms"]
    result["all_have_it_p99_ms"] = one["all_have_it"]["p99_ms"]
    return result


def warm_up_broadcast(target):
    """A few subscribers come and go, and one POST, so idle RSS includes the broadcast paths.

    Returns why GET /broadcast failed, or None.
    """
    # first_bytes waits for a counter event, which /broadcast never sends: 0.2 s each.
    probe = asyncio.run(loadgen.first_bytes(target.url + "/broadcast", 5, 0.005, 0.2))
    if probe["established"] < 5:
        return f"GET /broadcast failed: {probe['failed']}"
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
    try:
        conn.request("POST", "/broadcast", json.dumps({"data": "warm-up"}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    return None if response.status == 202 else f"POST /broadcast answered {response.status}"


def fanout_steady_run(name, n, args, rep):
    """N subscribers on GET /broadcast; one POST a second: what each delivery cost, how late."""
    target = start(name, loadgen_free_port(), args)
    try:
        failed = warm_up_broadcast(target)
        if failed:
            return {"scenario": "fanout-steady", "server": name, "n": n, "repeat": rep,
                    "skipped": failed}
        time.sleep(0.5)
        idle = target.sample()
        result = loadgen.run_fanout_steady(
            f"{target.url}/broadcast", n, args.fanout_steady_messages, args.fanout_steady_gap,
            settle=args.settle, rate=args.ramp_rate, sample=lambda moment: target.sample())
    finally:
        target.stop()
    ramped, end = result["samples"]["ramped"], result["samples"]["end"]
    result.update(
        scenario="fanout-steady", server=name, n=n, repeat=rep,
        rss_idle_kb=idle["rss_kb"], rss_subscribed_kb=ramped["rss_kb"], rss_end_kb=end["rss_kb"],
        rss_per_subscriber_kb=(ramped["rss_kb"] - idle["rss_kb"]) / max(1, result["established"]),
        load_average=os.getloadavg())
    return result


def summarize(runs, keys, group=("server", "n")):
    """Median, min and max of each metric over the repeats of one configuration."""
    groups = {}
    for run in runs:
        if "skipped" in run:
            continue
        groups.setdefault(tuple(run.get(g) for g in group), []).append(run)
    out = []
    for ident, members in groups.items():
        row = dict(zip(group, ident, strict=True))
        row["repeats"] = len(members)
        for key in keys:
            values = [m[key] for m in members if m.get(key) is not None]
            if values:
                row[key] = {"median": median(values), "min": min(values), "max": max(values)}
        out.append(row)
    return out


STREAM_KEYS = ["established", "ticks_per_s", "expected_ticks_per_s", "delivered_ratio",
               "events_per_s", "expected_events_per_s", "lag_p50_ms", "lag_p99_ms",
               "rss_per_stream_kb", "cpu_ms_per_1000_ticks", "server_cpu_fraction",
               "loadgen_cpu_fraction"]
FIRST_KEYS = ["first_byte_p50_ms", "first_byte_p99_ms", "first_event_p50_ms",
              "first_event_p99_ms"]
FANOUT_KEYS = ["established", "all_have_it_p50_ms", "all_have_it_p99_ms",
               "max_rate_p99_under_limit", "max_achieved_rate_p99_under_limit"]
STEADY_KEYS = ["established", "cpu_us_per_delivery", "server_busy_fraction",
               "delivery_p50_ms", "delivery_p99_ms", "delivery_max_ms", "all_have_it_p99_ms",
               "post_answer_p50_ms", "post_answer_p99_ms", "post_answer_max_ms",
               "rss_per_subscriber_kb", "missing_deliveries", "loadgen_cpu_fraction"]


def meta(args):
    """What a reader needs to reproduce or doubt the numbers."""
    def output(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None

    versions = {}
    for module in ("flask", "werkzeug", "gunicorn", "gevent", "greenlet", "uvloop"):
        try:
            from importlib.metadata import version
            versions[module] = version(module)
        except Exception:
            versions[module] = None
    express = PEER / "node_modules" / "express" / "package.json"
    versions["express"] = json.loads(express.read_text())["version"] if express.exists() else None
    versions["node"] = output(["node", "--version"])
    # Which script ran under which name: "express" changed from the seeds' pattern to
    # one write per tick, and bench/chart.py labels older results by this key's absence.
    peers = {name: {"script": f"bench/peers/express/{script}",
                    "sha256": hashlib.sha256((PEER / script).read_bytes()).hexdigest()[:12]}
             for name, script in PEER_SCRIPTS.items()}
    versions["python"] = platform.python_version()
    return {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "commit": output(["git", "rev-parse", "--short", "HEAD"]),
            "dirty": bool(output(["git", "status", "--porcelain", "--untracked-files=no"])),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "kernel": platform.release(), "versions": versions, "peers": peers,
            "server_cpus": args.server_cpus, "loadgen_cpus": args.loadgen_cpus}


def save(args, scenario, runs, keys, group=("server", "n")):
    path = args.out / f"{scenario}.json"
    data = {"meta": meta(args), "runs": runs, "summary": summarize(runs, keys, group)}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"wrote {path}", flush=True)


SHOW_STEADY = ("scenario", "server", "n", "repeat", "established", "cpu_us_per_delivery",
               "server_busy_fraction", "delivery_p50_ms", "delivery_p99_ms", "post_answer_p50_ms",
               "post_answer_p99_ms", "post_answer_max_ms", "rss_per_subscriber_kb",
               "missing_deliveries", "loadgen_cpu_fraction", "skipped")


def show(run):
    """One line per run: the metrics a reader looks at first."""
    keys = ("scenario", "server", "n", "repeat", "established", "ticks_per_s", "delivered_ratio",
            "lag_p99_ms", "rss_per_stream_kb", "cpu_ms_per_1000_ticks", "loadgen_cpu_fraction",
            "first_byte_p99_ms", "first_event_p99_ms", "all_have_it_p99_ms",
            "max_rate_p99_under_limit", "max_achieved_rate_p99_under_limit", "skipped")
    if run.get("scenario") == "fanout-steady":
        keys = SHOW_STEADY
    print("  ".join(f"{k}={round(run[k], 3) if isinstance(run[k], float) else run[k]}"
                    for k in keys if k in run), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--smoke", action="store_true",
                        help="small numbers for a quick check (≤ 2,000 streams, short windows)")
    parser.add_argument("--scenarios",
                        default="streams,saturation,first-bytes,fanout,fanout-steady")
    parser.add_argument("--servers", default="flask,express",
                        help="for streams, saturation, first-bytes and fanout-steady; "
                             "also flask-redis, express-seed")
    parser.add_argument("--streams", help="N list for scenario streams (default 1k..19k)")
    parser.add_argument("--duration", type=float, help="seconds measured after ramp-up")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after ramp-up")
    parser.add_argument("--ramp-rate", type=float, default=1000, help="connections per second")
    parser.add_argument("--saturation-streams", type=int)
    parser.add_argument("--saturation-interval", type=float, default=0.025)
    parser.add_argument("--count", type=int, help="first-bytes: sequential connections")
    parser.add_argument("--fanout", help="subscriber counts for scenario fanout")
    parser.add_argument("--fanout-servers", default="flask,flask-redis,express")
    parser.add_argument("--messages", type=int, help="fanout: messages sent one at a time")
    parser.add_argument("--gap", type=float, default=0.5, help="fanout: seconds between them")
    parser.add_argument("--rates", help="fanout: publish rates (per second) to step through")
    parser.add_argument("--step-seconds", type=float, help="fanout: seconds per rate step")
    parser.add_argument("--fanout-steady-subscribers",
                        help="fanout-steady: subscriber counts (default 10000)")
    parser.add_argument("--fanout-steady-messages", type=int,
                        help="fanout-steady: messages, one every --fanout-steady-gap (default 20)")
    parser.add_argument("--fanout-steady-gap", type=float, default=1.0,
                        help="fanout-steady: seconds between messages")
    parser.add_argument("--server-cpus", default="0", help="taskset list for the servers")
    parser.add_argument("--loadgen-cpus", default="1", help="CPUs for this script and loadgen")
    parser.add_argument("--perf", action="store_true",
                        help="perf record the server during each streams window")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    parser.add_argument("--chart-only", action="store_true", help="redraw the chart and stop")
    args = parser.parse_args(argv)

    small = args.smoke
    args.streams = [int(x) for x in (args.streams or ("500,2000" if small else
                                                        "1000,5000,10000,15000,19000")).split(",")]
    args.duration = args.duration or (5.0 if small else 30.0)
    args.saturation_streams = args.saturation_streams or (500 if small else 2000)
    args.count = args.count or (50 if small else 200)
    args.fanout = [int(x) for x in (args.fanout or ("500" if small else "1000,5000,10000"))
                   .split(",")]
    args.messages = args.messages or (10 if small else 50)
    args.rates = [float(x) for x in (args.rates or ("5,20" if small else
                                                     "1,2,5,10,20,50,100,200")).split(",")]
    args.step_seconds = args.step_seconds or (2.0 if small else 10.0)
    args.fanout_steady_subscribers = [int(x) for x in (
        args.fanout_steady_subscribers or ("500" if small else "10000")).split(",")]
    args.fanout_steady_messages = args.fanout_steady_messages or (5 if small else 20)
    args.out = args.out or BENCH / ("results/smoke" if small else "results")
    args.out.mkdir(parents=True, exist_ok=True)

    if not args.chart_only:
        run_scenarios(args)
    import chart
    print(f"wrote {chart.draw(args.out)}")


def run_scenarios(args):
    os.sched_setaffinity(0, {int(c) for c in args.loadgen_cpus.split(",")})
    servers = args.servers.split(",")
    if set(PEER_SCRIPTS) & set(servers + args.fanout_servers.split(",")):
        install_peer()
    scenarios = args.scenarios.split(",")
    if "streams" in scenarios:
        runs = []
        for rep in range(args.repeats):
            for n in args.streams:
                for name in servers:  # interleaved, so a noisy minute hurts both alike
                    runs.append(stream_run(name, n, 1.0, args, rep, "streams"))
                    show(runs[-1])
                    save(args, "streams", runs, STREAM_KEYS)
    if "saturation" in scenarios:
        runs = []
        for rep in range(args.repeats):
            for name in servers:
                runs.append(stream_run(name, args.saturation_streams, args.saturation_interval,
                                       args, rep, "saturation"))
                show(runs[-1])
                save(args, "saturation", runs, STREAM_KEYS)
    if "first-bytes" in scenarios:
        runs = []
        for rep in range(args.repeats):
            for name in servers:
                runs.append(first_bytes_run(name, args, rep))
                show(runs[-1])
                save(args, "first-bytes", runs, FIRST_KEYS, group=("server",))
    if "fanout" in scenarios:
        run_fanouts(args, "fanout", fanout_run, args.fanout, args.fanout_servers.split(","),
                    FANOUT_KEYS)
    if "fanout-steady" in scenarios:
        run_fanouts(args, "fanout-steady", fanout_steady_run, args.fanout_steady_subscribers,
                    servers, STEADY_KEYS)


def run_fanouts(args, scenario, run_one, counts, servers, keys):
    """Every repeat, subscriber count and server of a fan-out scenario, interleaved."""
    runs = []
    for rep in range(args.repeats):
        for n in counts:
            for name in servers:
                if name == "flask-redis" and not shutil.which("redis-server"):
                    runs.append({"scenario": scenario, "server": name, "n": n,
                                 "repeat": rep, "skipped": "redis-server not installed"})
                else:
                    runs.append(run_one(name, n, args, rep))
                show(runs[-1])
                save(args, scenario, runs, keys)


def install_peer():
    """npm ci once: the peer's exact dependency tree from package-lock.json."""
    if not (PEER / "node_modules" / "express").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER, check=True)


if __name__ == "__main__":
    main()
