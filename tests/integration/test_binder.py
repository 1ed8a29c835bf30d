"""``kolm-audit binder`` end to end on real evidence: a tiny int8 BERT built with transformers, signed, receipts in a
real log, a real replay report → a signed PDF/A-3b binder. Text checked with pdftotext, attachments extracted byte
for byte (and by poppler's pdfdetach), accepted by ``log verify`` and ``replay``, deterministic across processes,
structurally PDF/A, and every tamper caught."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pikepdf
import pytest
from _cli_fixtures import cli as _cli

from kolm_audit.artifact import build_manifest, read_artifact, sign_artifact, write_artifact
from kolm_audit.binder._pdfa import CHECKS, check_pdfa
from kolm_audit.canonical import digest, jcs
from kolm_audit.cli.replay import write_report
from kolm_audit.compile.kscore import Cost, Latency, kscore
from kolm_audit.compile.provenance import provenance_statement, write_provenance
from kolm_audit.errors import BinderError
from kolm_audit.keys import generate_key, write_keypair
from kolm_audit.log.source import export_bundle
from kolm_audit.replay.engine import ReplayOptions, replay
from kolm_audit.schemas import validate
from kolm_audit.trust import write_trust_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _replay_fixtures import bert_checkpoint, changed_weight, make_keys, quantize_signed, record

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils (pdftotext)")


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    return _cli(capsys, *args)


def _render_args(w: dict[str, Any], out: Path, *extra: object) -> list[object]:
    return ["binder", "--report", w["report"], "--artifact", w["art"], "--log", w["log"], "--out", out,
            "--key", w["keys"].dir / "binder.pem", *extra]


def _run(*args: object) -> None:
    from kolm_audit.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    assert exc.value.code == 0, args


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("binder")
    keys = make_keys(tmp / "keys")
    binder_key = generate_key(key_type="ed25519")
    write_keypair(binder_key, keys.dir, name="binder")
    write_trust_file(keys.trust, [
        {"name": "vendor", "public_key": "vendor.pub", "roles": ["artifact"]},
        {"name": "operator", "public_key": "receipt.pub", "roles": ["receipt"], "tenants": ["*"]},
        {"name": "log", "public_key": "log.pub", "roles": ["checkpoint"]},
        {"name": "auditor", "public_key": "binder.pub", "roles": ["binder"]}])
    art = quantize_signed(bert_checkpoint(tmp / "hf"), tmp / "model.kolm", keys.vendor)
    log = record(art, tmp / "receipts.db", keys)
    write_report(replay(log, artifact=art, policy=keys.policy), tmp / "report.json")
    w = {"tmp": tmp, "keys": keys, "art": art, "log": log, "report": tmp / "report.json", "pdf": tmp / "binder.pdf"}
    _run(*_render_args(w, w["pdf"]))
    return w


def _text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout


def _flat(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_render_writes_a_signed_binder_that_verifies(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    pdf, trust = world["pdf"], world["keys"].trust
    assert pdf.read_bytes().startswith(b"%PDF-1.7") and Path(f"{pdf}.sig").is_file()
    code, out, err = cli(capsys, "verify", pdf, "--trust", trust, "--json")
    assert code == 0, out + err
    doc = json.loads(out)
    validate(doc, "binder-verify-report")
    assert doc["verified"] and doc["signers"][0]["role"] == "binder" and doc["pdfa_checks"] == list(CHECKS)
    assert doc["binder_digest"] == digest(pdf.read_bytes())
    code, out, _ = cli(capsys, "binder", "verify", pdf, "--key", world["keys"].dir / "binder.pub")
    assert code == 0 and "verified binder" in out


def test_text_states_the_key_facts(world: dict[str, Any]) -> None:
    text = _text(world["pdf"])
    flat = _flat(text)
    report = json.loads(world["report"].read_text())
    res = report["results"]
    for fact in (res["artifact"]["digest"], report["results_digest"], digest(world["report"].read_bytes()),
                 res["log"]["root_hash"], "example.org/replay-test"):
        assert _flat(fact) in flat, fact
    assert "All 10 replayed decisions matched" in text
    assert "10 replayed · 10 matched · 0 not matching" in text
    assert "Not evaluated: the manifest carries no K-score" in text
    assert "No provenance statement" in text
    for duty in ("EU AI Act Art. 12", "EU AI Act Art. 19", "HIPAA §164.312(b)", "SR 11-7", "not a legal opinion"):
        assert _flat(duty) in flat, duty
    for cmd in ("kolm-audit verify binder.pdf --trust trust.toml",
                "kolm-audit binder extract binder.pdf --out evidence",
                "kolm-audit log verify evidence/log --trust trust.toml", "veraPDF"):
        assert _flat(cmd) in flat, cmd
    assert re.search(r"Page 1 of \d+", text)


def test_attachments_extract_byte_for_byte(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    code, out, _ = cli(capsys, "binder", "extract", world["pdf"], "--out", tmp_path / "ev", "--json")
    assert code == 0
    index = json.loads(out)
    validate(index, "binder-index")
    ev = tmp_path / "ev"
    assert (ev / "report.json").read_bytes() == world["report"].read_bytes()
    art = read_artifact(world["art"])
    assert (ev / "artifact" / "manifest.json").read_bytes() == jcs(art.manifest)
    assert digest((ev / "artifact" / "manifest.json").read_bytes()) == art.digest
    ref = export_bundle(world["log"], tmp_path / "ref")
    for file in sorted(p for p in ref.rglob("*") if p.is_file()):
        assert (ev / "log" / file.relative_to(ref)).read_bytes() == file.read_bytes(), file
    assert json.loads((ev / "index.json").read_text()) == index
    assert {d["name"] for d in index["documents"]} == {str(p.relative_to(ev)) for p in ev.rglob("*")
                                                       if p.is_file() and p.name != "index.json"}
    # an independent reader (poppler) finds the same files with the same bytes
    listing = subprocess.run(["pdfdetach", "-list", str(world["pdf"])], capture_output=True, text=True,
                             check=True).stdout.splitlines()[1:]
    poppler = {}
    for line in listing:
        number, name = line.split(": ", 1)
        subprocess.run(["pdfdetach", "-save", number, "-o", str(tmp_path / "one"), str(world["pdf"])], check=True)
        poppler[name] = digest((tmp_path / "one").read_bytes())
    assert poppler == {d["name"]: d["digest"] for d in index["documents"]}


def test_log_verify_and_replay_accept_what_extract_gives_back(world: dict[str, Any],
                                                              capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    trust, ev = world["keys"].trust, tmp_path / "ev"
    assert cli(capsys, "binder", "extract", world["pdf"], "--out", ev)[0] == 0
    assert cli(capsys, "log", "verify", ev / "log", "--trust", trust)[0] == 0
    code, out, _ = cli(capsys, "replay", ev / "log", "--artifact", world["art"], "--trust", trust, "--json")
    assert code == 0
    embedded = json.loads((ev / "report.json").read_text())
    assert json.loads(out)["results_digest"] == embedded["results_digest"]   # the same results, from the binder


def test_excerpt_binder_is_accepted_too(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    pdf, trust = tmp_path / "binder.pdf", world["keys"].trust
    assert cli(capsys, *_render_args(world, pdf, "--embed-log", "excerpt"))[0] == 0
    assert cli(capsys, "verify", pdf, "--trust", trust)[0] == 0
    assert cli(capsys, "binder", "extract", pdf, "--out", tmp_path / "ev")[0] == 0
    assert json.loads((tmp_path / "ev" / "log" / "manifest.json").read_text())["excerpt"] is True
    code, out, _ = cli(capsys, "log", "verify", tmp_path / "ev" / "log", "--trust", trust)
    assert code == 0 and "excerpt: 10 of 10 leaves present" in out
    code, out, _ = cli(capsys, "replay", tmp_path / "ev" / "log", "--artifact", world["art"], "--trust", trust,
                       "--json")
    assert code == 0 and json.loads(out)["results"]["counts"]["matched"] == 10


_RENDER = """
import sys
from kolm_audit.binder.render import render_binder
from kolm_audit.keys import load_private_key
render_binder(report=sys.argv[1], artifact=sys.argv[2], log=sys.argv[3], out=sys.argv[4],
              key=load_private_key(sys.argv[5]))
"""


def test_byte_deterministic_across_processes(world: dict[str, Any], tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        out = tmp_path / name / "binder.pdf"
        subprocess.run([sys.executable, "-c", _RENDER, str(world["report"]), str(world["art"]), str(world["log"]),
                        str(out), str(world["keys"].dir / "binder.pem")], check=True, capture_output=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "TZ": f"Etc/GMT-{len(name)}"})
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == world["pdf"].read_bytes()
    assert (tmp_path / "a" / "binder.pdf.sig").read_bytes() == Path(f"{world['pdf']}.sig").read_bytes()   # Ed25519


def test_pdfa_structure(world: dict[str, Any], tmp_path: Path) -> None:
    assert check_pdfa(world["pdf"]) == CHECKS
    fonts = subprocess.run(["pdffonts", str(world["pdf"])], capture_output=True, text=True, check=True).stdout
    rows = fonts.splitlines()[2:]
    assert rows and all(" yes yes yes " in r for r in rows) and all("Kolm" in r for r in rows)
    with pikepdf.open(world["pdf"]) as pdf:
        with pdf.open_outline() as outline:
            titles = [item.title for item in outline.root]
        assert "1. Artifact identity and provenance" in titles and "6. How to verify this binder yourself" in titles
        info = pdf.docinfo
        assert str(info.Title) == "Audit binder: tiny 1" and "replay" in str(info.Keywords)
        assert str(info.Subject).startswith("Replay of 10 recorded decisions")
        assert len(pdf.Root.AF) == len(pdf.attachments) == 7
        assert {str(s.obj.AFRelationship) for s in pdf.attachments.values()} == {"/Source", "/Data"}
        pdf.Root.OpenAction = pikepdf.Dictionary(S=pikepdf.Name.JavaScript, JS=pikepdf.String("app.alert(1)"))
        pdf.save(tmp_path / "js.pdf")
    with pytest.raises(BinderError, match="JavaScript"):
        check_pdfa(tmp_path / "js.pdf")
    with pikepdf.open(world["pdf"]) as pdf:
        with pdf.open_metadata(set_pikepdf_as_editor=False) as meta:
            meta["pdfaid:part"] = "2"
        pdf.save(tmp_path / "a2.pdf")
    with pytest.raises(BinderError, match="part '2'"):
        check_pdfa(tmp_path / "a2.pdf")


def _copy(world: dict[str, Any], tmp_path: Path) -> Path:
    pdf = tmp_path / "binder.pdf"
    shutil.copyfile(world["pdf"], pdf)
    shutil.copyfile(f"{world['pdf']}.sig", f"{pdf}.sig")
    return pdf


def test_tampered_pdf_byte_is_a_finding(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    pdf = _copy(world, tmp_path)
    original = pdf.read_bytes()
    for at in (300, len(original) // 3, len(original) // 2, len(original) - 60):   # pages, fonts, files, trailer
        data = bytearray(original)
        data[at] ^= 0x01
        pdf.write_bytes(bytes(data))
        code, _, err = cli(capsys, "verify", pdf, "--trust", world["keys"].trust)
        assert code == 1 and "Traceback" not in err, (at, err)


def test_tampered_attachment_is_named(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    pdf = _copy(world, tmp_path)
    with pikepdf.open(pdf, allow_overwriting_input=True) as doc:
        stream = doc.attachments["report.json"].obj.EF.F
        stream.write(stream.read_bytes().replace(b'"matched"', b'"mismatch"', 1))
        doc.save(pdf)
    code, out, err = cli(capsys, "verify", pdf, "--trust", world["keys"].trust, "--json")
    assert code == 1 and "report.json" in err
    assert json.loads(out)["verified"] is False


def test_tampered_or_missing_or_untrusted_signature_is_a_finding(world: dict[str, Any],
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    pdf = _copy(world, tmp_path)
    sig = Path(f"{pdf}.sig")
    env = json.loads(sig.read_text())
    s = env["signatures"][0]["sig"]
    env["signatures"][0]["sig"] = ("A" if s[0] != "A" else "B") + s[1:]
    sig.write_bytes(jcs(env))
    assert cli(capsys, "verify", pdf, "--trust", world["keys"].trust)[0] == 1
    sig.unlink()
    code, _, err = cli(capsys, "verify", pdf, "--trust", world["keys"].trust)
    assert code == 1 and "not signed" in err
    shutil.copyfile(f"{world['pdf']}.sig", sig)
    code, _, err = cli(capsys, "verify", pdf, "--key", world["keys"].dir / "vendor.pub")
    assert code == 1 and "trusted for role 'binder'" in err


def test_inputs_that_do_not_belong_together_are_refused(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    other = quantize_signed(bert_checkpoint(tmp_path / "hf", seed=5), tmp_path / "other.kolm", world["keys"].vendor)
    args = _render_args(world, tmp_path / "b.pdf")
    code, _, err = cli(capsys, *[other if a == world["art"] else a for a in args])
    assert code == 2 and "not the one the report replayed" in err
    edited = json.loads(world["report"].read_text())
    edited["results"]["counts"]["matched"] = 9
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    code, _, err = cli(capsys, *[tmp_path / "edited.json" if a == world["report"] else a for a in args])
    assert code == 1 and "results_digest" in err
    assert not (tmp_path / "b.pdf").exists()


def test_usage_errors_exit_2(world: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli(capsys, "binder", "--report", world["report"])[0] == 2
    assert cli(capsys, "binder", "--report", world["report"], "extract", world["pdf"], "--out", tmp_path / "x")[0] == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert cli(capsys, "binder", "extract", world["pdf"], "--out", tmp_path / "full")[0] == 2
    assert cli(capsys, "verify", world["pdf"], "--trust", world["keys"].trust, "--tenant", "acme")[0] == 2


def test_extract_refuses_unsafe_names(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    pdf = tmp_path / "evil.pdf"
    with pikepdf.open(world["pdf"]) as doc:
        doc.attachments["../evil.json"] = pikepdf.AttachedFileSpec(doc, b"{}", filename="../evil.json")
        doc.save(pdf)
    code, _, err = cli(capsys, "binder", "extract", pdf, "--out", tmp_path / "ev")
    assert code == 1 and "safe relative path" in err
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "ev").exists()


# K = (400·880 + 150·(1000 + 900 + 800 + 1000)) / 1000 = 907, computed by the compile stage's own function
KSCORE = kscore(accuracy=(176, 200), probes=(40, 40),
                latency=Latency(p95_tokens=40, macs=10**9, macs_per_second=10**11, budget_us=9000),
                cost=Cost(total_macs=10**11, decisions=100, price_per_tera_macs=50, price_unit="micro-EUR",
                          budget_per_1000=40),
                verify=(200, 200), backends=("numpy", "cpu"), batch_sizes=(1, 32), min_k=800,
                min_components={"A": 800, "V": 1000})


def test_kscore_and_provenance_are_rendered_and_embedded(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    keys = world["keys"]
    src = read_artifact(world["art"])
    m = src.manifest
    manifest = build_manifest(name=m["name"], version=m["version"], task=m["task"], architecture=m["architecture"],
                              quantization=m["quantization"], tensors=src.tensors, provenance=m["provenance"],
                              created=m["created"], kscore=KSCORE)
    art = tmp_path / "scored.kolm"
    write_artifact(art, manifest=manifest, tensors=src.tensors)
    digest_ = sign_artifact(art, keys.vendor).artifact.digest
    stmt = provenance_statement(
        name=art.name, artifact_digest=digest_, recipe_file="recipe.toml", recipe={"name": "scored"},
        recipe_digest="sha256:" + "cd" * 32, dependencies={"data/train.jsonl": "sha256:" + "ef" * 32},
        parameters={"trainer": "exact"}, builder={"kolm_audit": "0"}, started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:01:00Z", byproducts=[{"name": "build-machine",
                                                      "annotations": {"cpu_model": "ci-7 builder"}}])
    prov = Path(f"{art}.provenance.json")
    write_provenance(prov, stmt, keys.vendor)
    log = record(art, tmp_path / "r.db", keys, texts=["hello", "red car", "audit the model file"])
    write_report(replay(log, artifact=art, policy=keys.policy), tmp_path / "report.json")
    w = {**world, "report": tmp_path / "report.json", "art": art, "log": log}
    pdf = tmp_path / "binder.pdf"
    assert cli(capsys, *_render_args(w, pdf))[0] == 0
    text = _text(pdf)
    flat = _flat(text)
    assert _flat("K = 907 of 1000") in flat and _flat("recomputed from the components and weights: 907") in flat
    assert _flat("Gate: passed, minimum K 800") in flat and "88.0 %" in text and "Verifiability" in text
    assert "ci-7 builder" in text and "No provenance statement" not in text
    assert cli(capsys, "binder", "extract", pdf, "--out", tmp_path / "ev")[0] == 0
    assert (tmp_path / "ev" / "artifact" / "provenance.json").read_bytes() == prov.read_bytes()
    assert cli(capsys, "verify", pdf, "--trust", keys.trust)[0] == 0


def test_mismatches_are_rendered_with_their_diff(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    keys = world["keys"]
    changed, _, _ = changed_weight(world["art"], tmp_path / "changed.kolm", keys.vendor)
    report = replay(world["log"], artifact=changed, policy=keys.policy,
                    options=ReplayOptions(replay_mismatched=True))
    assert report["results"]["verdict"] == "mismatch"
    write_report(report, tmp_path / "report.json")
    pdf = tmp_path / "binder.pdf"
    w = {**world, "report": tmp_path / "report.json", "art": changed}
    assert cli(capsys, *_render_args(w, pdf))[0] == 0
    text = _text(pdf)
    n = report["results"]["counts"]["mismatched"]
    assert f"{n} of 10 decisions do not match" in text
    assert "artifact-mismatch" in text and "Every mismatch" in text
    mismatch = [f for f in report["results"]["findings"] if f["reason"] == "output-mismatch"]
    if mismatch:
        assert "recorded:" in text and "replayed:" in text
    assert cli(capsys, "verify", pdf, "--trust", keys.trust)[0] == 0
