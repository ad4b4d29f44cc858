"""`python -m benchmarks.whatif_daemon [--nodelay] [ipfloaterd args...]`: ipfloaterd with a
diagnostic change applied at run time, to measure what a candidate optimisation would
save (the daemon's files are not modified; these rows are labelled "what-if").

--nodelay: TCP_NODELAY on the API's accepted sockets (socketserver's
`disable_nagle_algorithm`), i.e. the small body write is not held back by Nagle's
algorithm while the client delays its ACK of the header write.
"""

import sys

from one_ipfloater import api, daemon


def main() -> int:
    argv = sys.argv[1:]
    if "--nodelay" in argv:
        argv.remove("--nodelay")
        api.ApiHandler.disable_nagle_algorithm = True
    return daemon.main(argv)


if __name__ == "__main__":
    sys.exit(main())
