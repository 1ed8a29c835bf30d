"""``kolm-audit quantize | sign | verify | inspect``: make, sign and check ``.kolm`` artifacts.

    kolm-audit quantize ./all-MiniLM-L6-v2 --scheme none --out model.kolm
    kolm-audit sign model.kolm --key keys/artifact.pem --sidecar
    kolm-audit verify model.kolm --key keys/artifact.pub --json
    kolm-audit verify binder.pdf --trust trust.toml           (an audit binder: see kolm_audit.cli.binder)
    kolm-audit inspect model.kolm
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from kolm_audit.cli import emit
from kolm_audit.errors import Finding, InputError, KolmError

_SCHEMES = ("none", "int8", "int4", "nvfp4")


@contextlib.contextmanager
def _progress(path: Path, *, as_json: bool, desc: str) -> Iterator[Any]:
    """A byte progress bar on a terminal (thread-safe callback); nothing when piped or with --json."""
    from tqdm import tqdm

    try:
        total = os.path.getsize(path)
    except OSError:
        total = 0
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False,
               disable=not sys.stderr.isatty() or as_json)
    lock = threading.Lock()

    def update(n: int) -> None:
        with lock:
            bar.update(n)
    try:
        yield update
    finally:
        bar.close()


@click.command()
@click.argument("hf_dir", type=click.Path(path_type=Path))
@click.option("--scheme", type=click.Choice(_SCHEMES), required=True, help="Weight format.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .kolm file.")
@click.option("--name", help="Artifact name (default: the checkpoint directory's name).")
@click.option("--version", "version_", default="0", show_default=True, help="Artifact version string.")
@click.option("--created", metavar="RFC3339",
              help="Creation time (default: SOURCE_DATE_EPOCH, else 1970-01-01T00:00:00Z; never the clock).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quantize(hf_dir: Path, scheme: str, out: Path, name: str | None, version_: str, created: str | None,
             as_json: bool) -> int:
    """Import an HF checkpoint (safetensors) into an unsigned .kolm artifact."""
    from kolm_audit.artifact import write_artifact
    from kolm_audit.compile.hf import import_checkpoint

    manifest, tensors = import_checkpoint(hf_dir, scheme=scheme, name=name, version=version_, created=created)
    art = write_artifact(out, manifest=manifest, tensors=tensors)
    size = os.path.getsize(out)
    doc = {"file": str(out), "artifact_digest": art.digest, "name": manifest["name"], "version": version_,
           "scheme": scheme, "tensors": len(art.tensors), "bytes": size, "created": manifest["created"]}
    emit(doc, as_json=as_json, text=f"wrote {out} ({size} bytes, {len(art.tensors)} tensors, scheme {scheme})\n"
                                    f"artifact digest: {art.digest}\nunsigned: run `kolm-audit sign {out} --key KEY`")
    return 0


@click.command()
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PKCS#8 PEM private key.")
@click.option("--passphrase-env", "passphrase_env", metavar="VAR", help="Env var holding the key's passphrase.")
@click.option("--sidecar", is_flag=True, help="Also write ARTIFACT.sig for the OpenSSF model_signing CLI (ECDSA).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sign(artifact: Path, key_path: Path, passphrase_env: str | None, sidecar: bool, as_json: bool) -> int:
    """Check the artifact, then embed a DSSE signature over its in-toto statement."""
    from kolm_audit.artifact import sign_artifact
    from kolm_audit.artifact.sidecar import sidecar_path
    from kolm_audit.keys import load_private_key

    key = load_private_key(key_path, passphrase_env=passphrase_env)
    with _progress(artifact, as_json=as_json, desc="checking") as update:
        result = sign_artifact(artifact, key, sidecar=sidecar, progress=update)
    text = f"signed {artifact}\nartifact digest: {result.artifact.digest}\nkey id: {result.key_id}"
    if result.sidecar is not None:
        text += f"\nsidecar: {result.sidecar}"
    elif sidecar_path(artifact).is_file():
        click.echo(f"kolm-audit: warning: {sidecar_path(artifact)} covers the file before this signature; "
                   "re-create it with `sign --sidecar`", err=True)
    emit(result.to_json(), as_json=as_json, text=text)
    return 0


def _policy(trust_path: Path | None, key_path: Path | None) -> Any:
    from kolm_audit.trust import load_policy

    return load_policy(trust=trust_path, keys=() if key_path is None else (key_path,), roles=("artifact",),
                       what="the artifact's signature")


@click.command()
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trust", "trust_path", type=click.Path(dir_okay=False, path_type=Path), help="trust.toml policy.")
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Trust this one public key (SPKI PEM) for role 'artifact'.")
@click.option("--tenant", help="Require keys trusted for this tenant.")
@click.option("--json", "as_json", is_flag=True, help="Print a kolm.verify-report/1 document.")
def verify(artifact: Path, trust_path: Path | None, key_path: Path | None, tenant: str | None,
           as_json: bool) -> int:
    """Verify an artifact (strict format, every tensor digest, signatures by trusted keys) or an audit binder (PDF).

    Exit 0 verified, 1 a finding (tampered, bad or untrusted signature, unsigned), 2 unreadable or bad usage.
    """
    from kolm_audit.artifact import failed_report, verify_artifact
    from kolm_audit.binder.verify import is_pdf

    if is_pdf(artifact):   # a binder: its detached signature (role binder) and every embedded document
        from kolm_audit.cli.binder import verify_pdf

        if tenant is not None:
            raise InputError("--tenant does not apply to a binder", field="--tenant")
        return verify_pdf(artifact, trust=trust_path, key=key_path, signature=None, as_json=as_json)

    try:
        policy = _policy(trust_path, key_path)
        with _progress(artifact, as_json=as_json, desc="verifying") as update:
            report = verify_artifact(artifact, policy=policy, tenant=tenant, progress=update)
    except KolmError as exc:
        if not as_json:
            raise
        emit(failed_report(artifact, exc), as_json=True)   # --json output is always a verify report
        verdict = "NOT VERIFIED" if isinstance(exc, Finding) else "error"
        click.echo(f"kolm-audit: {verdict}: {exc}", err=True)
        return exc.exit_code
    lines = [f"verified {artifact}", f"artifact digest: {report.artifact_digest}",
             f"name: {report.name} {report.version} (created {report.created})",
             f"tensors: {report.tensors} digests recomputed, {report.bytes} bytes"]
    lines += [f"signed by '{s.name}' ({s.key_id}) as {s.role}" + (f" for tenant {s.tenant}" if s.tenant else "")
              for s in report.signers]
    if report.untrusted_signatures:
        lines.append("also signed by keys not in the policy (ignored): " + ", ".join(report.untrusted_signatures))
    emit(report.to_json(), as_json=as_json, text="\n".join(lines))
    return 0


@click.command()
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(artifact: Path, as_json: bool) -> int:
    """Show manifest summary, tensors, signers (key ids, not verified) and sizes. Works on unsigned files."""
    from kolm_audit.artifact import read_artifact
    from kolm_audit.artifact.sidecar import sidecar_path

    art = read_artifact(artifact, check_tensors=False)
    m = art.manifest
    size = os.path.getsize(artifact)
    tensor_bytes = sum(int(t.nbytes) for t in art.tensors.values())
    keyids = sorted(s["keyid"] for e in art.signatures for s in e["signatures"])
    doc = {"file": str(artifact), "artifact_digest": art.digest, "bytes": size, "tensor_bytes": tensor_bytes,
           "signed_by": keyids, "signatures_verified": False, "sidecar": sidecar_path(artifact).is_file(),
           "manifest": m}
    arch = m["architecture"]
    lines = [f"{artifact}: {m['name']} {m['version']}  ({size} bytes)",
             f"artifact digest: {art.digest}",
             f"runtime: {m['runtime']}  family: {arch['family']}  task: {m['task']['kind']}  "
             f"quantization: {m['quantization']['scheme']}",
             f"created: {m['created']}",
             f"tensors: {len(m['tensors'])} ({tensor_bytes} bytes)"]
    for tname, t in sorted(m["tensors"].items())[:12]:
        lines.append(f"  {tname}  {t['dtype']}{t['shape']}  {t['sha256'][:19]}…")
    if len(m["tensors"]) > 12:
        lines.append(f"  … {len(m['tensors']) - 12} more (use --json)")
    if "kscore" in m:
        k = m["kscore"]
        comps = ", ".join(f"{c} {v}" for c, v in k["components"].items())
        verdict = "passed" if k["gate"]["passed"] else "FAILED (" + ", ".join(k["gate"]["failed"]) + ")"
        lines.append(f"K-score {k['k']} ({comps}); gate {verdict} (min K {k['gate']['min_k']})")
    else:
        lines.append("K-score: none (imported, not compiled: no gate evaluated)")
    lines.append("signed by (not verified; use `kolm-audit verify`): " + (", ".join(keyids) or "nobody (unsigned)"))
    emit(doc, as_json=as_json, text="\n".join(lines))
    return 0
