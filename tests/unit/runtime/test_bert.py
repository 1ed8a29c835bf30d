"""BERT forward of kolm-int/1: agreement with transformers, batch invariance, thread independence, bad input,
and the Python API (``kolm_audit.load``) over a real signed artifact."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _bert_fixtures import float_hidden, tiny_config, tiny_model, tiny_tokenizer_json, tiny_vocab, write_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

import kolm_audit
from kolm_audit.artifact import build_manifest, empty_provenance, sign_artifact, write_artifact
from kolm_audit.compile import QuantizedModel, quantize_checkpoint
from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.errors import ArtifactError, InputError, RuntimeInputError, SignatureError, UnsupportedModel
from kolm_audit.keys import generate_key, write_keypair
from kolm_audit.model import Model, embedding_digest, input_digest
from kolm_audit.runtime.models import bert, check_token_ids, load_runtime
from kolm_audit.runtime.ops import get_ops

TEXTS = ["the quick brown fox jumps over the lazy dog", "hello", "a signed receipt for every decision",
         "The bank will approve the loan, not deny it!", "red car", "every year later the same bytes"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, dict[str, QuantizedModel]]:
    model = tiny_model(tiny_config(), seed=11)
    ckpt = read_hf_checkpoint(write_checkpoint(model, tmp_path_factory.mktemp("hf")))
    return model, {s: quantize_checkpoint(ckpt, scheme=s) for s in ("int8", "int4", "nvfp4")}


def _manifest(qm: QuantizedModel) -> dict:
    return {"runtime": "kolm-int/1", "architecture": qm.architecture, "task": qm.task,
            "quantization": qm.quantization}


def _model(qm: QuantizedModel) -> Model:
    return Model(manifest=_manifest(qm), digest="sha256:" + "0" * 64, tensors=qm.tensors)


def _runtime(qm: QuantizedModel) -> bert.BertRuntime:
    rt = load_runtime(manifest=_manifest(qm), tensors=qm.tensors, ops=get_ops("cpu"))
    assert isinstance(rt, bert.BertRuntime)
    return rt


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize(("scheme", "floor"), [("int8", 0.995), ("int4", 0.97), ("nvfp4", 0.97)])
def test_embeddings_and_logits_track_transformers(tiny: tuple, scheme: str, floor: float) -> None:
    fmodel, qms = tiny
    m = _model(qms[scheme])
    embs, cls = m.embed(TEXTS), m.classify(TEXTS)
    for e, c in zip(embs, cls, strict=True):
        ref = float_hidden(fmodel, list(e.input_ids)).mean(0).numpy()
        assert _cos(e.embedding / 65536, ref) >= floor
        with torch.no_grad():
            logits = fmodel(torch.tensor([list(c.input_ids)])).logits[0].numpy()
        assert np.abs(np.array(c.scores) / 65536 - logits).max() < (0.02 if scheme == "int8" else 0.15)
        assert c.label == qms[scheme].task["labels"][c.label_index]
        assert e.embedding.dtype == np.int32 and e.output_digest == embedding_digest(e.embedding)


def test_batch_invariance_any_batch_any_padding(tiny: tuple) -> None:
    m = _model(tiny[1]["int8"])
    ids = [*m.tokenize(TEXTS), [2, 0, 0, 0, 3], [2], list(range(2, 60))]
    alone = [m.embed([x])[0].output_digest for x in ids] + [m.classify([x])[0].output_digest for x in ids]
    rng = np.random.default_rng(5)
    for _ in range(3):
        order = rng.permutation(len(ids)).tolist()
        batch = [ids[i] for i in order]
        emb = m.embed(batch)
        cls = m.classify(batch)
        for pos, i in enumerate(order):
            assert emb[pos].output_digest == alone[i]
            assert cls[pos].output_digest == alone[len(ids) + i]
    # a request padded next to a 3x longer one, and duplicated, is unchanged
    big = m.embed([ids[1], ids[-1], ids[1]])
    assert big[0].output_digest == big[2].output_digest == alone[1]


def test_results_do_not_depend_on_thread_count(tiny: tuple) -> None:
    m = _model(tiny[1]["int4"])
    with threadpool_limits(limits=1):
        one = [r.output_digest for r in m.embed(TEXTS)]
    with threadpool_limits(limits=4):
        four = [r.output_digest for r in m.embed(TEXTS)]
    assert one == four


def test_sequence_too_long_and_bad_ids_are_refused(tiny: tuple) -> None:
    m = _model(tiny[1]["int8"])
    limit = tiny[1]["int8"].architecture["max_position_embeddings"]
    vocab = tiny[1]["int8"].architecture["vocab_size"]
    cases = [([[2] * (limit + 1)], "inputs[0]"), ([[2, 3], [2, vocab, 3]], "inputs[1][1]"),
             ([[2, -1]], "inputs[0][1]"), ([[]], "inputs[0]"), ([[2, 1.5]], "inputs[0][1]"),
             ([[2, 3], "text"], "inputs[1]"), (["text", "more", [2, 3]], "inputs[2]"), ([b"text"], "inputs[0]"),
             ([{"text": "x"}], "inputs[0]"), (None, "inputs"), ("text", "inputs")]
    for inputs, field in cases:
        with pytest.raises(RuntimeInputError) as err:
            m.embed(inputs)
        assert err.value.field == field and err.value.exit_code == 2
    with pytest.raises(RuntimeInputError) as err:
        m.generate(["hello"])
    assert err.value.field == "task.kind"


@pytest.mark.parametrize("method", ["encode", "embed", "classify"])
def test_every_runtime_entry_refuses_bad_ids_before_a_kernel_reads_them(tiny: tuple, method: str) -> None:
    """The runtime's own methods check ids too (a kernel indexes the embedding with them unchecked: an id past the
    vocabulary read outside the table, a negative one wrapped around to another row)."""
    qm = tiny[1]["int8"]
    rt = _runtime(qm)
    vocab = qm.architecture["vocab_size"]
    for ids, field in (([[2, vocab]], "inputs[0][1]"), ([[2, 3], [-1]], "inputs[1][0]"), ([[]], "inputs[0]"),
                       ([[2, 3], "hello"], "inputs[1]"), (None, "inputs"), ("hello", "inputs")):
        with pytest.raises(RuntimeInputError) as err:
            getattr(rt, method)(ids)
        assert err.value.field == field
    if method != "encode":                                  # encode's empty arrays: their own test below
        assert getattr(rt, method)([]) == []
    ragged = np.empty(2, dtype=object)
    ragged[:] = [[2, 5, 3], [2, 3]]
    got = getattr(rt, method)(ragged)                       # an array of ragged requests is a batch too
    assert (got[0].shape[0] if method == "encode" else len(got)) == 2


def test_an_empty_batch_encodes_to_empty_arrays(tiny: tuple) -> None:
    qm = tiny[1]["int8"]
    h, valid = _runtime(qm).encode([])
    assert h.shape == (0, 0, qm.architecture["hidden_size"]) and h.dtype == np.int64
    assert valid.shape == (0, 0) and valid.dtype == bool


@pytest.mark.parametrize(("field", "value"), [("hidden_act", "gelu_new"), ("position_embedding_type", "relative_key"),
                                              ("is_decoder", True), ("num_attention_heads", 5),
                                              ("layer_norm_eps", "tiny")])
def test_unsupported_config_fields_are_named(tmp_path: Path, field: str, value: object) -> None:
    d = write_checkpoint(tiny_model(tiny_config(), seed=1), tmp_path / "hf")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(UnsupportedModel) as err:
        quantize_checkpoint(read_hf_checkpoint(d), scheme="int8")
    assert err.value.field == field and err.value.exit_code == 2


def test_load_verifies_then_runs(tmp_path: Path, tiny: tuple) -> None:
    qm = tiny[1]["int8"]
    manifest = build_manifest(name="tiny-bert", version="1", task=qm.task, architecture=qm.architecture,
                              quantization=qm.quantization, tensors=qm.tensors, provenance=empty_provenance(),
                              created="2026-01-01T00:00:00Z")
    path = tmp_path / "m.kolm"
    art = write_artifact(path, manifest=manifest, tensors=qm.tensors)
    with pytest.raises(InputError):
        kolm_audit.load(path)                                   # no trust given
    key = generate_key()
    _, pub = write_keypair(key, tmp_path / "keys")
    with pytest.raises(SignatureError):
        kolm_audit.load(path, key=pub)                          # unsigned
    sign_artifact(path, key)
    model = kolm_audit.load(path, key=pub)
    assert model.digest == art.digest and model.task == "classify"
    res = model.classify(["hello"])[0]
    assert res.input_digest == input_digest(res.input_ids) and res.to_json()["scores"] == list(res.scores)
    assert model.embed([list(res.input_ids)])[0].output_digest == _model(qm).embed(["hello"])[0].output_digest
    unsigned = kolm_audit.load(path, require_signature=False)
    assert unsigned.classify(["hello"])[0].output_digest == res.output_digest


def test_bert_runtime_has_no_float_arithmetic() -> None:
    src = ast.parse(inspect.getsource(bert.BertRuntime))
    for node in ast.walk(src):
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            continue                                             # load-time validation only
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float))
    for fn in (bert.BertRuntime.encode, bert.BertRuntime.embed, bert.BertRuntime.classify):
        assert "float" not in inspect.getsource(fn)


@pytest.mark.parametrize(("name", "change"), [("embeddings.position", "drop"), ("tables.exp", "drop"),
                                              ("layers.1.ffn.up.weight", "shape"), ("tables.attn_scale", "value")])
def test_malformed_artifact_tensors_are_refused(tiny: tuple, name: str, change: str) -> None:
    qm = tiny[1]["int8"]
    tensors = dict(qm.tensors)
    if change == "drop":
        del tensors[name]
    elif change == "shape":
        tensors[name] = tensors[name][:-1]
    else:
        tensors[name] = np.array([1, 40], dtype=np.int64)
    with pytest.raises(ArtifactError) as err:
        _model(QuantizedModel(architecture=qm.architecture, task=qm.task, quantization=qm.quantization,
                              tensors=tensors))
    assert name in (err.value.field or "") or name.rsplit(".", 1)[0] in (err.value.field or "")
    assert err.value.exit_code == 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(min_value=0, max_value=len(tiny_vocab()) - 1), min_size=1, max_size=20),
                min_size=1, max_size=5),
       st.integers(min_value=0, max_value=4))
def test_property_each_request_alone_equals_batched(tiny: tuple, batch: list[list[int]], pick: int) -> None:
    m = _model(tiny[1]["nvfp4"])
    pick = min(pick, len(batch) - 1)
    alone_e = m.embed([batch[pick]])[0].output_digest
    alone_c = m.classify([batch[pick]])[0].output_digest
    assert m.embed(batch)[pick].output_digest == alone_e
    assert m.classify(batch)[pick].output_digest == alone_c


def test_tokenizer_never_truncates_or_pads() -> None:
    from tokenizers import Tokenizer as HFTokenizer

    from kolm_audit.runtime.tokenize import Tokenizer

    hf = HFTokenizer.from_str(tiny_tokenizer_json().decode())
    hf.enable_truncation(max_length=4)
    hf.enable_padding(length=12)
    tok = Tokenizer(hf.to_str().encode())
    ids = tok.encode(["the quick brown fox jumps over the lazy dog"])[0]
    assert len(ids) == 11 and ids[0] == 2 and ids[-1] == 3


_TOKENS = st.one_of(st.integers(-3, 12), st.booleans(), st.floats(0, 8, allow_nan=False), st.just("3"),
                    st.integers(0, 11).map(np.int64), st.integers(0, 11).map(np.uint8))


_REQUESTS = st.one_of(st.lists(_TOKENS, max_size=6), st.lists(_TOKENS, max_size=6).map(tuple),
                     st.lists(st.integers(0, 11), max_size=6).map(np.array), st.text(max_size=3), st.none(),
                     st.integers(0, 9), st.just(b"\x01"))


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(_REQUESTS, min_size=1, max_size=4))
def test_token_checks_refuse_exactly_the_bad_requests(batch: list[object]) -> None:
    """The family runtimes' input check (a fast path for lists of plain ints, the per-token loop otherwise): refused
    iff a request is not a list, tuple or 1-D array (text, bytes, None and numbers are not), is empty, longer than
    5, or holds a token that is not an int (numpy integers are; bools, floats and strings are not) in [0, 10); the
    error names the first bad field."""
    def bad_token(tok: object) -> bool:
        return isinstance(tok, bool) or not isinstance(tok, int | np.integer) or not 0 <= tok < 10

    want = None
    for i, ids in enumerate(batch):
        if not isinstance(ids, list | tuple | np.ndarray):
            want = f"inputs[{i}]"
            break
        bad = [j for j, tok in enumerate(ids) if bad_token(tok)]
        if len(ids) == 0 or len(ids) > 5 or bad:
            want = f"inputs[{i}]" if len(ids) == 0 or len(ids) > 5 else f"inputs[{i}][{bad[0]}]"
            break
    if want is None:
        check_token_ids(batch, limit=5, vocab=10)
    else:
        with pytest.raises(RuntimeInputError) as err:
            check_token_ids(batch, limit=5, vocab=10)
        assert err.value.field == want
