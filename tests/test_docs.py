"""The README and docs/ against the code: the copied view, the links, the length, the settings."""

import fnmatch
import json
import re
from pathlib import Path

import pytest

import settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# A fenced code block, indented or not (inside a list item): indent, language, code.
_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)
# [text](target) and ![alt](target); the target ends at whitespace or ")".
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def stream_view():
    """The /stream view in app.py: its decorator to its first ``return event_stream(events)``."""
    lines = (ROOT / "app.py").read_text().splitlines(keepends=True)
    start = lines.index('@bp.get("/stream")\n')
    end = lines.index("    return event_stream(events)\n", start)
    return "".join(lines[start:end + 1])


def prose(text):
    """``text`` without its fenced code blocks, where a [x](y) is code, not a link."""
    return _FENCE.sub("", text)


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    seen, found = {}, set()
    for line in prose(path.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path):
    """Every (target path, anchor) a page links to inside the repository."""
    for target in _LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        yield (path.parent / file).resolve() if file else path, anchor


def test_the_readme_shows_the_stream_view_exactly_as_app_py_has_it():
    blocks = [code for _, lang, code in _FENCE.findall(README.read_text()) if lang == "python"]
    shown = [code for code in blocks if code.startswith('@bp.get("/stream")')]
    assert shown, 'no python code block in README.md starts with @bp.get("/stream")'
    assert shown[0] == stream_view()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_that_exists(page):
    missing = []
    for target, anchor in relative_links(page):
        name = target.relative_to(ROOT).as_posix() if target.is_relative_to(ROOT) else str(target)
        if not target.exists():
            missing.append(name)
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            missing.append(f"{name}#{anchor}")
    assert missing == []


def test_the_readme_stays_a_front_page():
    assert len(README.read_text().splitlines()) <= 220


def ignored(name):
    """True for what .gitignore keeps out of the repository, and hidden names but two."""
    if name.startswith(".") and name not in (".ci", ".gitignore"):
        return True
    patterns = [line.rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
                if line and not line.startswith("#") and "/" not in line.rstrip("/")]
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def test_the_readme_file_map_names_every_top_level_file_and_folder():
    entries = [path.name for path in ROOT.iterdir() if not ignored(path.name)]
    files_section = README.read_text().split("## Files", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([^`/]+)/?[^`]*`", files_section))
    assert sorted(set(entries) - named) == []


def env_name(key):
    return key if key in settings.UNPREFIXED else f"SSE_{key}"


def shown_default(value):
    """A default as docs/configuration.md writes it: what you would set in the environment."""
    if value == "":
        return "empty"
    return f"`{value if isinstance(value, str) else json.dumps(value)}`"


def configuration_rows():
    """{variable: default cell} from the tables of docs/configuration.md."""
    rows = {}
    for line in (ROOT / "docs/configuration.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_every_setting_is_in_the_configuration_page_with_its_default():
    rows = configuration_rows()
    for key, value in settings.DEFAULTS.items():
        assert env_name(key) in rows, f"{env_name(key)} is not in docs/configuration.md"
        assert rows[env_name(key)] == shown_default(value), env_name(key)


def test_every_gunicorn_variable_is_in_the_configuration_page():
    names = re.findall(r'os\.environ\.get\("(\w+)"', (ROOT / "gunicorn.conf.py").read_text())
    rows = configuration_rows()
    assert [name for name in names if name not in rows] == []
