"""``kolm-audit compile | rebuild``: build a signed artifact from a recipe, and check that a recipe builds it.

    kolm-audit compile examples/loan-triage/recipe.toml --out model.kolm --key keys/artifact.pem
    kolm-audit rebuild model.kolm --recipe examples/loan-triage/recipe.toml

``compile`` exits 0 when the artifact was signed and written, 1 when the K-score gate failed (nothing written; the
report names the failing components), 2 on bad input (a pinned digest that does not match, a malformed recipe or
data line: nothing written). ``rebuild`` exits 0 when the fresh build is identical, 1 otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kolm_audit.cli import emit

_BACKENDS = ("auto", "numpy", "cpu", "cuda")


def _gate_line(kscore: dict[str, Any]) -> str:
    comps = " ".join(f"{c} {v}" for c, v in kscore["components"].items())
    gate = kscore["gate"]
    mins = ", ".join([f"K >= {gate['min_k']}"] + [f"{c} >= {v}" for c, v in gate["min_components"].items()])
    return f"K-score {kscore['k']}: {comps}  (gate: {mins}, V = 1000)"


@click.command("compile")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .kolm file.")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Artifact signing key (PKCS#8 PEM); also signs the provenance statement.")
@click.option("--passphrase-env", metavar="VAR", help="Env var holding the key's passphrase.")
@click.option("--backend", type=click.Choice(_BACKENDS), default="auto", show_default=True,
              help="Runtime backend for features and checks (never changes a byte of the artifact).")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads of the runtime backend.")
@click.option("--sidecar", is_flag=True, help="Also write OUT.sig for the OpenSSF model_signing CLI (ECDSA key).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the kolm.compile-report/1 document here (also when the gate fails).")
@click.option("--json", "as_json", is_flag=True, help="Print the kolm.compile-report/1 document.")
def compile_(recipe: Path, out: Path, key_path: Path, passphrase_env: str | None, backend: str,
             threads: int | None, sidecar: bool, report_path: Path | None, as_json: bool) -> int:
    """Build, score, gate and sign the artifact a recipe describes (writes OUT and OUT.provenance.json)."""
    from kolm_audit.compile.build import compile_recipe
    from kolm_audit.compile.progress import terminal_bars
    from kolm_audit.keys import load_private_key

    if report_path is not None and not report_path.parent.is_dir():
        from kolm_audit.errors import InputError

        raise InputError("folder of the report does not exist", file=str(report_path.parent), field="--report")
    key = load_private_key(key_path, passphrase_env=passphrase_env)
    if sidecar and key.key_type != "ecdsa-p256":
        from kolm_audit.errors import InputError

        raise InputError("--sidecar needs an ECDSA P-256 key: model_signing verifies elliptic-curve keys only",
                         field="--key", expected="ecdsa-p256", actual=key.key_type)
    result = compile_recipe(recipe, out=out, key=key, backend=backend, threads=threads,
                            bars=terminal_bars(enabled=not as_json))
    report = result.report
    for warning in report["warnings"]:
        click.echo(f"kolm-audit: warning: {warning}", err=True)
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    d = report["data"]
    lines = [f"recipe: {recipe} ({report['recipe']['digest']})",
             f"trainer: {report['trainer']['kind']} ({report['trainer']['spec']}) — {report['trainer']['promise']}",
             f"data: train {d['train']}, eval {d['eval']}, probes {d['probes']}"
             + (f", eval texts also in train: {d['eval_overlap']}" if d["eval_overlap"] else ""),
             _gate_line(report["kscore"])]
    for m in report["crosscheck"]["mismatches"]:
        lines.append(f"  V: eval case {m['case']} differs on {', '.join(m['differing'])} (vs {m['reference']})")
    if result.passed:
        assert result.artifact is not None
        lines += ["gate: passed",
                  f"wrote {out} (artifact digest {result.artifact.digest}, signed by {key.key_id})",
                  f"provenance: {result.provenance}"]
        if sidecar:
            from kolm_audit.artifact.sidecar import write_sidecar

            lines.append(f"sidecar: {write_sidecar(out, key)}")
    else:
        from kolm_audit.compile.kscore import describe_failure

        lines += [f"gate: FAILED — {describe_failure(report['kscore'])}", "nothing written, nothing signed"]
    emit(report, as_json=as_json, text="\n".join(lines))
    return 0 if result.passed else 1


@click.command()
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--recipe", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The recipe.")
@click.option("--backend", type=click.Choice(_BACKENDS), default="auto", show_default=True,
              help="Runtime backend of the fresh build (never changes a byte).")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads of the runtime backend.")
@click.option("--keep", type=click.Path(dir_okay=False, path_type=Path), help="Keep the rebuilt (unsigned) artifact.")
@click.option("--json", "as_json", is_flag=True, help="Print the kolm.rebuild-report/1 document.")
def rebuild(artifact: Path, recipe: Path, backend: str, threads: int | None, keep: Path | None,
            as_json: bool) -> int:
    """Recompile RECIPE in a fresh process and compare with ARTIFACT: identical, environment-differs or mismatch."""
    from kolm_audit.compile.rebuild import rebuild as run_rebuild

    result = run_rebuild(artifact, recipe, backend=backend, threads=threads, progress=not as_json, keep=keep)
    lines = [result.status, f"artifact: {result.original_digest}", f"rebuilt:  {result.rebuilt_digest}"]
    for e in result.environment_differences:
        lines.append(f"  environment {e['name']}: recorded {e['recorded']}, here {e['here']}")
    if result.diff is not None:
        details = result.diff["details"]
        tensors = details["tensors"]
        lines.append(f"manifest fields differing: {len(details['manifest'])}; tensors changed: "
                     f"{len(tensors['changed'])}, unchanged: {tensors['unchanged']}")
        for p in details["manifest"][:8]:
            lines.append(f"  {p['path']}: {p['a']} -> {p['b']}")
        for t in tensors["changed"][:8]:
            lines.append(f"  {t['name']}: {t['differing']} of {t['elements']} elements differ, max |diff| "
                         f"{t['max_abs_difference']}, first at {t['first_index']}")
    emit(result.to_json(), as_json=as_json, text="\n".join(lines))
    return 0 if result.status == "identical" else 1
