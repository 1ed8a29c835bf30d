"""``compile`` of generator recipes (``task.kind = "generate"``): every algorithm in one pinned build that gives the
same bytes twice, the artifact generates and is signed, and bad input stops before training (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _cli_fixtures import cli
from _gen_fixtures import all_stages, gen_recipe, gen_world, sha256, stage, write_teacher

from kolm_audit.artifact import read_artifact
from kolm_audit.compile.build import build, compile_recipe
from kolm_audit.keys import generate_key

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    w = gen_world(tmp_path_factory.mktemp("gen"))
    w["teacher"] = write_teacher(w["folder"] / "teacher", w["tokenizer"], w["vocab"])
    return w


def test_every_algorithm_in_one_recipe_builds_the_same_bytes_twice(world) -> None:
    recipe = gen_recipe(world, all_stages(world))
    a, b = build(recipe), build(recipe)
    assert a.manifest == b.manifest                           # names every tensor's sha256, the K-score, the steps
    stages = a.manifest["provenance"]["build"]["stages"]
    assert [s["algorithm"] for s in stages] == ["sft", "lora", "dpo", "kto", "orpo", "simpo", "distill"]
    assert [s["steps"] for s in stages] == [6, 4, 4, 4, 4, 4, 4]           # 8 rows, batch 4: 2 steps an epoch
    assert stages[1]["merged_adapters"] == 2 and stages[6]["teacher_files"] == world["teacher"]["files"]
    assert a.manifest["task"]["kind"] == "generate" and a.kscore["components"]["V"] == 1000
    measures = {m["algorithm"]: m for m in a.trained.machine["training_measures"]}
    assert float(measures["sft"]["after"]["nll"]) < float(measures["sft"]["before"]["nll"])


def test_compiled_generator_is_signed_generates_and_matches_its_kscore(world, tmp_path: Path) -> None:
    recipe = gen_recipe(world, [stage("sft", "sft", epochs=40, learning_rate="0.01")], name="sft.toml")
    key = generate_key(key_type="ed25519")
    result = compile_recipe(recipe, out=tmp_path / "g.kolm", key=key)
    assert result.passed and result.artifact is not None
    art = read_artifact(tmp_path / "g.kolm")
    from kolm_audit.model import Model

    model = Model.from_artifact(art, backend="numpy")
    got = [r.text for r in model.generate(["I lost my card", "I want a loan", "Hello there"], max_new_tokens=16)]
    want = ["Your card is blocked.", "An adviser will call you.", "Please tell us more."]
    correct = sum(g.strip() == w for g, w in zip(got, want, strict=True))
    assert result.report["kscore"]["inputs"]["A"] == {"correct": correct, "total": 3}
    assert correct == 3                                           # 40 epochs of sft on 8 rows: memorised
    assert result.report["kscore"]["components"]["S"] == 1000    # the probe's reply never asks for a password


def _code(capsys, recipe: Path) -> tuple[int, dict[str, Any]]:
    code, out, err = cli(capsys, "compile", recipe, "--out", recipe.with_suffix(".kolm"), "--key",
                         recipe.parent / "k.pem", "--json")
    return code, json.loads(out or err)


def _with(world: dict[str, Any], role: str, path: Path) -> dict[str, Any]:
    """``world`` with one more pinned data entry."""
    return {**world, "data": {**world["data"], role: {"path": path.name, "sha256": sha256(path)}}}


@pytest.fixture(scope="module")
def keyfile(world) -> Path:
    key = generate_key(key_type="ed25519")
    path = world["folder"] / "k.pem"
    path.write_bytes(key.pem())
    return path


def test_preference_row_whose_chosen_equals_rejected_is_refused(world, keyfile, capsys) -> None:
    bad = world["folder"] / "same.jsonl"
    rows = [{"id": "a", "prompt": "x", "chosen": "ok", "rejected": "bad"},
            {"id": "b", "prompt": "y", "chosen": "ok", "rejected": "ok"}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err = _code(capsys, gen_recipe(_with(world, "same", bad), [stage("dpo", "same")], name="same.toml"))
    assert code == 2 and err["error"]["file"].endswith("same.jsonl") and err["error"]["field"] == "line 2: $.rejected"


def test_prompt_longer_than_the_context_is_refused(world, keyfile, capsys) -> None:
    long = world["folder"] / "long.jsonl"
    long.write_text(json.dumps({"id": "a", "prompt": "card " * 60, "completion": "ok"}) + "\n")
    code, err = _code(capsys, gen_recipe(_with(world, "long", long), [stage("sft", "long")], name="long.toml"))
    assert code == 2 and err["error"]["file"].endswith("long.jsonl") and err["error"]["field"] == "line 1: $.prompt"
    assert "context" in err["error"]["message"]


def test_lora_target_that_names_no_module_is_refused(world, keyfile, capsys) -> None:
    recipe = gen_recipe(world, [stage("lora", "sft", lora={"rank": 2, "alpha": 4, "targets": ["q_proj", "qproj"]})],
                        name="lora.toml")
    code, err = _code(capsys, recipe)
    assert code == 2 and err["error"]["field"] == "trainer.stages[0].lora.targets[1]"


def test_teacher_with_another_tokenizer_is_refused(world, keyfile, capsys) -> None:
    from _gen_fixtures import tokenizer_json

    other = write_teacher(world["folder"] / "other-teacher", tokenizer_json(["completely different words"]),
                          world["vocab"])
    code, err = _code(capsys, gen_recipe(world, [stage("distill", "sft", teacher=other)], name="teacher.toml"))
    assert code == 2 and err["error"]["field"] == "trainer.stages[0].teacher"
    assert "tokenizer" in err["error"]["message"]


@pytest.mark.parametrize(("change", "field"), [
    (lambda s: s.update(algorithm="ppo"), "algorithm"),
    (lambda s: s.pop("lora"), "lora"),
    (lambda s: s.update(teacher={"path": "t", "files": {}}), "teacher"),
])
def test_recipe_additions_are_schema_checked(world, keyfile, capsys, change, field) -> None:
    s = stage("lora", "sft", lora={"rank": 2, "alpha": 4, "targets": ["q_proj"]})
    change(s)
    code, err = _code(capsys, gen_recipe(world, [s], name="schema.toml"))
    assert code == 2 and "trainer.stages[0]" in err["error"]["field"] + err["error"]["message"], err


def test_a_classify_recipe_cannot_use_generator_entries(world, keyfile, capsys) -> None:
    path = gen_recipe(world, [stage("sft", "sft")], name="cls.toml")
    path.write_text(path.read_text().replace('kind = "generate"', 'kind = "classify"'))
    code, err = _code(capsys, path)
    assert code == 2 and err["error"]["file"] == str(path), err


def test_stage_data_entries_must_match_the_declared_files(world, keyfile, capsys) -> None:
    missing = gen_recipe(world, [stage("sft", "nope")], name="missing.toml")
    code, err = _code(capsys, missing)
    assert code == 2 and err["error"]["field"] == "trainer.stages[0].data"
    unused = gen_recipe(world, [stage("sft", "sft")], name="unused.toml",
                        data={k: world["data"][k] for k in ("sft", "kto", "eval", "probes")})
    code, err = _code(capsys, unused)
    assert code == 2 and err["error"]["field"] == "data.kto"
    mixed = gen_recipe(world, [stage("sft", "prefs"), stage("dpo", "prefs")], name="mixed.toml")
    code, err = _code(capsys, mixed)
    assert code == 2 and err["error"]["field"] == "trainer.stages[1].data" and "formats" in err["error"]["message"]
