"""``microcalcai models``: list (and verify) the models of a manifest."""

from __future__ import annotations

import argparse

from MicrocalcAI.cli.common import EXIT_ERROR, EXIT_OK
from MicrocalcAI.core.errors import MicrocalcAIError

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = subparsers.add_parser("models", help="list the models of the bundled manifest (or --manifest)")
    models.add_argument("--manifest", default=None)
    models.add_argument("--verify", action="store_true", help="also check every weights file's sha256")
    models.set_defaults(func=run, quiet=False, verbose=False)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.core.detect.manifest import load_manifest, verify_weights

    default, specs = load_manifest(args.manifest)
    failed = 0
    for spec in specs:
        mark = "*" if spec.name == default else " "
        status = ""
        if args.verify:
            try:
                verify_weights(spec)
                status = "  sha256 OK"
            except MicrocalcAIError as exc:
                failed += 1
                status = f"  FAILED: {exc}"
        print(
            f"{mark} {spec.name} {spec.version}  backbone={spec.backbone} spacing={spec.spacing_mm} mm  {spec.weights_path}{status}"
        )
        print(f"    {spec.intended_use}")
    return EXIT_ERROR if failed else EXIT_OK
