"""The OpenNebula hook: ``ipfloater-hook [--call METHOD] [-v] [PAYLOAD]``.

onehem runs it for the state and API hooks in ``hooks/``. With ``ARGUMENTS_STDIN = yes``
the whole expanded ARGUMENTS string arrives on stdin (``<base64> --call one.vm.update``)
and argv is empty, so options are read from stdin too. Only the VM ID is taken from the
payload; ``converge_vm`` re-reads the VM. A failed API call (RESULT 0) changed nothing:
exit 0 with one line. Exit 0 on success; on any error exit non-zero with exactly ONE
line on stderr, which is what ``onehook show`` displays.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import BinaryIO, List, Optional, Sequence

from .. import logformat
from ..cliutil import OneLineArgumentParser, fail
from .config import ConfigError, load_one_config
from .driver import clients_from_config, converge_vm
from .payload import MAX_PAYLOAD_BYTES, PayloadError, decode_hook_payload

PROG = "ipfloater-hook"
log = logging.getLogger(PROG)


def _parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(prog=PROG, description="Converge the floating IPs of the VM named in an "
                "OpenNebula hook payload ($TEMPLATE or $API, base64).")
    p.add_argument("payload", nargs="*", help="the payload; default: read from stdin "
                   "(ARGUMENTS_STDIN = yes), which may also carry the options")
    p.add_argument("--call", help="the XML-RPC call an API hook is registered on, e.g. "
                   "one.vm.update (the $API payload does not name it)")
    p.add_argument("--config", help="driver config (default: $IPFLOATER_ONE_CONF, else "
                   "/etc/one/ipfloater.conf)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def _arguments(argv: Sequence[str], stdin: Optional[BinaryIO]) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_intermixed_args(list(argv))
    if not args.payload and stdin is not None and not stdin.isatty():
        data = stdin.read(MAX_PAYLOAD_BYTES + 4096)
        tokens: List[str] = data.decode("ascii", errors="replace").split()
        more = parser.parse_intermixed_args(tokens)
        args.payload = more.payload
        args.call = args.call or more.call
        args.config = args.config or more.config
        args.verbose = args.verbose or more.verbose
    return args


def _fail(message: object, code: int = 1) -> int:
    return fail(PROG, message, code)


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[BinaryIO] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stdin = sys.stdin.buffer if stdin is None and sys.stdin is not None else stdin
    args = _arguments(argv, stdin)  # bad options (argv or stdin): one line, exit 2
    logformat.setup(logging.DEBUG if args.verbose else logging.WARNING, "text",
                    f"{PROG}: %(levelname)s %(message)s")
    try:
        return _run(args)
    except Exception as exc:  # noqa: BLE001 - a hook must end with one line, not a trace
        log.debug("internal error", exc_info=True)
        return _fail(f"internal error: {type(exc).__name__}: {exc}")


def _run(args: argparse.Namespace) -> int:
    payload = "".join(args.payload)
    if not payload:
        return _fail("no payload: expected base64 $TEMPLATE or $API on stdin or as argument")
    try:
        event = decode_hook_payload(payload, args.call)
    except PayloadError as exc:
        return _fail(f"bad payload: {exc}")
    what = event.call or "API call"
    if not event.succeeded:
        print(f"{PROG}: {what} on VM {event.vm_id} failed in OpenNebula; nothing to do")
        return 0
    try:
        config = load_one_config(args.config)
        one, daemon = clients_from_config(config)
    except ConfigError as exc:
        return _fail(exc)
    logformat.use_format(config.log_format)
    log.info("%s event for VM %d (%s)", event.kind, event.vm_id, what, extra={"vm_id": event.vm_id})
    result = converge_vm(event.vm_id, one, daemon, lock_dir=config.lock_dir,
                         quota_default=config.floating_ip_quota)
    if config.log_format == "json":  # the closing line too, with what a collector filters on
        line = logformat.json_line(logging.INFO if result.ok else logging.ERROR, PROG, result.message,
                                   vm_id=event.vm_id, call=event.call, result="ok" if result.ok else "error")
        print(line, file=sys.stdout if result.ok else sys.stderr)
        return 0 if result.ok else 1
    if not result.ok:
        return _fail(result.message)
    print(f"{PROG}: {result.message}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
