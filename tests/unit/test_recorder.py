"""Recorder: a real int8 tiny BERT (built with transformers from a config), a real SQLite log, real keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from _artifact_fixtures import sample_kscore, tiny_hf_bert, tiny_hf_llama

from kolm_audit.artifact.manifest import gate_failed
from kolm_audit.errors import GateFailed, InputError, KeyFileError, RuntimeInputError
from kolm_audit.keys import PrivateKey, generate_key
from kolm_audit.log import ReceiptLog, verify_log
from kolm_audit.receipts.document import Decoding, input_ids_of, make_leaf_verifier, parse_leaf, reveal
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore
from kolm_audit.receipts.recorder import Recorder, Request
from kolm_audit.runtime.digests import input_digest
from kolm_audit.trust import TrustPolicy

pytest.importorskip("transformers")


def _artifact(tmp: Path, key: PrivateKey, *, classify: bool, kscore: dict | None = None) -> Path:
    from kolm_audit.artifact import sign_artifact, write_artifact
    from kolm_audit.compile.hf import import_checkpoint

    hf = tiny_hf_bert(tmp / ("hf-cls" if classify else "hf-emb"), classify=classify)
    manifest, tensors = import_checkpoint(hf, scheme="int8", name="tiny", version="1",
                                          created="2026-01-01T00:00:00Z")
    if kscore is not None:
        manifest["kscore"] = kscore
    path = tmp / ("cls.kolm" if classify else "emb.kolm")
    write_artifact(path, manifest=manifest, tensors=tensors)
    sign_artifact(path, key)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import kolm_audit.model as kmodel

    tmp = tmp_path_factory.mktemp("recorder")
    key = generate_key(key_type="ed25519")
    policy = TrustPolicy.from_public_key(key.public_key())
    models = {name: kmodel.load(_artifact(tmp, key, classify=name == "classify"), trust=None, key=None,
                                require_signature=False)
              for name in ("classify", "embed")}
    from kolm_audit.artifact import write_artifact
    from kolm_audit.compile.hf import import_checkpoint

    manifest, tensors = import_checkpoint(tiny_hf_llama(tmp / "hf-llama"), scheme="int8", name="llm", version="1",
                                          created="2026-01-01T00:00:00Z")
    write_artifact(tmp / "llm.kolm", manifest=manifest, tensors=tensors)
    models["generate"] = kmodel.load(tmp / "llm.kolm", require_signature=False)
    return key, policy, models


def test_record_classify_one_transaction_per_batch(tmp_path, setup):
    key, policy, models = setup
    model = models["classify"]
    with ReceiptLog.open(tmp_path / "r.db", create=True) as log, \
            Recorder(model, log, key, tenant="acme", operator="svc", checkpoint_key=key) as rec:
        done = rec.record_classify(["hello world", "good morning"], request_ids=["a", "b"], caller="alice")
        more = rec.record([Request(ids=(101, 7592, 102)), Request(text="x", id="c")])
        assert [d.log_index for d in done + more] == [0, 1, 2, 3]
        assert log.size() == 4
    expected = model.classify([*model.tokenize(["hello world", "good morning"]), [101, 7592, 102],
                               *model.tokenize(["x"])])
    for recorded, exp in zip(done + more, expected, strict=True):
        assert recorded.result.output_digest == exp.output_digest
    report = verify_log(tmp_path / "r.db", policy=policy, verify_leaf=make_leaf_verifier(policy))
    assert report.size == 4  # a final checkpoint was signed on close
    with ReceiptLog.open(tmp_path / "r.db") as log:
        receipts = [parse_leaf(log.leaf(i)).receipt for i in range(4)]
    first = receipts[0]
    assert first["artifact"]["digest"] == model.digest and first["runtime"]["backend"] == model.backend
    assert first["request"]["id"] == "a" and first["operator"] == {"name": "svc", "caller": "alice"}
    assert first["request"]["text"] == "hello world"
    assert first["request"]["input_ids"] == list(done[0].result.input_ids)
    assert first["request"]["input_digest"] == input_digest(done[0].result.input_ids) == done[0].result.input_digest
    assert first["response"] == {"label": done[0].result.label, "scores": list(done[0].result.scores),
                                 "output_digest": done[0].result.output_digest}
    assert receipts[2]["request"]["text"] is None and receipts[2]["request"]["text_digest"] is None
    assert {r["receipt_id"] for r in receipts} == {d.receipt_id for d in done + more}


def test_record_embed_encrypted_and_shredded(tmp_path, setup):
    key, policy, models = setup
    kek = KeyEncryptionKey.generate()
    store = KeyStore.empty().with_tenant("globex", mode="encrypt-all", kek=kek)
    crypto = store.tenant("globex", kek=kek)
    with ReceiptLog.open(tmp_path / "r.db", create=True) as log:
        rec = Recorder(models["embed"], log, key, tenant="globex", operator="svc", privacy=crypto,
                       checkpoint_key=key)
        done = rec.record_embed(["private text"])
        rec.close()
        signed = parse_leaf(log.leaf(0))
    receipt = signed.receipt
    assert receipt["response"]["embedding_digest"] == done[0].result.output_digest
    assert receipt["response"]["dim"] == 32
    assert b"private" not in signed.envelope.payload
    assert isinstance(receipt["request"]["input_ids"], dict)  # sealed: encrypt-all
    assert reveal(receipt, crypto)["request"]["text"] == "private text"
    assert input_ids_of(receipt, crypto) == done[0].result.input_ids
    shredded = store.shred("globex").tenant("globex", kek=kek)
    assert verify_log(tmp_path / "r.db", policy=policy, verify_leaf=make_leaf_verifier(policy)).size == 1
    with pytest.raises(KeyFileError, match="shredded"):
        reveal(receipt, shredded)


def test_checkpoint_every_n(tmp_path, setup):
    key, _, models = setup
    with ReceiptLog.open(tmp_path / "r.db", create=True) as log:
        rec = Recorder(models["classify"], log, key, tenant="t", operator="o", checkpoint_key=key,
                       checkpoint_every=2)
        for text in ("a", "b", "c"):
            rec.record_classify([text])
        assert [n.split("\n")[1] for n in log.checkpoints()] == ["2"]
        rec.close()
        assert [n.split("\n")[1] for n in log.checkpoints()] == ["2", "3"]
        rec.close()  # nothing new: no second checkpoint of the same size
        assert len(log.checkpoints()) == 2


def test_refusals(tmp_path, setup):
    key, _, models = setup
    with ReceiptLog.open(tmp_path / "r.db", create=True) as log:
        rec = Recorder(models["classify"], log, key, tenant="t", operator="o")
        with pytest.raises(InputError, match="does classify, not embed"):
            rec.record_embed(["x"])
        with pytest.raises(RuntimeInputError):
            rec.record_classify([[101, 10**8, 102]])
        with pytest.raises(InputError, match="either text or ids"):
            Request()
        assert log.size() == 0  # nothing half-written
        with pytest.raises(InputError, match="Ed25519"):
            Recorder(models["classify"], log, key, tenant="t", operator="o",
                     checkpoint_key=generate_key(key_type="ecdsa-p256"))


@pytest.mark.parametrize(("kscore", "failed"), [
    (None, False), (sample_kscore(passed=True), False), (sample_kscore(passed=False), True),
])
def test_gate_failed(kscore, failed):
    assert gate_failed(kscore) is failed


def test_gate_failed_artifact_refused(tmp_path):
    import kolm_audit.model as kmodel

    key = generate_key(key_type="ed25519")
    path = _artifact(tmp_path, key, classify=True, kscore=sample_kscore(passed=False))
    model = kmodel.load(path, key=None, trust=None, require_signature=False)
    with ReceiptLog.open(tmp_path / "r.db", create=True) as log:
        with pytest.raises(GateFailed, match="gate"):
            Recorder(model, log, key, tenant="t", operator="o")
        assert log.size() == 0


def test_record_generate_groups_decoding_and_replays_from_the_receipt(tmp_path, setup):
    key, policy, models = setup
    model = models["generate"]
    requests = [Request(text="w5 w6 w7", id="g0"),
                Request(ids=(9, 10), decoding=Decoding(max_new_tokens=3, seed=11, temperature=900, top_k=20)),
                Request(text="w5 w6 w7", decoding=Decoding(max_new_tokens=4)),
                Request(text="w40", decoding=Decoding(max_new_tokens=3, seed=11, temperature=900, top_k=20))]
    with ReceiptLog.open(tmp_path / "r.db", create=True) as log, \
            Recorder(model, log, key, tenant="acme", operator="svc", checkpoint_key=key) as rec:
        done = rec.record(requests)
        greedy = rec.record_generate(["w5 w6 w7"], max_new_tokens=4)
        receipts = [parse_leaf(log.leaf(i)).receipt for i in range(log.size())]
    assert [d.log_index for d in done] == [0, 1, 2, 3] and done[0].request.id == "g0"
    assert done[2].result.output_digest == greedy[0].result.output_digest  # same request, same bytes
    assert done[1].result.output_digest != done[3].result.output_digest
    assert receipts[1]["decoding"] == {"strategy": "sample", "max_new_tokens": 3, "temperature": 900, "top_k": 20,
                                       "top_p": None, "seed": 11}
    assert receipts[0]["decoding"]["strategy"] == "greedy" and receipts[0]["decoding"]["max_new_tokens"] == 32
    for receipt in receipts:  # replay from nothing but the receipt: same output bytes
        params = {k: v for k, v in receipt["decoding"].items() if k != "strategy"}
        [again] = model.generate([list(input_ids_of(receipt))], **params)
        assert again.output_digest == receipt["response"]["output_digest"]
        assert list(again.output_ids) == receipt["response"]["output_ids"]
        assert receipt["response"]["text"] == again.text
    assert verify_log(tmp_path / "r.db", policy=policy, verify_leaf=make_leaf_verifier(policy)).size == 5


def test_prepared_batches_of_two_tenants_append_in_one_transaction(tmp_path, setup):
    from kolm_audit.receipts.recorder import append_prepared

    key, policy, models = setup
    model = models["classify"]
    calls = []

    class Counting(ReceiptLog):
        def append_many(self, builders):
            calls.append(len(builders))
            return super().append_many(builders)

    with Counting.open(tmp_path / "r.db", create=True) as log:
        acme = Recorder(model, log, key, tenant="acme", operator="svc")
        globex = Recorder(model, log, key, tenant="globex", operator="svc")
        first = acme.prepare([Request(text="hello world", id="a1"), Request(ids=(101, 102))])
        second = globex.prepare([Request(text="good morning")])
        assert log.size() == 0                                   # prepared: nothing appended yet
        done = append_prepared(log, [first, second])
        assert calls == [3] and [[r.log_index for r in d] for d in done] == [[0, 1], [2]]
        assert [parse_leaf(log.leaf(i)).receipt["tenant"] for i in range(3)] == ["acme", "acme", "globex"]
        assert all(r.leaf == log.leaf(r.log_index) for d in done for r in d)
        assert (acme.recorded, globex.recorded) == (2, 1)
        with ReceiptLog.open(tmp_path / "other.db", create=True) as other:
            stray = Recorder(model, other, key, tenant="acme", operator="svc").prepare([Request(text="x")])
            with pytest.raises(InputError, match="another log"):
                append_prepared(log, [stray])
        assert log.size() == 3
        log.checkpoint(key)
    assert verify_log(tmp_path / "r.db", policy=policy, verify_leaf=make_leaf_verifier(policy)).size == 3


def test_check_inputs_names_the_refused_input_without_running(setup):
    _, _, models = setup
    model = models["classify"]
    assert model.check_inputs(["hello"]) == model.tokenize(["hello"])
    with pytest.raises(RuntimeInputError, match="longer") as exc:
        model.check_inputs(["word " * 100])
    assert exc.value.field == "inputs[0]"
    with pytest.raises(RuntimeInputError) as exc:
        model.check_inputs([[101, 10**7]])
    assert exc.value.field == "inputs[0][1]"
