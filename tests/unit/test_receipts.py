"""RS-1 receipts: build, sign, strict parse, trust (role/tenant/time), tamper detection, privacy modes."""

from __future__ import annotations

import base64
import json
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolm_audit.canonical import digest, digest_of, jcs
from kolm_audit.errors import InputError, KeyFileError, KolmError, LogError, SchemaError, SignatureError, TrustError
from kolm_audit.keys import PrivateKey, generate_key
from kolm_audit.receipts.document import (
    RECEIPT_PAYLOAD_TYPE,
    Decision,
    Decoding,
    ReceiptContext,
    input_digest,
    input_ids_of,
    make_leaf_verifier,
    parse_leaf,
    receipt_builder,
    reveal,
    sign_receipt,
    verify_receipt,
)
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore, TenantCrypto
from kolm_audit.schemas import validate
from kolm_audit.signing import sign_envelope
from kolm_audit.trust import TrustedKey, TrustPolicy

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(milliseconds=250)
OUT = digest(b"output")

KEY = generate_key(key_type="ed25519")
KEY_EC = generate_key(key_type="ecdsa-p256")


def _decision(task: str = "generate") -> Decision:
    # output digests as the runtime spec (§8) defines them
    if task == "embed":
        return Decision(task="embed", input_ids=(101, 7592, 102), input_text="hello", output_digest=OUT,
                        embedding_digest=OUT, dim=384, request_id="q-1")
    if task == "classify":
        return Decision(task="classify", input_ids=(101, 7592, 102), input_text="hello",
                        output_digest=digest_of({"label": "positive", "scores": [-1200, 3400]}),
                        label="positive", scores=(-1200, 3400), caller="alice")
    return Decision(task="generate", input_ids=(1, 15043, 29892), input_text="Hello,",
                    output_digest=digest_of({"finish_reason": "eos", "output_ids": [3186, 29991, 2]}),
                    output_ids=(3186, 29991, 2), output_text=" world!", finish_reason="eos",
                    decoding=Decoding(max_new_tokens=8, temperature=700, top_k=40, top_p=900, seed=7))


def _ctx(key: PrivateKey = KEY, *, tenant: str = "acme", crypto: TenantCrypto | None = None) -> ReceiptContext:
    return ReceiptContext(tenant=tenant, operator="svc-1", artifact_digest=digest(b"manifest"),
                          artifact_name="demo", artifact_version="1.0.0",
                          kscore={"score": 912, "gate": {"min": 800, "passed": True}}, backend="numpy",
                          key=key, crypto=crypto)


def _leaf(task: str = "generate", index: int = 0, **ctx_args: object) -> bytes:
    return receipt_builder(_ctx(**ctx_args), _decision(task), start=T0, end=T1)(index)  # type: ignore[arg-type]


def _policy(key: PrivateKey = KEY, **kwargs: object) -> TrustPolicy:
    args: dict[str, object] = {"name": "receipts", "public_key": key.public_key(), "roles": frozenset({"receipt"})}
    args.update(kwargs)
    return TrustPolicy(keys=(TrustedKey(**args),))  # type: ignore[arg-type]


def _resign(leaf: bytes, edit, key: PrivateKey = KEY) -> bytes:
    """Re-sign an edited receipt with a trusted key (a signer that misbehaves, not a tamperer)."""
    receipt = parse_leaf(leaf).receipt
    edit(receipt)
    return sign_envelope(jcs(receipt), payload_type=RECEIPT_PAYLOAD_TYPE, key=key).canonical_bytes()


@pytest.mark.parametrize("task", ["embed", "classify", "generate"])
@pytest.mark.parametrize("key", [KEY, KEY_EC], ids=["ed25519", "ecdsa"])
def test_round_trip(task, key):
    leaf = _leaf(task, index=5, key=key)
    signed = parse_leaf(leaf)
    receipt = signed.receipt
    validate(receipt, "receipt")
    assert leaf == signed.envelope.canonical_bytes() and jcs(receipt) == signed.envelope.payload
    assert receipt["log_index"] == 5 and receipt["tenant"] == "acme" and receipt["task"] == task
    assert receipt["period"] == {"start": "2026-03-01T12:00:00Z", "end": "2026-03-01T12:00:00.250000Z"}
    assert receipt["request"]["input_digest"] == input_digest(receipt["request"]["input_ids"])
    assert receipt["runtime"]["spec"] == "kolm-int/1"
    assert receipt["artifact"]["kscore"]["gate"]["passed"] is True
    signer = verify_receipt(leaf, _policy(key, tenants=frozenset({"acme"})), expected_index=5)
    assert (signer.role, signer.tenant, signer.key_id) == ("receipt", "acme", key.key_id)
    if task == "generate":
        assert receipt["decoding"] == {"strategy": "sample", "max_new_tokens": 8, "temperature": 700, "top_k": 40,
                                       "top_p": 900, "seed": 7}
        assert receipt["response"]["output_ids"] == [3186, 29991, 2]
    else:
        assert receipt["decoding"] is None


def test_receipt_ids_are_unique_and_recorded():
    build = receipt_builder(_ctx(), _decision(), start=T0, end=T1)
    assert parse_leaf(build(0)).receipt["receipt_id"] != parse_leaf(build(0)).receipt["receipt_id"]
    fixed = receipt_builder(_ctx(), _decision(), start=T0, end=T1, receipt_id="00000000-0000-4000-8000-000000000001")
    assert parse_leaf(fixed(3)).receipt["receipt_id"] == "00000000-0000-4000-8000-000000000001"


def test_wrong_role_tenant_or_time_refused():
    leaf = _leaf()
    with pytest.raises(TrustError, match="role 'receipt'"):
        verify_receipt(leaf, _policy(roles=frozenset({"checkpoint", "artifact"})), expected_index=0)
    with pytest.raises(TrustError, match="tenant 'acme'"):
        verify_receipt(leaf, _policy(tenants=frozenset({"globex"})), expected_index=0)
    with pytest.raises(TrustError, match="expired"):
        verify_receipt(leaf, _policy(not_after=T0), expected_index=0)
    with pytest.raises(TrustError, match="not yet valid"):
        verify_receipt(leaf, _policy(not_before=T1 + timedelta(seconds=1)), expected_index=0)
    with pytest.raises(TrustError, match="no signature by a key trusted"):
        verify_receipt(leaf, _policy(generate_key(key_type="ed25519")), expected_index=0)
    # valid inside the window
    verify_receipt(leaf, _policy(not_before=T0, not_after=T1 + timedelta(seconds=1)), expected_index=0)


def test_edited_receipt_detected():
    leaf = _leaf("classify")
    env = json.loads(leaf)
    receipt = json.loads(base64.b64decode(env["payload"]))
    receipt["operator"]["name"] = "someone-else"
    env["payload"] = base64.b64encode(jcs(receipt)).decode()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_receipt(jcs(env), _policy(), expected_index=0)
    receipt["response"]["label"] = "negative"  # the recorded output no longer matches its digest either
    env["payload"] = base64.b64encode(jcs(receipt)).decode()
    with pytest.raises(SchemaError, match="output_digest"):
        verify_receipt(jcs(env), _policy(), expected_index=0)


def test_wrong_index_and_payload_type_refused():
    with pytest.raises(LogError, match="wrong position"):
        verify_receipt(_leaf(index=3), _policy(), expected_index=4)
    receipt = parse_leaf(_leaf()).receipt
    other = sign_envelope(jcs(receipt), payload_type="application/json", key=KEY).canonical_bytes()
    with pytest.raises(SchemaError, match="not a receipt envelope"):
        parse_leaf(other)


def test_non_canonical_leaf_refused():
    leaf = _leaf()
    with pytest.raises(SchemaError, match="canonical"):
        parse_leaf(json.dumps(json.loads(leaf), indent=1).encode())
    env = json.loads(leaf)
    payload = json.loads(base64.b64decode(env["payload"]))
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()  # non-canonical payload
    with pytest.raises(SchemaError, match="canonical"):
        parse_leaf(jcs(env))


@pytest.mark.parametrize(("edit", "match"), [
    (lambda r: r["request"].update(input_digest=digest(b"x")), "input_digest does not match"),
    (lambda r: r["period"].update(start="2026-03-01T12:00:01Z"), "ends before it starts"),
    (lambda r: r["period"].update(end="2026-13-01T12:00:01Z"), "valid RFC 3339"),
    (lambda r: r.update(decoding={"strategy": "greedy", "max_new_tokens": 1, "temperature": 5, "top_k": None,
                                  "top_p": None, "seed": None}), "schema"),
    (lambda r: r["response"].update(text_digest=None), "go together"),
    (lambda r: r["privacy"].update(mode="encrypt-text"), "data_key_id must be null"),
    (lambda r: r["response"].update(output_digest=OUT), "output_digest does not match"),
    (lambda r: r.update(decoding={"strategy": "sample", "max_new_tokens": 1, "temperature": 5, "top_k": None,
                                  "top_p": None, "seed": None}), "schema"),
])
@pytest.mark.parametrize("task", ["classify", "generate"])
def test_semantic_rules_refused(edit, match, task):
    if task == "classify" and match == "go together":
        match = "schema"  # classifiers have no text_digest field at all
    with pytest.raises(SchemaError, match=match):
        parse_leaf(_resign(_leaf(task), edit))


def test_decision_and_decoding_validation():
    with pytest.raises(InputError, match="needs label"):
        Decision(task="classify", input_ids=(1,), output_digest=OUT)
    with pytest.raises(InputError, match="output digest does not match"):
        Decision(task="classify", input_ids=(1,), output_digest=OUT, label="a", scores=(1, 2))
    with pytest.raises(InputError, match="input digest"):
        Decision(task="embed", input_ids=(1,), output_digest=OUT, embedding_digest=OUT, dim=2,
                 input_digest=input_digest((2,)))
    with pytest.raises(InputError, match="need a seed"):
        Decoding(top_k=5)
    with pytest.raises(InputError, match="need a seed"):
        Decoding(temperature=800)
    assert Decoding(seed=3).to_json()["strategy"] == "sample"
    with pytest.raises(InputError, match="out of range"):
        Decoding(max_new_tokens=0)
    assert Decoding().to_json()["strategy"] == "greedy"


def test_leaf_verifier_is_picklable(tmp_path: Path):
    policy = _policy(tenants=frozenset({"acme"}), not_before=T0 - timedelta(days=1))
    verifier = pickle.loads(pickle.dumps(make_leaf_verifier(policy)))
    verifier(2, _leaf(index=2))
    with pytest.raises(LogError):
        verifier(1, _leaf(index=2))
    with pytest.raises(TrustError):
        verifier(0, _leaf(index=0, tenant="globex"))


# --- privacy modes ----------------------------------------------------------------------------------


@pytest.fixture
def keystore() -> tuple[KeyStore, KeyEncryptionKey]:
    kek = KeyEncryptionKey.generate()
    store = (KeyStore.empty().with_tenant("acme", mode="encrypt-text", kek=kek)
             .with_tenant("globex", mode="encrypt-all", kek=kek))
    return store, kek


def test_encrypt_text_mode(keystore):
    store, kek = keystore
    crypto = store.tenant("acme", kek=kek)
    leaf = _leaf(crypto=crypto)
    receipt = parse_leaf(leaf).receipt
    assert isinstance(receipt["request"]["text"], dict) and isinstance(receipt["response"]["text"], dict)
    assert receipt["request"]["input_ids"] == [1, 15043, 29892]  # ids stay clear: replay needs no key
    assert receipt["request"]["text_digest"] == crypto.text_digest("Hello,")
    assert b"Hello," not in base64.b64decode(json.loads(leaf)["payload"])
    opened = reveal(receipt, crypto)
    assert (opened["request"]["text"], opened["response"]["text"]) == ("Hello,", " world!")
    assert input_ids_of(receipt) == (1, 15043, 29892)


def test_encrypt_all_mode_and_shredding(keystore):
    store, kek = keystore
    crypto = store.tenant("globex", kek=kek)
    leaves = [_leaf(task, tenant="globex", crypto=crypto) for task in ("generate", "classify")]
    gen, cls = (parse_leaf(leaf).receipt for leaf in leaves)
    assert isinstance(gen["request"]["input_ids"], dict) and isinstance(gen["response"]["output_ids"], dict)
    assert isinstance(cls["response"]["label"], dict) and isinstance(cls["response"]["scores"], dict)
    with pytest.raises(InputError, match="sealed"):
        input_ids_of(gen)
    assert input_ids_of(gen, crypto) == (1, 15043, 29892)
    assert reveal(cls, crypto)["response"]["scores"] == [-1200, 3400]
    # Crypto-shredding: the data key goes, every signature and digest still verifies.
    shredded = store.shred("globex").tenant("globex", kek=kek)
    for leaf in leaves:
        verify_receipt(leaf, _policy(), expected_index=0)
    with pytest.raises(KeyFileError, match="shredded"):
        reveal(gen, shredded)
    with pytest.raises(KeyFileError, match="shredded"):
        input_ids_of(gen, shredded)
    assert gen["request"]["input_digest"] == input_digest((1, 15043, 29892))
    with pytest.raises(KeyFileError, match="no active data key"):
        _ctx(tenant="globex", crypto=shredded)


def test_sealed_value_moved_between_receipts_refused(keystore):
    store, kek = keystore
    crypto = store.tenant("acme", kek=kek)
    first = parse_leaf(_leaf(crypto=crypto)).receipt
    moved = _resign(_leaf(crypto=crypto), lambda r: r["request"].update(text=first["request"]["text"]))
    verify_receipt(moved, _policy(), expected_index=0)  # a misbehaving signer could sign it, but...
    with pytest.raises(SignatureError, match="moved"):
        reveal(parse_leaf(moved).receipt, crypto)  # ...the ciphertext does not open in another receipt
    swapped = _resign(_leaf(crypto=crypto), lambda r: r["request"].update(text=r["response"]["text"]))
    with pytest.raises(SignatureError, match="moved"):
        reveal(parse_leaf(swapped).receipt, crypto)


def test_privacy_consistency_enforced(keystore):
    store, kek = keystore
    leaf = _leaf(crypto=store.tenant("acme", kek=kek))
    with pytest.raises(SchemaError, match="in clear in privacy mode"):
        parse_leaf(_resign(leaf, lambda r: r["privacy"].update(mode="clear", data_key_id=None)))
    with pytest.raises(SchemaError, match="must be sealed"):
        parse_leaf(_resign(leaf, lambda r: r["privacy"].update(mode="encrypt-all")))
    with pytest.raises(SchemaError, match="salt"):
        parse_leaf(_resign(leaf, lambda r: r["privacy"].update(salt_id=None)))
    with pytest.raises(InputError, match="another tenant"):
        _ctx(tenant="globex", crypto=store.tenant("acme", kek=kek))


# --- strict parser (property tests) --------------------------------------------------------------------

_BASE = parse_leaf(_leaf("generate")).receipt
_PATHS = [(), ("request",), ("response",), ("period",), ("artifact",), ("runtime",), ("operator",), ("decoding",),
          ("privacy",)]
_SCALAR_PATHS = [("schema",), ("receipt_id",), ("tenant",), ("log_index",), ("task",), ("request", "input_digest"),
                 ("request", "input_ids"), ("response", "output_ids"), ("response", "finish_reason"),
                 ("period", "start"), ("decoding", "seed"), ("decoding", "max_new_tokens"), ("runtime", "spec"),
                 ("artifact", "digest"), ("operator", "name")]
_WRONG = st.one_of(st.booleans(), st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1), st.text(max_size=8),
                   st.lists(st.text(max_size=3), min_size=1, max_size=2),
                   st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=2), st.none())


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "list:" + ",".join(sorted({_kind(v) for v in value}))
    return "bool" if isinstance(value, bool) else type(value).__name__


def _at(doc: dict, path: tuple[str, ...]) -> dict:
    for part in path:
        doc = doc[part]
    return doc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(_PATHS), name=st.text(min_size=1, max_size=12))
def test_unknown_fields_refused(where, name):
    receipt = json.loads(json.dumps(_BASE))
    target = _at(receipt, where)
    if name in target:
        return
    target[name] = 1
    leaf = sign_receipt(receipt, KEY).canonical_bytes()
    with pytest.raises(SchemaError):
        parse_leaf(leaf)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(_SCALAR_PATHS), value=_WRONG)
def test_wrong_types_refused(path, value):
    receipt = json.loads(json.dumps(_BASE))
    parent = _at(receipt, path[:-1])
    if _kind(parent[path[-1]]) == _kind(value):
        return  # same JSON type: not what this property is about
    parent[path[-1]] = value
    leaf = sign_receipt(receipt, KEY).canonical_bytes()
    with pytest.raises(SchemaError):
        parse_leaf(leaf)


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(st.binary(max_size=200), st.builds(lambda v: jcs(v), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53 - 1), 2**53 - 1), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10))))
def test_parser_raises_only_findings(data):
    """Arbitrary bytes or JSON: a finding (exit 1), never a crash or a usage error."""
    try:
        parse_leaf(data)
    except KolmError as exc:
        assert exc.exit_code == 1, exc


_LEAF = _leaf("classify")


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, len(_LEAF) - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_detected(pos, bit):
    """Strict readers (docs/architecture.md, invariant 2): any changed byte of a leaf is a finding."""
    data = bytearray(_LEAF)
    data[pos] ^= 1 << bit
    with pytest.raises(KolmError) as info:
        verify_receipt(bytes(data), _policy(), expected_index=0)
    assert info.value.exit_code == 1


def test_log_of_receipts_verifies_before_and_after_shredding(tmp_path: Path, keystore):
    from kolm_audit.log import ReceiptLog, verify_log

    store, kek = keystore
    crypto = store.tenant("globex", kek=kek)
    ctx = _ctx(tenant="globex", crypto=crypto)
    policy = TrustPolicy(keys=(
        TrustedKey(name="receipts", public_key=KEY.public_key(), roles=frozenset({"receipt", "checkpoint"}),
                   tenants=frozenset({"globex"})),))
    with ReceiptLog.open(tmp_path / "r.db", create=True, origin="example.org/receipts") as log:
        log.append_many([receipt_builder(ctx, _decision(t), start=T0, end=T1) for t in ("generate", "classify")])
        log.append(receipt_builder(ctx, _decision("embed"), start=T0, end=T1))
        log.checkpoint(KEY)
    report = verify_log(tmp_path / "r.db", policy=policy, verify_leaf=make_leaf_verifier(policy))
    assert report.size == 3
    shredded = store.shred("globex").tenant("globex", kek=kek)
    # after shredding: same log, same signatures, same proofs; only the sealed texts are gone
    assert verify_log(tmp_path / "r.db", policy=policy, verify_leaf=make_leaf_verifier(policy)).size == 3
    with ReceiptLog.open(tmp_path / "r.db") as log:
        receipt = parse_leaf(log.leaf(0)).receipt
    with pytest.raises(KeyFileError, match="shredded"):
        reveal(receipt, shredded)


def test_log_verify_finds_a_receipt_signed_by_an_untrusted_key(tmp_path: Path):
    from kolm_audit.log import ReceiptLog, verify_log

    rogue = generate_key(key_type="ed25519")
    policy = TrustPolicy(keys=(TrustedKey(name="k", public_key=KEY.public_key(),
                                          roles=frozenset({"receipt", "checkpoint"})),))
    with ReceiptLog.open(tmp_path / "r.db", create=True, origin="example.org/receipts") as log:
        log.append(receipt_builder(_ctx(), _decision(), start=T0, end=T1))
        log.append(receipt_builder(_ctx(rogue), _decision(), start=T0, end=T1))
        log.checkpoint(KEY)
    verify_log(tmp_path / "r.db", policy=policy)  # tree and checkpoint alone are fine
    with pytest.raises(TrustError):
        verify_log(tmp_path / "r.db", policy=policy, verify_leaf=make_leaf_verifier(policy))


@pytest.mark.parametrize("bad", [-1, True, 2**31, "7"])
@pytest.mark.parametrize(("part", "name", "task"), [("request", "input_ids", "generate"),
                                                    ("response", "output_ids", "generate"),
                                                    ("response", "scores", "classify")])
def test_bad_element_in_integer_arrays_refused(part, name, task, bad):
    if name == "scores" and bad in (-1, 2**31):
        bad = 2**53  # scores may be negative and large; only non-integers and non-JSON-safe values are bad
        with pytest.raises(InputError):  # not even canonical JSON: the signer refuses it
            _resign(_leaf(task), lambda r: r[part][name].append(bad))
        return
    with pytest.raises(SchemaError, match=name):
        parse_leaf(_resign(_leaf(task), lambda r: r[part][name].append(bad)))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(-(2**53 - 1), 2**53 - 1), max_size=40), label=st.text(max_size=10),
       reason=st.text(max_size=10))
def test_fast_digests_equal_jcs_digests(values, label, reason):
    from kolm_audit.receipts.rules import recorded_output_digest

    assert input_digest(values) == digest_of(values)
    assert recorded_output_digest("classify", {"label": label, "scores": values}) == \
        digest_of({"label": label, "scores": values})
    assert recorded_output_digest("generate", {"finish_reason": reason, "output_ids": values}) == \
        digest_of({"finish_reason": reason, "output_ids": values})
