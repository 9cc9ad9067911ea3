"""Draw bench/results/bench.png from the JSON files bench/run.py wrote.

Usage: .venv/bin/python bench/chart.py [RESULTS_DIR]
Each point is the median over the repeats; the bar spans the lowest and the highest.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import FuncFormatter  # noqa: E402

COLORS = {"flask": "tab:blue", "express": "tab:orange", "flask-redis": "tab:green",
          "express-seed": "tab:purple"}
LABELS = {"flask": "Flask, 1 gevent worker", "express": "Express peer (one write per tick)",
          "flask-redis": "Flask, Redis, 2 workers",
          "express-seed": "Express, seeds' literal pattern (a write per event)"}


def series(data, server):
    """Color, label and short name of ``server``'s results in ``data``.

    Results written before meta recorded the peers (before the commit that made
    server.js write once per tick) ran server-seed.js's pattern as "express".
    """
    if server == "express" and "peers" not in data["meta"]:
        return (COLORS["express-seed"], "Express, seeds' pattern (before the peer change)",
                "express\n(seeds' pattern)")
    return COLORS.get(server, "gray"), LABELS.get(server, server), server


def load(folder, scenario):
    path = Path(folder) / f"{scenario}.json"
    return json.loads(path.read_text()) if path.exists() else None


def spread(row, key):
    """(median, distance down to min, distance up to max) of one summary metric."""
    cell = row.get(key)
    if not cell:
        return None
    return cell["median"], cell["median"] - cell["min"], cell["max"] - cell["median"]


def by_n(ax, data, key, title, unit, target=None, scale=1.0):
    for server in COLORS:
        rows = sorted((r for r in data["summary"] if r["server"] == server and spread(r, key)),
                      key=lambda r: r["n"])
        if not rows:
            continue
        xs = [r["n"] for r in rows]
        mids, lows, highs = zip(*(spread(r, key) for r in rows), strict=True)
        color, label, _ = series(data, server)
        ax.errorbar(xs, [m * scale for m in mids],
                    yerr=[[v * scale for v in lows], [v * scale for v in highs]],
                    marker="o", capsize=3, color=color, label=label)
    if target is not None:
        ax.axhline(target, color="tab:red", linestyle="--", linewidth=1, label="target")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("concurrent streams")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    ax.set_ylabel(unit)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def bars(ax, data, keys, title, unit, target=None, rows=None):
    """A group of bars per server (``rows``: data's summary rows, by default all of them)."""
    rows = data["summary"] if rows is None else rows
    servers = [series(data, r["server"])[2] for r in rows]
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        for i, row in enumerate(rows):
            cell = spread(row, key)
            if cell is None:
                continue
            mid, low, high = cell
            ax.bar(i + k * width, mid, width, yerr=[[low], [high]], capsize=3,
                   color=series(data, row["server"])[0], alpha=1 - 0.35 * k,
                   label=label if i == 0 and len(keys) > 1 else None)
            ax.annotate(f"{mid:,.0f}" if mid >= 100 else f"{mid:.3g}", (i + k * width, mid),
                        ha="center", va="bottom", fontsize=8)
    ax.set_xticks([i + width * (len(keys) - 1) / 2 for i in range(len(rows))], servers)
    if target is not None:
        ax.axhline(target, color="tab:red", linestyle="--", linewidth=1, label="target")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3, axis="y")


def steady_panels(panels, steady):
    """fanout-steady at its largest N: a bar per server for each quantity."""
    n = max(r["n"] for r in steady["summary"])
    rows = [r for r in steady["summary"] if r["n"] == n]
    runs = [r for r in steady["runs"] if r.get("n") == n and "skipped" not in r]
    first = runs[0] if runs else {}
    what = (f"steady fan-out, {n:,} subscribers, {first.get('messages', '?')} messages "
            f"{first.get('gap', '?')} s apart")
    lost = {}
    for run in runs:
        lost[run["server"]] = lost.get(run["server"], 0) + run["missing_deliveries"]
    missing = ", ".join(f"{server} {count}" for server, count in lost.items())
    bars(next(panels), steady, [("cpu_us_per_delivery", "CPU per delivery")],
         f"{what}:\nserver CPU per delivery", "µs", rows=rows)
    bars(next(panels), steady, [("server_busy_fraction", "core busy")],
         "steady fan-out: server core busy", "fraction of one core", rows=rows)
    bars(next(panels), steady, [("delivery_p50_ms", "delivery p50"),
                                ("delivery_p99_ms", "delivery p99")],
         f"steady fan-out: publish to delivery\n(missing deliveries, all repeats: {missing})",
         "ms", rows=rows)
    bars(next(panels), steady, [("post_answer_p50_ms", "POST answered p50"),
                                ("post_answer_p99_ms", "POST answered p99"),
                                ("post_answer_max_ms", "POST answered max")],
         "steady fan-out: POST /broadcast answered", "ms", target=50, rows=rows)
    bars(next(panels), steady, [("rss_per_subscriber_kb", "RSS per subscriber")],
         "steady fan-out: server RSS per subscriber", "KB", rows=rows)

def draw(folder):
    """Write bench.png in ``folder`` with one panel per measured quantity; return its path.

    Row 1: /stream (streams, saturation); row 2: first bytes and fanout; row 3: fanout-steady.
    """
    folder = Path(folder)
    fig, axes = plt.subplots(3, 5, figsize=(22, 13))
    streams, saturation = load(folder, "streams"), load(folder, "saturation")
    first, fanout = load(folder, "first-bytes"), load(folder, "fanout")
    steady = load(folder, "fanout-steady")
    rows = [iter(row) for row in axes]
    if streams:
        by_n(next(rows[0]), streams, "cpu_ms_per_1000_ticks", "server CPU per 1000 ticks",
             "ms of CPU")
        by_n(next(rows[0]), streams, "rss_per_stream_kb", "server RSS per stream", "KB",
             target=16)
        by_n(next(rows[0]), streams, "lag_p99_ms", "delivery lag p99", "ms", target=20)
        by_n(next(rows[0]), streams, "delivered_ratio", "ticks delivered / expected", "%",
             scale=100)
    if saturation:
        bars(next(rows[0]), saturation, [("ticks_per_s", "ticks/s")],
             f"saturation: {saturation['runs'][0]['n']} streams at "
             f"interval={saturation['runs'][0]['interval']}", "ticks delivered per second")
    if first:
        bars(next(rows[1]), first,
             [("first_byte_p50_ms", "first byte p50"), ("first_byte_p99_ms", "first byte p99"),
              ("first_event_p99_ms", "first event p99")],
             "idle server, sequential connections", "ms", target=5)
    if fanout and fanout["summary"]:
        by_n(next(rows[1]), fanout, "all_have_it_p99_ms",
             "fan-out: all subscribers have it, p99", "ms")
        rate = ("max_achieved_rate_p99_under_limit"
                if any("max_achieved_rate_p99_under_limit" in row for row in fanout["summary"])
                else "max_rate_p99_under_limit")  # files from before the achieved rate
        by_n(next(rows[1]), fanout, rate,
             "fan-out: max publish rate taken with p99 < 1 s", "messages/s")
    if steady and steady["summary"]:
        steady_panels(rows[2], steady)
    for row in rows:
        for ax in row:
            ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(7, len(handles)))
    loaded = {"streams": streams, "saturation": saturation, "first-bytes": first,
              "fanout": fanout, "fanout-steady": steady}
    # The scenarios may come from different runs: say which is which.
    runs = "; ".join(f"{name} {d['meta'].get('date', '')[:10]} commit {d['meta'].get('commit')}"
                     f"{' (dirty)' if d['meta'].get('dirty') else ''}"
                     for name, d in loaded.items() if d)
    fig.suptitle(f"SSE benchmark, server on one core, load generator on the other\n{runs}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    path = folder / "bench.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results"))
