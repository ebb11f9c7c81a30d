"""The repository stands alone: code cites its own docs/ pages, never an outside specification.

Checks every text file of the code folders and the top-level scripts for citations of the
external design document ("SPEC 4.9" style) and for paths into a sibling `shared` folder, every
.py/.yaml/.md file of the repository for citations of issue-tracker numbers ("issue 12", "#10":
the repository cannot resolve them; say the fact or cite a docs/ page), and checks that every
`docs/<page>.md` named anywhere exists and that the docs pages link to each other correctly.
"""

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CODE_DIRS = ("latentsync", "scripts", "tests", "configs", "benchmarks")
TEXT_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".json", ".md", ".txt", ".toml", ".cfg", ".ini"}
SKIP_PARTS = {"__pycache__", ".venv", ".git"}
SELF = Path(__file__).resolve()

FORBIDDEN = (
    (re.compile(r"\bSPEC\b"), "cites the external SPEC document (cite a docs/*.md page instead)"),
    (re.compile(r"\.\./shared"), "builds a path into ../shared (nothing outside the repo may be read)"),
    (re.compile(r"""["']shared["']"""), "builds a path with a 'shared' folder component"),
)
ISSUE_CITATION = re.compile(r"\bissues? #?\d+|(?<![\w&/])#\d{1,4}\b", re.IGNORECASE)
ISSUE_SUFFIXES = {".py", ".yaml", ".yml", ".md"}
# files of other areas that still cite issue numbers, until their owners remove the citations
# (the test fails once a listed file is clean, so the list only shrinks)
DOC_REFERENCE = re.compile(r"\bdocs/([A-Za-z0-9_.-]+\.md)\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


def checked_files() -> list[Path]:
    """Text files of the code folders plus the top-level shell and Python entry points."""
    files = [p for p in REPO.glob("*.sh")] + [p for p in REPO.glob("*.py")]
    for folder in CODE_DIRS:
        root = REPO / folder
        if root.is_dir():
            files += [p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                      and not SKIP_PARTS.intersection(p.relative_to(REPO).parts)]
    return sorted(p for p in files if p.resolve() != SELF)


def forbidden_hits(text: str) -> list[tuple[int, str, str]]:
    """(line number, line, problem) for every forbidden pattern in `text`."""
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, problem in FORBIDDEN:
            if pattern.search(line):
                hits.append((number, line.strip(), problem))
    return hits


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def test_scanner_catches_each_pattern():
    assert forbidden_hits("x = 1  # the mask layout (SPEC 3.4)")
    assert forbidden_hits('root = Path(__file__).parents[2] / "shared" / "SPEC.md"')
    assert forbidden_hits("open('../shared/reference/fixtures')")
    assert not forbidden_hits("x = 1  # the mask layout (see docs/face-processing.md)")
    assert not forbidden_hits("weights are shared by every frame; specification, SPECIAL")


def test_checked_files_cover_the_code():
    names = {p.relative_to(REPO).as_posix() for p in checked_files()}
    for expected in ("latentsync/audio.py", "latentsync/pipelines/lipsync_pipeline.py",
                     "scripts/inference.py", "configs/unet/stage2.yaml", "inference.sh",
                     "tests/conftest.py"):
        assert expected in names
    assert "tests/test_docs.py" not in names


def test_no_outside_citations_or_shared_paths():
    problems = [f"{path.relative_to(REPO)}:{number}: {problem}: {line}"
                for path in checked_files() for number, line, problem in forbidden_hits(read(path))]
    assert not problems, "\n".join(problems)


def repo_files(suffixes: set) -> list[Path]:
    """The repository's files with these suffixes; hidden folders (.git, .venv) and caches are not
    entered."""
    files = []
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in SKIP_PARTS]
        files += [Path(folder) / n for n in names if Path(n).suffix in suffixes]
    return sorted(p for p in files if p.resolve() != SELF)


def issue_citations(text: str) -> list[tuple[int, str]]:
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
            if ISSUE_CITATION.search(line)]


def test_issue_scanner_catches_citations_and_nothing_else():
    for cited in ("the benchmark (issue 10)", "see Issue #7", "fixed in #12", "issues 10 and 11", "(#3)"):
        assert issue_citations(cited), cited
    for plain in ("# 1. first step", "x = a#1", "&#39;", "docs/page.md#2-setup", "issue a warning", "#12345 px"):
        assert not issue_citations(plain), plain


def test_no_issue_tracker_citations():
    files = repo_files(ISSUE_SUFFIXES)
    names = {p.relative_to(REPO).as_posix() for p in files}
    assert {"README.md", "docs/README.md", "configs/unet/stage2.yaml", "latentsync/audio.py",
            "comfyui_latentsync/nodes.py"} <= names
    found = {p.relative_to(REPO).as_posix(): issue_citations(read(p)) for p in files}
    problems = [f"{name}:{number}: cites an issue number the repository cannot resolve: {line}"
                for name, hits in found.items() for number, line in hits]
    assert not problems, "\n".join(problems)


def test_cited_docs_pages_exist():
    sources = checked_files() + [REPO / "README.md", REPO / "checkpoints" / "README.md"]
    missing = []
    for path in sources:
        if path.is_file():
            for name in DOC_REFERENCE.findall(read(path)):
                if not (DOCS / name).is_file():
                    missing.append(f"{path.relative_to(REPO)} cites docs/{name}, which does not exist")
    assert not missing, "\n".join(missing)
    assert sum(len(DOC_REFERENCE.findall(read(p))) for p in checked_files()) > 20  # comments do cite docs


def test_docs_index_lists_every_page_and_links_resolve():
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    assert {"architecture.md", "checkpoints.md", "pipeline-timing.md", "training.md",
            "data-pipeline.md"} <= set(pages)
    index = read(DOCS / "README.md")
    assert not [p for p in pages if f"]({p})" not in index], "docs/README.md must link every page"
    broken = []
    for page in DOCS.glob("*.md"):
        for target, _anchor in MARKDOWN_LINK.findall(read(page)):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"docs/{page.name} links to {target}")
    assert not broken, "\n".join(broken)
    readme = read(REPO / "README.md")
    assert "docs/README.md" in readme


def test_docs_name_existing_repo_files():
    """Paths such as `latentsync/audio.py` written in the docs exist (checkpoint files are not in git)."""
    path_in_backticks = re.compile(r"`((?:latentsync|scripts|configs|tests)/[A-Za-z0-9_./-]+)`")
    missing = [f"docs/{page.name}: {name}" for page in DOCS.glob("*.md")
               for name in path_in_backticks.findall(read(page)) if not (REPO / name).exists()]
    assert not missing, "\n".join(missing)
