#!/usr/bin/env bash
# Run zdd's tests on a fresh Debian machine: install what is missing (nginx,
# which the integration tests start privately on a free loopback port; the
# real app servers they deploy: gunicorn, uvicorn, express), then
# `cargo test`. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_nginx
ensure_git
ensure_app_servers
export ZDD_APP_SERVERS=$APP_SERVERS
# The integration tests use the example app and load client binaries.
cargo build --quiet --examples
cargo test "$@"
