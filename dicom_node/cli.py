"""``m2unet-node``: a thin argparse front; every subcommand delegates to one module."""

from __future__ import annotations

import argparse
import sys

from dicom_node.config.model import CONFIG_ENV, DEFAULT_CONFIG_PATH


EPILOG = f"""\
config file: --config PATH (before or after the command), else ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH}.
exit status: 0 done; 1 the operation failed (e.g. a C-ECHO); 2 invalid config or argument,
with each problem on its own line on standard error as "key = value: why".

first steps:
  m2unet-node check-config          validate the config
  m2unet-node run                   start the node (Ctrl-C stops it)
  m2unet-node send-demo             in a second terminal: send a synthetic chest CT
  m2unet-node status                what was received, processed and delivered
"""

RELOAD_NOTE = (
    "The file is edited in place (comments and order kept) after validating the result; "
    "a running node applies the change within a few seconds, or at once on SIGHUP: no restart."
)


def _config_option() -> argparse.ArgumentParser:
    """``--config`` accepted after the command too (``m2unet-node ae list --config x.toml``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file (see m2unet-node --help)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2unet-node",
        description="DICOM node: COVID-19 severity and lung lobes from chest CT (M2UNet).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )
    common = [_config_option()]
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "run",
        parents=common,
        help="run the node in the foreground (SCP, assembler, pipeline, sender)",
        description="Run the node in the foreground: receive, assemble series, run M2UNet, send results. "
        "SIGTERM or Ctrl-C stops it cleanly; SIGHUP re-reads the config.",
    )
    sub.add_parser(
        "check-config",
        parents=common,
        help="validate the config file; exit 2 on problems",
        description="Validate the whole config file: exit 0 with a summary, or print each problem "
        'on its own line ("key = value: why") and exit 2.',
    )

    ae = sub.add_parser(
        "ae",
        parents=common,
        help="scanners allowed to send ([[sources]])",
        description="The scanners allowed to send to the node ([[sources]]). " + RELOAD_NOTE,
    )
    ae_sub = ae.add_subparsers(dest="action", required=True, metavar="ACTION")
    ae_sub.add_parser("list", parents=common, help="list allowed sources")
    ae_add = ae_sub.add_parser(
        "add", parents=common, help="allow a source", description="Allow a calling AE title to send. " + RELOAD_NOTE
    )
    ae_add.add_argument("ae_title", metavar="AE_TITLE", help="the scanner's calling AE title (1-16 characters)")
    ae_add.add_argument("--host", help="IP address or host name the association must also come from (default: any)")
    ae_remove = ae_sub.add_parser(
        "remove",
        parents=common,
        help="remove a source",
        description="Remove every [[sources]] entry with this AE title. " + RELOAD_NOTE,
    )
    ae_remove.add_argument("ae_title", metavar="AE_TITLE")

    dest = sub.add_parser(
        "dest",
        parents=common,
        help="where results are sent ([[destinations]])",
        description="Where SEG, SR and summary images are sent ([[destinations]]). " + RELOAD_NOTE,
    )
    dest_sub = dest.add_subparsers(dest="action", required=True, metavar="ACTION")
    dest_sub.add_parser("list", parents=common, help="list destinations")
    dest_add = dest_sub.add_parser(
        "add", parents=common, help="add a destination", description="Add a destination for results. " + RELOAD_NOTE
    )
    dest_add.add_argument("name", metavar="NAME", help="a short name (letters, digits, '_', '.', '-')")
    dest_add.add_argument("ae_title", metavar="AE_TITLE", help="the destination's AE title")
    dest_add.add_argument("host", metavar="HOST", help="its IP address or host name")
    dest_add.add_argument("port", metavar="PORT", help="its DICOM port (1-65535)")
    dest_tls = dest_add.add_argument_group(
        "DICOM TLS to this destination",
        "Any of these options turns TLS on for the destination. Without --tls-ca-certificates the "
        "destination's certificate is verified against [tls] ca_certificates, else the system's trust "
        "store; without --tls-certificate/--tls-private-key the node's [tls] certificate and key are "
        "offered when set (mutual TLS), else no client certificate. Paths are written absolute.",
    )
    dest_tls.add_argument("--tls", action="store_true", help="send to it over DICOM TLS (tls = true)")
    dest_tls.add_argument("--tls-ca-certificates", metavar="PEM", help="CA certificate(s) its certificate is verified against")
    dest_tls.add_argument("--tls-certificate", metavar="PEM", help="client certificate this node presents (mutual TLS)")
    dest_tls.add_argument("--tls-private-key", metavar="PEM", help="the private key of --tls-certificate")
    dest_tls.add_argument(
        "--no-tls-verify-hostname",
        dest="tls_verify_hostname",
        action="store_false",
        default=None,
        help="do not require its certificate to name HOST (the certificate is still verified against the CA)",
    )
    dest_remove = dest_sub.add_parser("remove", parents=common, help="remove a destination")
    dest_remove.add_argument("name", metavar="NAME")
    dest_echo = dest_sub.add_parser(
        "echo",
        parents=common,
        help="send a C-ECHO to a destination",
        description="Open an association from the node's AE title and send a C-ECHO: "
        "exit 0 on success, 1 with the reason (refused, rejected, timeout) otherwise.",
    )
    dest_echo.add_argument("name", metavar="NAME")

    web = sub.add_parser(
        "web",
        parents=common,
        help="the web console ([web], [[web_users]])",
        description="Logins of the web console ([[web_users]]). " + RELOAD_NOTE,
    )
    web_sub = web.add_subparsers(dest="action", required=True, metavar="ACTION")
    web_password = web_sub.add_parser(
        "set-password",
        parents=common,
        help="add a console user or change its password (read from standard input)",
        description="Read the password from standard input (one line, at least 8 characters) and store "
        "only its argon2id hash as the [[web_users]] entry USER. " + RELOAD_NOTE,
    )
    web_password.add_argument("user", metavar="USER", help="the login name")
    web_password.add_argument("--role", choices=("admin", "viewer"), default="viewer", help="default: viewer (reads only)")

    process = sub.add_parser(
        "process", parents=common, help="run the pipeline offline on a folder holding one CT series"
    )
    process.add_argument("series_dir", metavar="SERIES_DIR")
    process.add_argument("--out", required=True, metavar="OUT_DIR", help="where seg.dcm and sr.dcm go")
    process.add_argument("--weights", help="weights file (default: [model] weights of the config)")
    process.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: [model] device)")

    status = sub.add_parser(
        "status", parents=common, help="series received, queued, running, done, failed; pending deliveries"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")

    retry = sub.add_parser(
        "retry",
        parents=common,
        help="try a failed series again: its job, or its deliveries a destination refused",
        description="Re-queue a series whose job failed (the pipeline runs it again) or whose results a "
        "destination refused for good (the sender sends them again); a series waiting out a full disk is "
        "retried at once. Safe while the node runs: it picks the change up within a second. Exit 0 when "
        "something was re-queued, 1 when nothing could be (retention deleted what is needed: re-send the "
        "series), 2 for an unknown SERIES_UID or a series with nothing failed.",
    )
    retry.add_argument("series_uid", metavar="SERIES_UID", help="the Series Instance UID, as m2unet-node status shows it")

    purge = sub.add_parser(
        "purge",
        parents=common,
        help="run a retention pass now ([retention]); --dry-run shows what it would delete",
        description="Delete what [retention] says is due: received instances of series that are final and "
        "delivered (received_days), result folders (results_days), stray outbox copies, old quarantined "
        "files. The node runs the same pass every check_interval; this runs one now and is safe while "
        "the node runs. --dry-run deletes nothing and lists what would go, and the series held back "
        "because a result is not delivered.",
    )
    purge.add_argument("--dry-run", action="store_true", help="delete nothing; list what the pass would delete")
    purge.add_argument("--json", action="store_true", help="machine-readable output")

    worker = sub.add_parser(
        "worker",
        parents=common,
        help='a pipeline worker for [pipeline] executor = "celery", in the foreground',
        description="Serve [pipeline] queue of the broker: load the weights once, then run each published "
        "series (read from data_dir, results written there for the node to deliver). One worker per GPU. "
        "SIGTERM finishes the job in hand and exits 0.",
    )
    worker.add_argument("--device", help="cpu | cuda | cuda:N (default: [model] device)")
    worker.add_argument("--name", help="worker name in status (default: host-device-pid)")

    demo = sub.add_parser("send-demo", parents=common, help="generate a synthetic chest CT and C-STORE it to a node")
    demo.add_argument("--host", default=None, help="node address (default: from the config, else 127.0.0.1)")
    demo.add_argument("--port", type=int, default=None, help="node port (default: [node] port)")
    demo.add_argument("--called-ae", default=None, help="node AE title (default: [node] ae_title)")
    demo.add_argument("--calling-ae", default=None, help="our AE title (default: the first [[sources]])")
    demo.add_argument("--seed", type=int, default=0, help="phantom seed")
    demo.add_argument("--slices", type=int, default=None, help="number of slices (default: the phantom's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd = args.command
    if cmd == "run":
        from dicom_node.node import run_node

        return run_node(args.config)
    if cmd == "check-config":
        from dicom_node.config.admin import check_config

        return check_config(args.config)
    if cmd == "ae":
        from dicom_node.config import admin

        if args.action == "list":
            return admin.ae_list(args.config)
        if args.action == "add":
            return admin.ae_add(args.config, args.ae_title, host=args.host)
        return admin.ae_remove(args.config, args.ae_title)
    if cmd == "dest":
        from dicom_node.config import admin

        if args.action == "list":
            return admin.dest_list(args.config)
        if args.action == "add":
            return admin.dest_add(args.config, args.name, args.ae_title, args.host, args.port, **_dest_tls_arguments(args))
        if args.action == "remove":
            return admin.dest_remove(args.config, args.name)
        return admin.dest_echo(args.config, args.name)
    if cmd == "web":
        from dicom_node.web.passwords import set_password

        return set_password(args.config, args.user, args.role)
    if cmd == "process":
        from dicom_node.pipeline.offline import process_series

        return process_series(args.series_dir, args.out, config_path=args.config, weights=args.weights, device=args.device)
    if cmd == "status":
        from dicom_node.ops.status import print_status

        return print_status(args.config, as_json=args.json)
    if cmd == "retry":
        from dicom_node.ops.retry import run_retry

        return run_retry(args.config, args.series_uid)
    if cmd == "purge":
        from dicom_node.ops.purge import run_purge

        return run_purge(args.config, dry_run=args.dry_run, as_json=args.json)
    if cmd == "worker":
        from dicom_node.config.model import ConfigError, load_config
        from dicom_node.ops.logs import configure_logging
        from dicom_node.pipeline.celery_executor import run_worker

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"m2unet-node worker: {exc}", file=sys.stderr)
            return 2
        configure_logging(config.node.log_format)
        return run_worker(config, device=args.device, name=args.name)
    if cmd == "send-demo":
        from dicom_node.ops.demo import send_demo

        return send_demo(
            args.config,
            host=args.host,
            port=args.port,
            called_ae=args.called_ae,
            calling_ae=args.calling_ae,
            seed=args.seed,
            slices=args.slices,
        )
    raise AssertionError(cmd)


# --- dest add's TLS options --------------------------------------------


def _dest_tls_arguments(args) -> dict:
    """The TLS options of ``dest add`` given on the command line (empty: a plain destination)."""
    given = {
        key: getattr(args, key)
        for key in ("tls_ca_certificates", "tls_certificate", "tls_private_key", "tls_verify_hostname")
        if getattr(args, key) is not None
    }
    return {"tls": True, **given} if args.tls or given else {}


if __name__ == "__main__":
    sys.exit(main())
