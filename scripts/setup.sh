#!/usr/bin/env bash
# One command for a fresh machine: installs what is missing, builds the
# kernel, image, VMM, shim and tools, then runs the main job: a container
# through containerd (`ctr run --runtime io.containerd.kata-like.v2`) inside
# its own microVM.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "scripts/setup.sh"
"$ROOT/scripts/install-deps.sh"
"$ROOT/scripts/build.sh"

# containerd: the running one, else start Debian's in the background (it
# finds our shim, containerd-shim-kata-like-v2, on PATH in /usr/local/bin).
socket=/run/containerd/containerd.sock
if ! ctr -a "$socket" version >/dev/null 2>&1; then
    say "starting containerd (log: /var/log/kata-like-containerd.log)"
    mkdir -p /var/log
    PATH=/usr/local/bin:$PATH setsid containerd >>/var/log/kata-like-containerd.log 2>&1 < /dev/null &
    for _ in $(seq 100); do
        ctr -a "$socket" version >/dev/null 2>&1 && break
        sleep 0.2
    done
    ctr -a "$socket" version >/dev/null || die "containerd did not start; see /var/log/kata-like-containerd.log"
fi

ns=kata-like
image=docker.io/library/kata-like-busybox:latest
ctr -a "$socket" -n "$ns" image import "$KATA_LIKE_CACHE/images/busybox.tar" >/dev/null

say "main job: ctr run a container in a kata-like microVM (about a minute on nested KVM)"
ctr -a "$socket" -n "$ns" run --rm --runtime io.containerd.kata-like.v2 "$image" "kata-like-demo-$$" \
    sh -c 'echo "hello from a container in a kata-like microVM"; echo "guest kernel: $(uname -r)"; id'

# Docker and podman drive kata-like through runc's command line.
cli=/usr/local/bin/kata-like
say "to run Docker and podman containers in microVMs (docs/docker-podman.md):"
cat <<EOF
  Docker: add to /etc/docker/daemon.json, restart dockerd, then docker run --runtime kata-like IMAGE ...
      {"runtimes": {"kata-like": {"path": "$cli"}}}
  podman: podman --runtime $cli run IMAGE ...
      (on this machine kind, podman needs a containers.conf with default_ulimits = [], see the doc)
EOF
