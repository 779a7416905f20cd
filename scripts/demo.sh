#!/usr/bin/env bash
# The main job, on a fresh machine: build zdd, make a throw-away git repo of
# the example app with two versions, start a private nginx on a loopback
# port, deploy v1, deploy v2 under load, roll back under load, and print
# what was served and how many requests failed. Leaves nothing running.
#
#   scripts/demo.sh            # everything in a temp folder, removed after
#   KEEP=1 scripts/demo.sh     # keep the folder to look around
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_nginx
ensure_git

# Bold headings on a terminal; plain text into a file or a pipe.
if [ -t 1 ]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi

say "building zdd, the example app and the load client (release; the first build takes a minute or two)"
cargo build --release --quiet --bin zdd --example app --example load
ZDD=$TARGET_DIR/release/zdd
APP=$TARGET_DIR/release/examples/app
LOAD=$TARGET_DIR/release/examples/load

DEMO=$(mktemp -d /tmp/zdd-demo.XXXXXX)
chmod 755 "$DEMO"   # nginx's workers (nobody) look for zdd's switch file below it
NGINX_PREFIX=$DEMO/nginx
cleanup() {
  set +e
  [ -f "$DEMO/zdd.toml" ] && { "$ZDD" -q -c "$DEMO/zdd.toml" stop a >/dev/null 2>&1; "$ZDD" -q -c "$DEMO/zdd.toml" stop b >/dev/null 2>&1; }
  [ -f "$NGINX_PREFIX/nginx.pid" ] && kill "$(cat "$NGINX_PREFIX/nginx.pid")" 2>/dev/null
  [ -n "${LOAD_PID:-}" ] && kill "$LOAD_PID" 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "kept $DEMO"; else rm -rf "$DEMO"; fi
}
trap cleanup EXIT

say "a throw-away app repo with two versions in $DEMO/repo"
new_app_repo "$DEMO/repo"
V1=$(app_commit "$DEMO/repo" v1 "v1: first release")
V2=$(app_commit "$DEMO/repo" v2 "v2: second release")
write_app_config "$DEMO/zdd.toml" demo "$APP" '[health]
interval = "20ms"'
echo "zdd.toml:"; sed 's/^/  /' "$DEMO/zdd.toml"

say "a private nginx on 127.0.0.1:$NGINX_PORT with the config from \`zdd nginx\`"
start_private_nginx "$ZDD" "$DEMO/zdd.toml" "$NGINX_PREFIX"
sed -n '/^upstream/,/^}/p' "$NGINX_PREFIX/site.conf" | sed 's/^/  /'
grep -A3 'set \$zdd_demo' "$NGINX_PREFIX/site.conf" | sed 's/^/  /'

say "zdd deploy $V1 (v1)"
"$ZDD" -c "$DEMO/zdd.toml" deploy "$V1"
echo "nginx serves: $(http_get "$NGINX_PORT")"

say "steady load through nginx: 16 clients, GET and POST, keep-alive mixed"
"$LOAD" --url "http://127.0.0.1:$NGINX_PORT/" --concurrency 16 --post-ratio 0.5 \
  --keepalive mixed --duration 120s --stop-file "$DEMO/stop-load" \
  --expect-version v1 --expect-version v2 > "$DEMO/load.json" &
LOAD_PID=$!
sleep 1

say "zdd deploy (the tip of main: v2) under load"
"$ZDD" -c "$DEMO/zdd.toml" deploy
echo "nginx serves: $(http_get "$NGINX_PORT")"
sleep 1

say "zdd rollback under load"
"$ZDD" -c "$DEMO/zdd.toml" rollback
echo "nginx serves: $(http_get "$NGINX_PORT")"
sleep 1

touch "$DEMO/stop-load"
set +e; wait "$LOAD_PID"; LOAD_RC=$?; set -e; LOAD_PID=

say "zdd status"
"$ZDD" -c "$DEMO/zdd.toml" status
say "zdd history"
"$ZDD" -c "$DEMO/zdd.toml" history

say "what the load saw across the deploy and the rollback"
read -r REQUESTS FAILED <<< "$(load_totals "$DEMO/load.json")"
SUMMARY=$(tr -d ' \n' < "$DEMO/load.json")
echo "requests: $REQUESTS   failed: $FAILED"
echo "latency: $(echo "$SUMMARY" | grep -o '"latency_ms":{[^}]*}' | cut -d: -f2-)"
echo "versions served: $(echo "$SUMMARY" | grep -o '"versions":{[^}]*}' | cut -d: -f2-)"
if [ "$LOAD_RC" -eq 0 ]; then
  echo "zero downtime: every request got a 2xx from v1 or v2"
else
  echo "SOME REQUESTS FAILED:"; cat "$DEMO/load.json"; exit 1
fi
