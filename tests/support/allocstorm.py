"""Clients that allocate at once through one router's API until its pool is exhausted
(run inside the router's namespace by the HA lab's tests); one JSON line at the end.

    python allocstorm.py URL TOKEN ROUTER_INDEX THREADS

Thread t of router r associates each address it gets with 10.77.(100+10r+t).(j+1), so
every request of every client names a private address of its own."""

import json
import sys
import threading

import requests

MAX_REQUESTS = 400  # per thread: a bound, far above a pool's share


def main():
    url, token, router, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    got, errors, conflicts = [], [], [0]
    lock = threading.Lock()

    def client(t):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        j = 0
        for _ in range(MAX_REQUESTS):
            private = f"10.77.{100 + 10 * router + t}.{j + 1}"
            try:
                answer = session.post(f"{url}/v1/floatingips", json={"private_ip": private,
                                                                    "ref": f"r{router}t{t}j{j}"}, timeout=30)
                body = answer.json()
            except (requests.RequestException, ValueError) as exc:
                with lock:
                    errors.append(f"{private}: {exc}")
                return
            code = answer.status_code
            if code == 201:
                with lock:
                    got.append([body["public_ip"], private])
                j += 1
            elif code == 409 and body["error"]["code"] == "pool_exhausted":
                return
            elif code == 503 and body["error"]["code"] == "store_conflict":
                with lock:
                    conflicts[0] += 1
            else:
                with lock:
                    errors.append(f"{private}: {code} {body}")
                return

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"allocated": got, "errors": errors, "gave_up_on_conflicts": conflicts[0]}))


if __name__ == "__main__":
    main()
