"""``kolm-audit compile`` refuses bad recipes and data before any work: exit 2, file/line/field named, nothing
written."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from _cli_fixtures import cli
from _compile_fixtures import generator, sha256, small_recipe, to_toml

from kolm_audit.compile.data import load_data
from kolm_audit.compile.recipe import load_recipe
from kolm_audit.keys import generate_key, write_keypair


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small valid recipe folder (copied per test) and an artifact key."""
    folder = tmp_path_factory.mktemp("recipe")
    small_recipe(folder, train=30, eval_=10, probes=3)
    priv, _ = write_keypair(generate_key(key_type="ed25519"), tmp_path_factory.mktemp("keys"), name="artifact")
    return folder, priv


@pytest.fixture
def recipe(base: tuple[Path, Path], tmp_path: Path) -> Path:
    for f in base[0].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path / "recipe.toml"


def _edit(recipe: Path, change: object) -> None:
    doc = tomllib.loads(recipe.read_text())
    change(doc)                                              # type: ignore[operator]
    recipe.write_text(to_toml(doc))


def _repin(recipe: Path, role: str) -> None:
    _edit(recipe, lambda d: d["data"][role].update(sha256=sha256(recipe.parent / f"{role}.jsonl")))


def _compile(capsys: pytest.CaptureFixture[str], recipe: Path, key: Path) -> tuple[int, str]:
    out = recipe.parent / "model.kolm"
    code, _, err = cli(capsys, "compile", recipe, "--out", out, "--key", key)
    assert "Traceback" not in err
    assert not out.exists() and not (recipe.parent / "model.kolm.provenance.json").exists()   # nothing written
    return code, err


def _rewrite_line(path: Path, line: int, change: object) -> None:
    rows = path.read_text().splitlines()
    doc = json.loads(rows[line - 1])
    change(doc)                                              # type: ignore[operator]
    rows[line - 1] = json.dumps(doc)
    path.write_text("\n".join(rows) + "\n")


def test_a_data_file_that_does_not_match_its_pin(capsys, recipe, base) -> None:
    with (recipe.parent / "train.jsonl").open("a") as fh:
        fh.write('{"id": "extra", "label": "complaint", "text": "one more line"}\n')
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2
    assert "train.jsonl" in err and "data.train.sha256" in err and "does not match the digest pinned" in err


def test_a_base_file_that_does_not_match_its_pin(capsys, recipe, base) -> None:
    _edit(recipe, lambda d: d["base"]["files"].update({"config.json": "sha256:" + "0" * 64}))
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and "config.json" in err and "base.files.config.json" in err


def test_a_base_file_read_but_not_pinned(capsys, recipe, base) -> None:
    _edit(recipe, lambda d: d["base"]["files"].pop("tokenizer.json"))
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and "does not pin" in err and "tokenizer.json" in err


@pytest.mark.parametrize(("change", "field", "words"), [
    (lambda d: d["trainer"].pop("epochs"), "$.trainer", "missing required field(s) 'epochs'"),
    (lambda d: d.pop("created"), "$", "missing required field(s) 'created'"),
    (lambda d: d["trainer"].update(dropout="0.1"), "$.trainer", "unknown field(s) 'dropout'"),
    (lambda d: d.update(extra=1), "$", "unknown field(s) 'extra'"),
    (lambda d: d["trainer"].update(kind="adam"), "$.trainer.kind", "'adam' is not one of"),
    (lambda d: d["task"].update(labels=["a", "a"]), "$.task.labels", "non-unique"),
    (lambda d: d["data"]["train"].update(sha256="md5:1"), "$.data.train.sha256", "does not match"),
    (lambda d: d["kscore"]["gate"].update(min_components={"V": 990}), "kscore.gate.min_components.V", "always fails"),
])
def test_a_malformed_recipe(capsys, recipe, base, change, field, words) -> None:
    _edit(recipe, change)
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and field in err and words in err and "recipe.toml" in err


def test_toml_floats_and_dates_are_refused(capsys, recipe, base) -> None:
    text = recipe.read_text()
    recipe.write_text(text.replace('learning_rate = "2"', "learning_rate = 2.0"))
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and "$.trainer.learning_rate" in err and "floats are not allowed" in err and '"0.05"' in err
    recipe.write_text(text.replace('created = "2026-01-01T00:00:00Z"', "created = 2026-01-01T00:00:00Z"))
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and "$.created" in err and "TOML dates" in err
    recipe.write_text(text.replace("[trainer]", "[trainer\n"))
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and "not valid TOML" in err and "line" in err


@pytest.mark.parametrize(("line", "change", "words"), [
    (3, lambda d: d.pop("label"), "line 3: $: does not match schema classify-example: missing required field(s) 'label'"),
    (4, lambda d: d.update(label="mortgage"), "line 4: $.label: label not declared"),
    (5, lambda d: d.update(id="train-00000"), "line 5: $.id: duplicate id"),
    (2, lambda d: d.update(text="loan " * 600), "line 2: $.text: text is longer than the base model can read"),
    (6, lambda d: d.update(note="x"), "line 6: $: does not match schema classify-example: unknown field(s) 'note'; allowed: id, label, text"),
])
def test_a_bad_data_line_is_named_by_file_and_line(capsys, recipe, base, line, change, words) -> None:
    _rewrite_line(recipe.parent / "train.jsonl", line, change)
    _repin(recipe, "train")
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and "train.jsonl" in err and words in err


def test_a_line_that_is_not_json(capsys, recipe, base) -> None:
    path = recipe.parent / "eval.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    _repin(recipe, "eval")
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and "eval.jsonl: line 11: not a JSON object" in err


def test_an_eval_label_never_seen_in_train(capsys, recipe, base) -> None:
    train = recipe.parent / "train.jsonl"
    rows = [json.loads(r) for r in train.read_text().splitlines()]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows if r["label"] != "fraud_report"))
    _repin(recipe, "train")
    evals = [json.loads(r) for r in (recipe.parent / "eval.jsonl").read_text().splitlines()]
    line = next(i for i, r in enumerate(evals, start=1) if r["label"] == "fraud_report")
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and "eval.jsonl" in err and f"line {line}: $.label" in err and "never occurs in train" in err


def test_a_declared_label_missing_from_train_and_eval(capsys, recipe, base) -> None:
    _edit(recipe, lambda d: d["task"].update(labels=[*d["task"]["labels"], "closure"]))
    code, err = _compile(capsys, recipe, base[1])
    assert code == 2 and "task.labels" in err and "'closure'" in err


def test_eval_overlapping_train_is_a_counted_warning(recipe) -> None:
    train = [json.loads(r) for r in (recipe.parent / "train.jsonl").read_text().splitlines()]
    path = recipe.parent / "eval.jsonl"
    rows = [json.loads(r) for r in path.read_text().splitlines()]
    rows[0]["text"] = train[0]["text"].upper()                # the same text, shouted
    rows[1]["text"] = "  " + train[1]["text"].replace(" ", "   ")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _repin(recipe, "eval")
    data = load_data(load_recipe(recipe))
    assert data.eval_overlap == 2 and "2 of 10 eval texts also occur in train" in data.warnings[0]


def test_the_shipped_example_data_is_what_its_generator_writes(tmp_path: Path) -> None:
    from kolm_audit.examples import example_dir

    gen = generator()
    digests = gen.write(tmp_path, gen.generate())
    recipe = load_recipe(example_dir("loan-triage") / "recipe.toml")
    assert {role: f.sha256 for role, f in recipe.data.items()} == digests
    assert load_data(recipe).eval_overlap == 0
