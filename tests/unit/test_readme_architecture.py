"""README.md's Architecture section names only modules that exist, and lists every module of predictor/."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "predictor"


def architecture_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Architecture\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def named_paths(section: str) -> set[str]:
    return set(re.findall(r"`([\w/*.<>-]+\.py|[\w]+/)`", section))


def matches(name: str) -> list[Path]:
    if name == "tasks/<mode>.py":
        name = "tasks/*.py"
    if name.endswith("/"):  # a folder: predictor/, predictor/serving/, bench/
        folder = REPO / name if name.startswith("predictor") else PACKAGE / name
        return [folder] if folder.is_dir() else []
    name = name.removeprefix("predictor/")
    found: list[Path] = []
    for root in (PACKAGE, PACKAGE / "serving", PACKAGE / "tasks"):
        found += [p for p in root.glob(name) if p.exists()]
    return found


def test_every_module_the_section_names_exists() -> None:
    missing = sorted(name for name in named_paths(architecture_section()) if not matches(name))
    assert missing == [], f"README.md's Architecture section names modules that do not exist: {missing}"


def test_every_module_of_the_package_is_on_the_map() -> None:
    section = architecture_section()
    covered = {p.resolve() for name in named_paths(section) for p in matches(name)}
    covered |= {p.resolve() for p in (PACKAGE / "tasks").glob("*.py")}  # "one module per handler.mode"
    covered |= {p.resolve() for p in (PACKAGE / "bench").glob("*.py")}
    unlisted = sorted(str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
                      if p.resolve() not in covered and p.name not in ("__init__.py", "__main__.py")
                      and "ts_proto" not in p.parts)
    assert unlisted == [], f"modules missing from README.md's Architecture section: {unlisted}"
