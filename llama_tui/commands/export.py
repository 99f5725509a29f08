"""`llama-tui export kubernetes`: a fleet shape (a sweep's best, a preset, or fleet options) as Kubernetes manifests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llama_tui.commands.fleet import add_fleet_options
from llama_tui.commands.output import info


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a fleet shape as manifests for another platform (Kubernetes)")
    esub = p.add_subparsers(dest="export_command", metavar="TARGET", required=True)
    k = esub.add_parser(
        "kubernetes", help="print Kubernetes manifests: llama-server StatefulSet, Services, NGINX ConfigMap + Deployment",
        description="Print multi-document YAML for `kubectl apply -f -`: the fleet's shape (from --from-sweep DIR, "
        "--preset, or the fleet options) as a StatefulSet of llama-server with the same flags, a headless Service, "
        "a NetworkPolicy, a ConfigMap with the NGINX config rendered from the same templates, and an NGINX "
        "Deployment and Service. The output holds a generated internal key (a Secret) unless "
        "--internal-key-secret names an existing one.")
    k.add_argument("--from-sweep", dest="from_sweep", type=Path, metavar="DIR",
                   help="the best shape of this sweep directory (the rule `sweep report --apply` uses)")
    add_fleet_options(k)
    g = k.add_argument_group("kubernetes")
    g.add_argument("--namespace", default="default", help="namespace of every object (default: default)")
    g.add_argument("--name", default="llama", help="name of the StatefulSet; the other objects derive from it")
    g.add_argument("--image", help="llama-server image (default: ghcr.io/ggml-org/llama.cpp:server, or "
                   ":server-cuda when the shape uses GPUs)")
    g.add_argument("--server-binary", dest="server_binary", default="/app/llama-server",
                   help="llama-server's path in the image (default: /app/llama-server)")
    g.add_argument("--nginx-image", dest="nginx_image", default="nginx:1.27", help="NGINX image (default: nginx:1.27)")
    vol = g.add_mutually_exclusive_group()
    vol.add_argument("--model-pvc", dest="model_pvc", metavar="CLAIM",
                     help="PersistentVolumeClaim holding the model, mounted read-only (default: llama-models)")
    vol.add_argument("--model-host-path", dest="model_host_path", metavar="DIR",
                     help="directory holding the model on every node, instead of a claim")
    g.add_argument("--model-file", dest="model_file", metavar="PATH",
                   help="the model's path inside the volume (default: the model's file name)")
    g.add_argument("--internal-key-secret", dest="internal_key_secret", metavar="NAME",
                   help="an existing Secret (key api-key) with the instances' internal key; default: generate one")
    g.add_argument("--api-key-secret", dest="api_key_secret", metavar="NAME",
                   help="an existing Secret (key api-key) with the API key clients must send")
    g.add_argument("--gpus-per-pod", dest="gpus_per_pod", type=int, default=1, metavar="N",
                   help="nvidia.com/gpu per instance when the shape uses GPUs (default 1)")
    g.add_argument("--memory", metavar="QUANTITY", help="each instance's memory request, e.g. 6Gi "
                   "(default: the fit estimate, when the model file is on this machine)")
    g.add_argument("--cluster-domain", dest="cluster_domain", default="cluster.local", help="default: cluster.local")
    g.add_argument("--service-type", dest="service_type", default="ClusterIP",
                   help="NGINX's Service: ClusterIP (default), NodePort or LoadBalancer")
    g.add_argument("--nginx-replicas", dest="nginx_replicas", type=int, default=1, metavar="N", help="default 1")
    g.add_argument("--nginx-workers", dest="nginx_workers", type=int, default=2, metavar="N",
                   help="NGINX worker processes per replica (default 2)")
    g.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE (mode 0600) instead of stdout")
    k.set_defaults(func=run_kubernetes)


def run_kubernetes(args: argparse.Namespace) -> int:
    from llama_tui.core import config, export, paths, sweep
    from llama_tui.core.errors import UserError
    from llama_tui.core.sweep import results

    options = export.KubeOptions(
        namespace=args.namespace, name=args.name, image=args.image, nginx_image=args.nginx_image,
        server_binary=args.server_binary, model_pvc=args.model_pvc, model_host_path=args.model_host_path,
        model_file=args.model_file, internal_key_secret=args.internal_key_secret, api_key_secret=args.api_key_secret,
        gpus_per_pod=args.gpus_per_pod, memory=args.memory, cluster_domain=args.cluster_domain,
        service_type=args.service_type, nginx_replicas=args.nginx_replicas, nginx_workers=args.nginx_workers)
    options.validate()  # bad names fail before a sweep or a model is read
    cli = config.fleet_overrides(args)
    if args.from_sweep is not None:
        out = args.from_sweep.expanduser()
        if not (out / results.BEST).is_file():
            raise UserError(f"{out} has no {results.BEST}: it is not the output directory of a sweep",
                            "pass the --out directory of a finished `llama-tui sweep`")
        best = sweep.best_shape(out)
        settings = best.settings(preset=args.preset, cli=cli)
        source = (f"the best shape of {out}: {best.row['instances']} x {best.row['parallel']}, "
                  f"{best.row.get('output_tok_s')} tok/s at concurrency {best.row.get('concurrency')}")
    else:
        settings = config.load_settings(preset=args.preset, cli=cli)
        source = f"preset {settings.preset}" if settings.preset else "the fleet options"
    ex = export.build(settings, options)
    header = (f"# llama-tui export kubernetes: {ex.spec.instances} instances x {ex.spec.parallel} slots, "
              f"{ex.threads} threads each, from {source}\n"
              f"# kubectl apply -f FILE; NGINX: service/{options.name}-nginx port {ex.spec.nginx_port} in namespace "
              f"{options.namespace}\n")
    text = export.to_yaml(export.manifests(ex), header)
    if ex.memory_bytes is None and options.memory is None:
        info(f"note: no memory request: the model ({ex.model_file}) is not on this machine to estimate it "
             "(pass --memory QUANTITY)")
    if options.service_type != "ClusterIP" and not (ex.api_key or options.api_key_secret):
        info(f"WARNING: NGINX's Service is a {options.service_type} WITHOUT an API key: anyone who can reach it can "
             "use the models (fix: --api-key-file FILE or --api-key-secret NAME)")
    if ex.internal_key is not None:
        info(f"note: the output holds a generated internal key (Secret {options.name}-internal-key); keep it private")
    if args.output is not None:
        paths.write_private(args.output.expanduser(), text)
        info(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0
