#!/bin/bash
# The real-workload checks of tests/tests/workloads.rs, baked into the
# workload image (scripts/make-workload-image.sh). `check.sh NAME` runs one
# and prints one line; the same image under runc and kata-like must print
# the same lines. Run as root; `iptables` needs CAP_NET_ADMIN.
set -u

# nginx with Debian's default site: it listens on 0.0.0.0:80 and [::]:80.
nginx_check() {
    nginx || return
    for url in http://127.0.0.1/ 'http://[::1]/'; do curl -s -o /dev/null -w '%{http_code} ' "$url"; done
}

redis_check() {
    redis-server --daemonize yes --save '' --appendonly no >/dev/null || return
    for _ in $(seq 100); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.2; done
    redis-cli set greeting hello && redis-cli get greeting
}

# As the postgres user: initdb (which writes /dev/null) into /pgdata (the
# test mounts a memory emptyDir there), a server on 127.0.0.1 and ::1,
# queries over both.
postgres_check() {
    mkdir -p /pgdata/pg && chown postgres /pgdata/pg
    su postgres -s /bin/sh -c '
        bin=/usr/lib/postgresql/15/bin
        $bin/initdb -D /pgdata/pg/data >/pgdata/pg/initdb.log 2>&1 || { tail -3 /pgdata/pg/initdb.log; exit 1; }
        $bin/pg_ctl -D /pgdata/pg/data -o "-k /pgdata/pg -c listen_addresses=127.0.0.1,::1" -l /pgdata/pg/log \
            -w -t 900 start >/dev/null || { tail -3 /pgdata/pg/log; exit 1; }
        psql -h 127.0.0.1 -Atc "select split_part(version(), chr(32), 1)" postgres
        psql -h ::1 -Atc "select 6 * 7" postgres'
}

python_check() {
    python3 - <<'PY'
import asyncio, multiprocessing, os, secrets, sqlite3, threading

def square(x):
    return x * x

seen = []
threads = [threading.Thread(target=seen.append, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with multiprocessing.Pool(2) as pool:
    total = sum(pool.map(square, range(10)))
lock = multiprocessing.Lock()  # a POSIX semaphore in /dev/shm
with lock:
    pass
random = len(os.getrandom(16)) + len(secrets.token_bytes(16))

async def main():
    await asyncio.sleep(0.01)
    return "asyncio"

db = sqlite3.connect("/tmp/check.db")
db.execute("create table t (x)")
db.executemany("insert into t values (?)", [(i,) for i in range(100)])
print(f"threads={sorted(seen)} pool={total} lock=ok random={random} {asyncio.run(main())} "
      f"sqlite={db.execute('select sum(x) from t').fetchone()[0]}")
PY
}

# An Istio-style redirect: NAT in the pod's network namespace (needs the
# nginx check's server).
iptables_check() {
    iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport 15001 -j REDIRECT --to-ports 80 || return
    iptables -t nat -S OUTPUT | grep -c REDIRECT
    curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15001/
}

case "${1:-}" in
nginx | redis | postgres | python | iptables) echo "$1: $("$1"_check 2>&1 | tr '\n' ' ' | sed 's/ *$//')" ;;
*) echo "usage: check.sh nginx|redis|postgres|python|iptables" >&2; exit 2 ;;
esac
