"""``mlkube argo render | lint | submit``: the Argo objects from the command line.

Imports nothing heavy until a subcommand runs, so ``mlkube --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlkube import spec
from mlkube.errors import MlkubeError


def add_parser(subparsers: Any) -> None:
    """Register ``mlkube argo`` and its subcommands."""
    argo = subparsers.add_parser("argo", help="render, lint and submit the Argo Workflows objects")
    sub = argo.add_subparsers(dest="argo_command", required=True)

    render = sub.add_parser("render", help="write the Argo YAML (regenerates workflows/)")
    _render_options(render)
    render.add_argument("--out", type=Path, default=Path("workflows"),
                        help="directory to write to (default: workflows)")
    render.add_argument("--check", action="store_true",
                        help="write nothing; fail when the files under --out are stale")
    render.set_defaults(handler=_render)

    lint = sub.add_parser("lint", help="validate rendered YAML offline (strict schemas)")
    lint.add_argument("paths", nargs="*", type=Path,
                      help="YAML files to check (default: a fresh render)")
    lint.add_argument("--schema", type=Path, help="Argo JSON schema (default: $MLKUBE_ARGO_"
                      "SCHEMA or the copy shipped with mlkube, Argo Workflows v4.1)")
    lint.add_argument("--kserve-crd", type=Path, help="KServe InferenceService CRD (default: "
                      "$MLKUBE_KSERVE_CRD or the copy shipped with mlkube, KServe v0.20)")
    lint.set_defaults(handler=_lint)

    submit = sub.add_parser("submit", help="submit to an Argo Server (templates first)")
    submit.add_argument("target", choices=("templates", "lifecycle", "retrain"),
                        help="templates: install both WorkflowTemplates; lifecycle: run it "
                             "once; retrain: install the CronWorkflow")
    _render_options(submit)
    submit.add_argument("--server", help="Argo Server URL (default: $ARGO_SERVER)")
    submit.add_argument("--token", help="bearer token (default: $ARGO_TOKEN)")
    submit.add_argument("--insecure", action="store_true", help="skip TLS verification")
    submit.set_defaults(handler=_submit)


def _render_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", help="namespace (render default: none, the objects take "
                                            "the one they are applied to; submit default: "
                                            "$ARGO_NAMESPACE, else ml, the platform's)")
    parser.add_argument("--workers", type=int, help="tune workers fanned out (default 2)")
    parser.add_argument("--parallelism", type=int, help="lifecycle pods at once (default 2)")
    parser.add_argument("--schedule", action="append", dest="schedules",
                        help="retraining cron expression; repeat for more (default 0 3 * * *)")
    parser.add_argument("--gpu-product", help="pin training to this nvidia.com/gpu.product")
    parser.add_argument("--artifact-pvc", help="shared ReadWriteMany claim (default "
                                               "mlkube-artifacts)")
    parser.add_argument("--mlflow-tracking-uri", help=f"MLflow server (default {spec.CLUSTER_MLFLOW_URI})")
    parser.add_argument("--service-name", help="the serving objects' name (default mlkube-demo)")
    parser.add_argument("--model-name", help="the registered model (the config's "
                                             "registry.model_name): register and deploy hold "
                                             "its mutex, mlkube-<model> (default mlkube-demo)")
    parser.add_argument("--cpu-limit", help="CPU limit of every step container, for a namespace "
                                            "whose ResourceQuota tracks limits.cpu (default none)")
    parser.add_argument("--queue-name", help="Kueue LocalQueue every pod waits in (the "
                                             "kueue.x-k8s.io/queue-name label; default none)")
    parser.add_argument("--priority-class-name", help="PriorityClass of every pod (default none)")
    parser.add_argument("--train-nodes", type=int, help="nodes to train on; more than 1 runs an "
                                                        "Indexed Job under torchrun (default 1)")


def options_from(args: argparse.Namespace) -> Any:
    """RenderOptions from the flags given; defaults elsewhere."""
    from mlkube.argo.options import RenderOptions

    fields = ("namespace", "workers", "parallelism", "schedules", "gpu_product", "artifact_pvc",
              "mlflow_tracking_uri", "service_name", "model_name", "cpu_limit", "queue_name",
              "priority_class_name", "train_nodes")
    given = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    return RenderOptions(**given).validated()


def _render(args: argparse.Namespace) -> int:
    from mlkube.argo.render import render
    from mlkube.rendered import write_or_check

    return write_or_check(render(options_from(args)), args.out, check=args.check,
                          command="mlkube argo render")


def _lint(args: argparse.Namespace) -> int:
    import yaml

    from mlkube.argo import schema
    from mlkube.argo.render import load_documents, render

    validator = schema.Validator(
        argo_schema=args.schema or schema.default_schema_path(schema.ARGO_SCHEMA_ENV,
                                                              schema.ARGO_SCHEMA_FILE),
        kserve_crd=args.kserve_crd or schema.default_schema_path(schema.KSERVE_CRD_ENV,
                                                                 schema.KSERVE_CRD_FILE))
    if args.paths:
        docs = [(str(p), d) for p in args.paths for d in load_documents(p)]
    else:
        docs = [(name, d) for name, text in render().items() for d in yaml.safe_load_all(text)]
    failures = 0
    for source, doc in docs:
        errors = validator.errors(doc)
        label = f"{source}: {doc.get('kind')} {doc.get('metadata', {}).get('name', '')}".rstrip()
        if errors:
            failures += 1
            print(f"{label}: {len(errors)} error(s)", file=sys.stderr)
            for line in errors[:20]:
                print(f"  {line}", file=sys.stderr)
        else:
            print(f"{label}: ok")
    if failures:
        raise MlkubeError(f"{failures} of {len(docs)} objects are invalid (listed above)")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from mlkube.argo.submit import ArgoServer, submit

    server = ArgoServer.from_env(url=args.server, namespace=args.namespace, token=args.token,
                                 verify_ssl=not args.insecure)
    for line in submit(args.target, server, options_from(args)):
        print(line)
    return 0
