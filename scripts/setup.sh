#!/usr/bin/env bash
# One command for a fresh machine: installs what is missing, builds the
# kernel, image, VMM and tools, then runs the main job: boot a microVM and
# run a command in it through the agent.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "scripts/setup.sh"
"$ROOT/scripts/install-deps.sh"
"$ROOT/scripts/build.sh"

say "main job: boot a microVM and run \`uname -a\` in it (tens of seconds on nested KVM)"
"$TARGET_DIR/release/kata-like" vm exec --timing -- uname -a
