"""``ipfloater-one``: the OpenNebula side's admin tool (run as oneadmin on the front-end).

    ipfloater-one [--config F] [--json] [-v] install-hooks [--dir DIR] [--dry-run]
    ipfloater-one [--json] [-v] install-remotes [--remotes DIR] [--dry-run]
    ipfloater-one [--config F] [--json] [-v] sync
    ipfloater-one [--config F] [--json] [-v] show VMID
    ipfloater-one [--config F] [--json] [-v] quota [USER|GROUP]

Human-readable output by default, ``--json`` for scripts (also accepted after the
command). Every error is one line on stderr; exit 1 on errors, 2 on bad arguments or a
bad configuration (nothing was tried then).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import pyone

from ..cliutil import OneLineArgumentParser, anywhere, fail
from ..client import ApiError
from . import rpc
from .config import ConfigError, load_one_config
from .driver import clients_from_config, desired_with_pools, held_by_vm, read_vm, sync_all
from .fipspec import FipSpec, vm_phase
from .hookinstall import TemplateError, default_hooks_dir, install_hooks, read_templates
from .plan import owner_for, ownership_errors, plan_steps
from .quota import parse_subject_pool, usage, usage_lines
from .remotesinstall import RemotesError, default_remotes_dir, install_remotes
from .shipped import hooks_dir

PROG = "ipfloater-one"
EXIT_ERROR = 1
EXIT_USAGE = 2  # also what OneLineArgumentParser exits with


def _vm_id(value: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > 2**31 - 1:
        raise argparse.ArgumentTypeError(f"VMID: {value!r} is not a VM ID (0-2147483647)")
    return int(text)


class Failure(Exception):
    """A command that could not run; one line."""


def build_parser() -> argparse.ArgumentParser:
    common = anywhere((("--json",), "machine-readable JSON output (before or after the command)"))
    parser = OneLineArgumentParser(prog=PROG, parents=[common],
                     description="Floating IPs for OpenNebula VMs: hook registration, "
                     "full resync and per-VM inspection.")
    parser.add_argument("--config", help="driver config (default $IPFLOATER_ONE_CONF, else "
                        "/etc/one/ipfloater.conf)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=OneLineArgumentParser)
    p = sub.add_parser("install-hooks", parents=[common],
                       help="register the hook templates with oned (idempotent by NAME)")
    p.add_argument("--dir", type=Path, default=None,
                   help="directory of *.hook templates (default: the ones shipped with "
                   f"the package, {hooks_dir() or 'missing'})")
    p.add_argument("--dry-run", action="store_true", help="only say what would change")
    p = sub.add_parser("install-remotes", parents=[common],
                       help="put the hook script in OpenNebula's remotes, run by this "
                       "Python (idempotent)")
    p.add_argument("--remotes", type=Path, default=None,
                   help="OpenNebula's remotes folder (default $ONE_LOCATION/var/remotes "
                   "when ONE_LOCATION is set, else /var/lib/one/remotes)")
    p.add_argument("--dry-run", action="store_true", help="only say what would change")
    sub.add_parser("sync", parents=[common],
                   help="converge every VM and release addresses of VMs that are gone")
    p = sub.add_parser("show", parents=[common],
                       help="desired vs actual floating IPs of one VM (changes nothing)")
    p.add_argument("vm_id", type=_vm_id, metavar="VMID")
    p = sub.add_parser("quota", parents=[common],
                       help="floating-IP limits and usage of users and groups (changes nothing)")
    p.add_argument("who", nargs="?", metavar="USER|GROUP",
                   help="a user or group, by name or ID (default: every user and group that "
                   "holds addresses or has a limit in its template)")
    return parser


def _clients(args) -> Tuple[Any, Any, Any]:
    config = load_one_config(args.config)
    one, daemon = clients_from_config(config)
    return config, one, daemon


def cmd_install_hooks(args) -> Tuple[dict, str, bool]:
    templates = read_templates(args.dir or default_hooks_dir())
    config = load_one_config(args.config)
    one = rpc.connect(config.one_xmlrpc, config.session(), config.one_timeout)
    done = install_hooks(one, templates, dry_run=args.dry_run)
    lines = [f"{d['action']:<16} {d['name']}" + (f" (ID {d['id']})" if d["id"] is not None
                                                  else "") for d in done]
    return {"hooks": done}, "\n".join(lines), True


def cmd_install_remotes(args) -> Tuple[dict, str, bool]:
    done = install_remotes(args.remotes or default_remotes_dir(), dry_run=args.dry_run)
    return done, f"{done['action']:<16} {done['path']} (python {done['python']})", True


def cmd_sync(args) -> Tuple[dict, str, bool]:
    config, one, daemon = _clients(args)
    out = sync_all(one, daemon, lock_dir=config.lock_dir, quota_default=config.floating_ip_quota)
    data = out.as_dict()
    lines = [f"converged {data['converged']} VM(s), released {len(data['released'])} "
             f"address(es), {len(data['errors'])} error(s)"]
    lines += [f"released {r['public_ip']} (VM {r['vm_id']})" for r in data["released"]]
    lines += [f"error: {e}" for e in data["errors"]]
    return data, "\n".join(lines), out.ok


def cmd_show(args) -> Tuple[dict, str, bool]:
    config, one, daemon = _clients(args)
    try:
        vm = read_vm(one, args.vm_id)
    except pyone.OneNoExistsException:
        raise Failure(f"VM {args.vm_id} does not exist") from None
    phase = vm_phase(vm)
    spec = desired_with_pools(one, vm) if phase == "hold" else FipSpec()
    held = held_by_vm(daemon, vm.id)
    steps = plan_steps(vm, phase, spec, held)
    data = {
        "vm_id": vm.id, "name": vm.name, "owner": owner_for(vm),
        "state": f"{vm.state_name}/{vm.lcm_state_name}", "phase": phase,
        "desired": [{"nic_id": r.nic_id, "private_ip": str(r.private_ip),
                     "public_ip": str(r.public_ip) if r.public_ip else None, "pool": r.pool}
                    for r in spec.requests],
        "actual": [{"nic_id": h.nic_id, "public_ip": h.public_ip, "private_ip": h.private_ip,
                    "owner": h.owner, "pool": h.pool} for _, h in sorted(held.items())],
        "pending": [{"action": s.action, "nic_id": s.nic_id, "public_ip": s.public_ip,
                     "private_ip": s.private_ip, "reason": s.reason} for s in steps],
        "errors": list(spec.errors) + ownership_errors(vm, held),
        "user_template": {k: v for k, v in sorted(vm.user_template.items())
                          if k.startswith("FLOATING_IP")},
    }
    data["in_sync"] = not steps and not data["errors"]
    lines = [f"VM {vm.id} {vm.name!r} ({data['owner']}) {data['state']}: phase {phase}"]
    lines += ["desired: " + (", ".join(f"NIC {d['nic_id']} {d['private_ip']} -> "
                                        f"{d['public_ip'] or 'any'}" for d in data["desired"])
                             or "none")]
    lines += ["actual:  " + (", ".join(f"NIC {a['nic_id']} {a['public_ip']} -> "
                                        f"{a['private_ip'] or '(not associated)'}"
                                        for a in data["actual"]) or "none")]
    lines += ["pending: " + ("; ".join(f"{p['action']} NIC {p['nic_id']} ({p['reason']})"
                                       for p in data["pending"]) or "none")]
    lines += ["errors:  " + ("; ".join(data["errors"]) or "none")]
    lines += ["template: " + (" ".join(f"{k}={json.dumps(v)}"
                                       for k, v in data["user_template"].items()) or "-")]
    return data, "\n".join(lines), True


def cmd_quota(args) -> Tuple[dict, str, bool]:
    config, one, daemon = _clients(args)
    subjects = []
    for kind, method in (("user", "one.userpool.info"), ("group", "one.grouppool.info")):
        xml = rpc.call_raw(one, method)
        if not isinstance(xml, str):
            raise Failure(f"{method}: oned answered {type(xml).__name__}, not a document")
        subjects += parse_subject_pool(xml, kind)
    if args.who is not None:
        subjects = [s for s in subjects if args.who in (s.name, str(s.id))]
        if not subjects:
            raise Failure(f"USER|GROUP: {args.who!r} is no user or group (name or ID)")
    rows = usage(subjects, daemon.list(), config.floating_ip_quota, everyone=args.who is not None)
    ok = not any(r["errors"] for r in rows)
    return {"quotas": rows}, "\n".join(usage_lines(rows)), ok


COMMANDS = {"install-hooks": cmd_install_hooks, "install-remotes": cmd_install_remotes,
            "sync": cmd_sync, "show": cmd_show, "quota": cmd_quota}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    logging.basicConfig(stream=sys.stderr, format=f"{PROG}: %(levelname)s %(message)s",
                        level=logging.INFO if args.verbose else logging.WARNING)
    try:
        data, text, ok = COMMANDS[args.command](args)
    except ConfigError as exc:
        return _fail(exc, EXIT_USAGE)
    except (TemplateError, RemotesError, Failure, ValueError) as exc:
        return _fail(exc)
    except ApiError as exc:
        return _fail(exc.message)
    except rpc.ONE_ERRORS as exc:
        return _fail(rpc.describe_one_error(exc))
    print(json.dumps(data, sort_keys=True) if as_json else text)
    return 0 if ok else EXIT_ERROR


def _fail(message: object, code: int = EXIT_ERROR) -> int:
    return fail(PROG, message, code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
