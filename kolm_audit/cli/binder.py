"""``kolm-audit binder``: render a signed PDF/A-3b audit binder, extract its evidence, verify it.

    kolm-audit binder --report report.json --artifact model.kolm --log receipts.db --out binder.pdf --key KEY \\
        [--provenance P] [--embed-log auto|full|excerpt] [--json]
    kolm-audit binder extract binder.pdf --out DIR [--json]
    kolm-audit binder verify binder.pdf --trust trust.toml [--json]     (the same as: kolm-audit verify binder.pdf)

Exit codes: 0 written / verified, 1 a finding (tampered binder, bad or untrusted signature, edited report),
2 bad usage or unreadable input (including inputs that do not belong together).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kolm_audit.cli import emit
from kolm_audit.errors import Finding, KolmError

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.group("binder", invoke_without_command=True)
@click.option("--report", "report", type=_FILE, help="The replay report (kolm-audit replay --report).")
@click.option("--artifact", type=_FILE, help="The .kolm artifact the report replayed.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), help="The receipt log (database or bundle).")
@click.option("--out", type=_FILE, help="Where to write the binder (and OUT.sig beside it).")
@click.option("--key", "key_path", type=_FILE, help="Private key of a signer with the 'binder' role.")
@click.option("--passphrase-env", metavar="VAR", help="Env var holding the key's passphrase.")
@click.option("--provenance", type=_FILE,
              help="The artifact's provenance statement (default: ARTIFACT.provenance.json when it exists).")
@click.option("--embed-log", "embed", type=click.Choice(("auto", "full", "excerpt")), default="auto", show_default=True,
              help="Embed the whole log bundle, or an excerpt of the cited receipts (auto: whole up to 2,000 leaves).")
@click.option("--json", "as_json", is_flag=True, help="Print a kolm.binder-render-report/1 document.")
@click.pass_context
def binder(ctx: click.Context, report: Path | None, artifact: Path | None, log_path: Path | None, out: Path | None,
           key_path: Path | None, passphrase_env: str | None, provenance: Path | None, embed: str,
           as_json: bool) -> int | None:
    """Render a signed PDF/A-3b audit binder with the evidence embedded (or: binder extract | verify)."""
    given = {"--report": report, "--artifact": artifact, "--log": log_path, "--out": out, "--key": key_path}
    if ctx.invoked_subcommand is not None:
        if any(v is not None for v in given.values()) or provenance is not None:
            raise click.UsageError(f"render options go without a subcommand, not with '{ctx.invoked_subcommand}'")
        return None
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise click.UsageError(f"missing option(s) {', '.join(missing)} (or use: binder extract | binder verify)")
    from tqdm import tqdm

    from kolm_audit.binder.render import render_binder
    from kolm_audit.keys import load_private_key

    assert report is not None and artifact is not None and log_path is not None and out is not None
    key = load_private_key(key_path, passphrase_env=passphrase_env)   # type: ignore[arg-type]
    with tqdm(total=1, desc="binder", unit="file", disable=not sys.stderr.isatty() or as_json, file=sys.stderr) as bar:
        result = render_binder(report=report, artifact=artifact, log=log_path, out=out, key=key,
                               provenance=provenance, embed=embed)
        bar.update(1)
    ev = result.evidence
    counts = ev.report["results"]["counts"]
    text = "\n".join([
        f"wrote {result.path} ({result.bytes} bytes, {result.pages} pages, PDF/A-3b)",
        f"  binder digest {result.digest}",
        f"  signed by {result.key_id} -> {result.signature}",
        f"  verdict {ev.report['results']['verdict']}: {counts['matched']}/{counts['receipts']} matched; "
        f"{len(ev.cited)} receipt(s) cited; log embedded: {ev.embedded_log}; {len(ev.documents)} document(s)",
        f"  check it: kolm-audit verify {result.path} --trust trust.toml"])
    emit(result.to_json(), as_json=as_json, text=text)
    return 0


@binder.command("extract")
@click.argument("pdf", type=_FILE)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="An absent or empty folder for the documents (and index.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the kolm.binder-index/1 document.")
def extract(pdf: Path, out_dir: Path, as_json: bool) -> int:
    """Write every document embedded in PDF to OUT, byte for byte (OUT/log is a log bundle)."""
    from kolm_audit.binder.extract import extract_binder

    index = extract_binder(pdf, out_dir)
    lines = [f"extracted {len(index['documents'])} document(s) from {pdf} into {out_dir}"]
    lines += [f"  {d['name']}  {d['bytes']} bytes  {d['digest']}" for d in index["documents"]]
    lines.append(f"  index: {out_dir / 'index.json'}")
    emit(index, as_json=as_json, text="\n".join(lines))
    return 0


def verify_pdf(pdf: Path, *, trust: Path | None, key: Path | None, signature: Path | None, as_json: bool) -> int:
    """``kolm-audit verify binder.pdf``: shared by ``binder verify`` and the top-level ``verify``."""
    from kolm_audit.binder.verify import failed_binder_report, verify_binder
    from kolm_audit.trust import load_policy

    try:
        policy = load_policy(trust=trust, keys=() if key is None else (key,), roles=("binder",),
                             what="the binder's signature")
        report = verify_binder(pdf, policy=policy, signature=signature)
    except KolmError as exc:
        if not as_json:
            raise
        emit(failed_binder_report(pdf, exc), as_json=True)
        click.echo(f"kolm-audit: {'NOT VERIFIED' if isinstance(exc, Finding) else 'error'}: {exc}", err=True)
        return exc.exit_code
    doc: dict[str, Any] = report.to_json()
    p = report.predicate
    lines = [f"verified binder {pdf}", f"  binder digest {report.binder_digest}",
             f"  report {p['report']['digest']} (verdict {p['report']['verdict']})",
             f"  artifact {p['artifact']['name']} {p['artifact']['version']} {p['artifact']['digest']}",
             f"  log {p['log']['origin']}: {p['log']['size']} leaves, embedded {p['log']['embedded']}",
             f"  {len(p['documents'])} embedded document(s), every digest as signed",
             f"  PDF/A-3b structure: {len(report.pdfa_checks)} checks passed (veraPDF is the external authority)"]
    lines += [f"  signed by '{s.name}' ({s.key_id}) as {s.role}" for s in report.signers]
    emit(doc, as_json=as_json, text="\n".join(lines))
    return 0


@binder.command("verify")
@click.argument("pdf", type=_FILE)
@click.option("--trust", type=_FILE, help="trust.toml policy (a key with the 'binder' role).")
@click.option("--key", "key_path", type=_FILE, help="Trust this one public key (SPKI PEM) for role 'binder'.")
@click.option("--signature", type=_FILE, help="The detached signature (default: PDF.sig).")
@click.option("--json", "as_json", is_flag=True, help="Print a kolm.binder-verify-report/1 document.")
def verify(pdf: Path, trust: Path | None, key_path: Path | None, signature: Path | None, as_json: bool) -> int:
    """Verify a binder: signature (role binder), every embedded document's digest, PDF/A structure."""
    return verify_pdf(pdf, trust=trust, key=key_path, signature=signature, as_json=as_json)
