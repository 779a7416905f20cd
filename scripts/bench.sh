#!/usr/bin/env bash
# Benchmark: what a deploy costs, and zdd's own share of it.
#
# A private nginx on a loopback port, the reference app, steady load (16
# clients, RATE=2000 requests/s, GET and POST, keep-alive mixed), then N deploys (each of a new
# commit) and N rollbacks, back to back with a 1 s gap. Prints a markdown
# table: requests and failures, latency in steady state and inside swap
# windows, deploy and rollback wall time split into phases, zdd's overhead,
# no-op deploy and status times, zdd's peak RSS, and (switch mode)
# throughput with and without upstream keep-alive (TPUT_SECONDS=10 each).
#
#   scripts/bench.sh              # N=10
#   N=3 scripts/bench.sh          # quicker
#   RATE=5000 scripts/bench.sh    # heavier steady load
#   MODE=round-robin scripts/bench.sh   # nginx.mode: "switch" (default) or "round-robin"
#   RESTARTS=3 scripts/bench.sh   # fewer kills of the live app (each waits 10 s: the
#                                 # keeper restarts at once only after 10 s up)
#   KEEP=1 scripts/bench.sh       # keep the work folder (samples.csv, logs)
#   NO_NPM=1 scripts/bench.sh     # leave out the cold and warm `npm install` builds
#   BUILD_FILES=5000 scripts/bench.sh   # each build writes this many files: what
#                                 # removing an old release (releases.keep) costs
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_nginx
ensure_git
N=${N:-10}
RATE=${RATE:-2000}   # requests/s of steady load; leaves the 2 cores room to measure zdd
RESTARTS=${RESTARTS:-10}
MODE=${MODE:-switch}

echo "building release binaries..." >&2
cargo build --release --quiet --bin zdd --example app --example load
ZDD=$TARGET_DIR/release/zdd
APP=$TARGET_DIR/release/examples/app
LOAD=$TARGET_DIR/release/examples/load

B=$(mktemp -d /tmp/zdd-bench.XXXXXX)
chmod 755 "$B"   # nginx's workers (nobody) look for zdd's switch file below it
CONF=$B/zdd.toml
cleanup() {
  set +e
  [ -n "${LOAD_PID:-}" ] && kill "$LOAD_PID" 2>/dev/null
  "$ZDD" -q -c "$CONF" stop a >/dev/null 2>&1
  "$ZDD" -q -c "$CONF" stop b >/dev/null 2>&1
  [ -f "$B/nginx/nginx.pid" ] && kill "$(cat "$B/nginx/nginx.pid")" 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "kept $B" >&2; else rm -rf "$B"; fi
}
trap cleanup EXIT

now_us() { date +%s%6N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else print a[int((NR+1)/2)]}'; }
maxof() { sort -n | tail -1; }

# --- the app repo and zdd's config
new_app_repo "$B/repo"
commit() { app_commit "$B/repo" "$1" > /dev/null; }
commit v1
write_app_config "$CONF" bench "$APP" "mode = \"$MODE\""
BUILD_FILES=${BUILD_FILES:-0}
if [ "$BUILD_FILES" -gt 0 ]; then
  sed -i "s|^build  = .*|build  = \"mkdir -p deps \&\& cd deps \&\& seq 1 $BUILD_FILES \| xargs touch\"|" "$CONF"
fi
start_private_nginx "$ZDD" "$CONF" "$B/nginx"
"$ZDD" -q -c "$CONF" deploy >/dev/null

# --- steady load, then N deploys and N rollbacks
"$LOAD" --url "http://127.0.0.1:$NGINX_PORT/" --concurrency 16 --post-ratio 0.5 \
  --keepalive mixed --rate "$RATE" --duration 900s --stop-file "$B/stop-load" \
  --samples "$B/samples.csv" > "$B/load.json" 2>"$B/load.err" &
LOAD_PID=$!
sleep 3
: > "$B/ops.tsv"
for i in $(seq 1 "$N"); do
  commit "v$((i + 1))"
  for op in deploy rollback; do
    s=$(now_us)
    "$ZDD" -v -c "$CONF" "$op" > /dev/null 2> "$B/$op-$i.log" || { cat "$B/$op-$i.log" >&2; exit 1; }
    e=$(now_us)
    printf '%s\t%s\t%s\n' "$op" "$s" "$e" >> "$B/ops.tsv"
    echo "$op $i: $(( (e - s) / 1000 )) ms" >&2
    sleep 1
  done
done
sleep 2
touch "$B/stop-load"
set +e; wait "$LOAD_PID"; set -e; LOAD_PID=

# --- the keeper: kill -9 of the live app, to the first good answer through
# nginx (each kill after 10 s up, so that the keeper restarts at once); and
# what the keeper costs while the app runs: its RSS, its CPU over 10 s.
LIVE_SLOT=$("$ZDD" -c "$CONF" status --json | grep '"active"' | cut -d'"' -f4)
KEEPER_FILE="$B/state/run/$LIVE_SLOT.keeper"
SERVING=$(http_get "$NGINX_PORT")
: > "$B/restart.txt"
for _ in $(seq 1 "$RESTARTS"); do
  sleep 10.5
  APP_PID=$(grep '^app_pid' "$KEEPER_FILE" | awk '{print $3}')
  s=$(now_us)
  kill -9 "$APP_PID"
  while [ "$(http_get "$NGINX_PORT" 2>/dev/null)" != "$SERVING" ]; do :; done
  e=$(now_us)
  awk -v us=$((e - s)) 'BEGIN { printf "%.1f\n", us / 1000 }' >> "$B/restart.txt"
done
KEEPER_PID=$(grep '^keeper_pid' "$KEEPER_FILE" | awk '{print $3}')
KEEPER_RSS=$(awk '/^VmRSS:/ {print $2}' "/proc/$KEEPER_PID/status")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$KEEPER_PID/stat"; }
T0=$(cpu_ticks); sleep 10; T1=$(cpu_ticks)
KEEPER_CPU=$(awk -v t=$((T1 - T0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", 100 * t / hz / 10 }')

# --- throughput: unthrottled load for TPUT_SECONDS (10), through nginx with
# upstream keep-alive (the default nginx.keepalive) and without (0), nginx
# reloaded in between (switch mode only: round-robin never keeps any)
throughput() {
  "$LOAD" --url "http://127.0.0.1:$NGINX_PORT/" --concurrency 16 --post-ratio 0.5 \
    --keepalive mixed --duration "${TPUT_SECONDS:-10}s" > "$B/tput.json" 2>/dev/null || true
  read -r n f <<< "$(load_totals "$B/tput.json")"
  echo "$(( n / ${TPUT_SECONDS:-10} )) $f"
}
TPUT_ON=- TPUT_OFF=-
if [ "$MODE" = switch ]; then
  read -r TPUT_ON TPUT_ON_F <<< "$(throughput)"
  echo 'keepalive = 0' >> "$CONF"   # [nginx] is the config's last table
  "$ZDD" -c "$CONF" nginx > "$B/nginx/site.conf"
  kill -HUP "$(cat "$B/nginx/nginx.pid")"; sleep 2
  read -r TPUT_OFF TPUT_OFF_F <<< "$(throughput)"
fi

# --- no-op deploy (commit already live), the git fetch alone, status
LIVE=$("$ZDD" -c "$CONF" status --json | grep -A6 '"status": "live"' | grep '"commit"' | cut -d'"' -f4)
: > "$B/noop.txt"; : > "$B/fetch.txt"; : > "$B/status.txt"
for _ in $(seq 1 20); do
  s=$(now_us); "$ZDD" -c "$CONF" deploy "$LIVE" > /dev/null; e=$(now_us); echo $(( (e - s) / 1000 )) >> "$B/noop.txt"
  s=$(now_us)
  git --git-dir "$B/state/git/repo" fetch --quiet --force --prune --tags \
    --no-write-fetch-head --end-of-options "$B/repo" '+refs/heads/*:refs/remotes/origin/*'
  e=$(now_us); echo $(( (e - s) / 1000 )) >> "$B/fetch.txt"
done
for _ in $(seq 1 50); do
  s=$(now_us); "$ZDD" -c "$CONF" status > /dev/null; e=$(now_us); echo $(( (e - s) / 100 )) >> "$B/status.txt"
done

# --- phases from `zdd history --json` (pretty JSON: one key per line)
"$ZDD" -c "$CONF" history --json | awk '
  /"action":/  { gsub(/[",]/, "", $2); action = $2 }
  /"fetch_ms":/ { f = $2 + 0 } /"build_ms":/ { b = $2 + 0 } /"ready_ms":/ { r = $2 + 0 }
  /"route_ms":/ { n = $2 + 0 } /"settle_ms":/ { st = $2 + 0 } /"drain_ms":/ { d = $2 + 0 }
  /"total_ms":/ && (action == "deploy" || action == "rollback") { print action "\t" f "\t" b "\t" r "\t" n "\t" d "\t" $2 + 0 "\t" st }
' | tail -n $((2 * N)) > "$B/phases.tsv"
paste "$B/ops.tsv" "$B/phases.tsv" > "$B/joined.tsv"   # op s e | action fetch build ready route drain total settle

# --- a deploy of a kept commit (no checkout, no build), and `zdd restart`
# (its wall time, and that minus the new process's readiness)
: > "$B/kept.txt"; : > "$B/restart-cmd.txt"; : > "$B/restart-beyond.txt"
for _ in 1 2 3 4 5; do
  KEPT=$("$ZDD" -c "$CONF" releases --json | tr -d ' \n' \
    | grep -o '"commit":"[0-9a-f]*"[^}]*"status":"kept"' | head -1 | cut -d'"' -f4)
  s=$(now_us); "$ZDD" -q -c "$CONF" deploy "$KEPT" > /dev/null; e=$(now_us)
  echo $(( (e - s) / 1000 )) >> "$B/kept.txt"
  sleep 1
  s=$(now_us); "$ZDD" -q -c "$CONF" restart > /dev/null; e=$(now_us)
  READY=$("$ZDD" -c "$CONF" history --json | grep '"ready_ms"' | tail -1 | grep -o '[0-9]*')
  echo $(( (e - s) / 1000 )) >> "$B/restart-cmd.txt"
  echo $(( (e - s) / 1000 - READY )) >> "$B/restart-beyond.txt"
  sleep 1
done


# --- a cold and a warm build of a real one: `npm install` of express 4,
# with cache = ["node_modules/"] (npm's own download cache is warm for both:
# what the cache saves is the install itself)
COLD_BUILD=- WARM_BUILD=-
last_build_ms() { "$ZDD" -c "$CONF" history --json | grep '"build_ms"' | tail -1 | grep -o '[0-9]*'; }
if command -v npm > /dev/null && [ -z "${NO_NPM:-}" ]; then
  printf '{"name":"bench","version":"1.0.0","private":true,"dependencies":{"express":"^4.21.0"}}\n' > "$B/repo/package.json"
  cp "$CONF" "$CONF.before-npm"
  sed -i 's|^build  = .*|build  = "npm install --no-audit --no-fund --omit=dev --loglevel=error"|' "$CONF"
  sed -i 's|^start  = |cache  = ["node_modules/"]\nstart  = |' "$CONF"
  npm cache add express@4 > /dev/null 2>&1 || true
  commit npm-1
  if "$ZDD" -q -c "$CONF" deploy > /dev/null; then COLD_BUILD=$(last_build_ms); fi
  sleep 1
  commit npm-2
  if "$ZDD" -q -c "$CONF" deploy > /dev/null; then WARM_BUILD=$(last_build_ms); fi
  cp "$CONF.before-npm" "$CONF"
fi

# --- the log pipe: a `zdd start` process whose app writes 10 MB/s of
# 100-byte lines for 10 s (each line carries the time it was written);
# the keeper stamps each line with the time it read it (logs.timestamps):
# its CPU and peak RSS meanwhile, and the latency the pipe adds to a line
LOGB=$B/logbench; mkdir -p "$LOGB/app"; echo logbench > "$LOGB/app/VERSION"
cat > "$LOGB/app/writer.py" <<'PY'
import sys, time
out, per, end = sys.stdout.buffer, 1000, time.time() + 10   # 1000 lines per 10 ms
while time.time() < end:
    t = time.time()
    stamp = b"%.6f " % t
    out.write((stamp + b"x" * (99 - len(stamp)) + b"\n") * per)
    out.flush()
    time.sleep(max(0.0, 0.01 - (time.time() - t)))
PY
printf 'name = "logbench"\nroot = "%s"\nstart = "x"\n[logs]\ntimestamps = true\n' "$LOGB/state" > "$LOGB/zdd.toml"
LOG_PORT=$(free_port)
"$ZDD" -q -c "$LOGB/zdd.toml" start logbench "$LOGB/app" "$LOG_PORT" -- \
  sh -c "python3 writer.py & exec $APP" > /dev/null
LOG_KEEPER=$(grep '^keeper_pid' "$LOGB/state/run/logbench.keeper" | awk '{print $3}')
T0=$(awk '{print $14 + $15}' "/proc/$LOG_KEEPER/stat"); sleep 10
T1=$(awk '{print $14 + $15}' "/proc/$LOG_KEEPER/stat")
LOG_CPU=$(awk -v t=$((T1 - T0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", 100 * t / hz / 10 }')
LOG_RSS=$(awk '/^VmHWM:/ {print $2}' "/proc/$LOG_KEEPER/status")
sleep 1
LOG_LAT=$(python3 - "$LOGB/state/logs" <<'PY'
import sys, datetime, glob
lat = []
for line in (l for f in glob.glob(sys.argv[1] + "/logbench.log*") if not f.endswith(".times") for l in open(f, errors="replace")):
    parts = line.split(" ", 2)
    if len(parts) < 3 or not parts[1][:1].isdigit():
        continue
    read = datetime.datetime.fromisoformat(parts[0].replace("Z", "+00:00")).timestamp()
    lat.append((read - float(parts[1])) * 1000)
lat.sort()
print("%.2f %.2f %d" % (lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(lat)) if lat else "- - 0")
PY
)
"$ZDD" -q -c "$LOGB/zdd.toml" stop logbench > /dev/null
LOG_BYTES=$(cat "$LOGB"/state/logs/logbench.log* 2>/dev/null | wc -c)

# --- latency: steady state vs inside swap windows
awk -F'\t' 'NR == FNR { s[NR] = $2; e[NR] = $3; n = NR; next }
  FNR == 1 { next }
  {
    split($0, c, ","); t = c[1]; lat = c[2] / 1000
    inside = 0
    for (i = 1; i <= n; i++) if (t >= s[i] && t <= e[i]) { inside = 1; break }
    print lat > (inside ? "'"$B"'/lat-swap.txt" : "'"$B"'/lat-steady.txt")
  }' "$B/ops.tsv" "$B/samples.csv"
pct() { sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {i=int(NR*p); if (i<1) i=1; printf "%.2f", a[i]}'; }
lat_row() { printf '%s | %s | %s | %s' "$(wc -l < "$1")" "$(pct "$1" 0.50)" "$(pct "$1" 0.99)" "$(pct "$1" 1.0)"; }

# load.json is one line of JSON with sorted keys.
J=$(tr -d ' \n' < "$B/load.json")
read -r TOTAL FAILED <<< "$(load_totals "$B/load.json")"
method() { echo "$J" | grep -o "\"$1\":{\"failed\":[0-9]*,\"requests\":[0-9]*" | sed 's/.*"failed":\([0-9]*\),"requests":\([0-9]*\)/\2 \1/'; }
read -r GET_N GET_F <<< "$(method GET)"
read -r POST_N POST_F <<< "$(method POST)"

phase_stats() { # op column
  awk -F'\t' -v op="$1" -v col="$2" '$1 == op { print $col }' "$B/joined.tsv" > "$B/col.txt"
  printf '%s / %s' "$(median < "$B/col.txt")" "$(maxof < "$B/col.txt")"
}
wall_stats() {
  awk -F'\t' -v op="$1" '$1 == op { print int(($3 - $2) / 1000) }' "$B/joined.tsv" > "$B/col.txt"
  printf '%s / %s' "$(median < "$B/col.txt")" "$(maxof < "$B/col.txt")"
}
overhead_stats() { # wall - (build + ready + settle + drain) [- route when $2 = 1]
  awk -F'\t' -v op="$1" -v noroute="$2" '$1 == op {
      w = ($3 - $2) / 1000; o = w - ($6 + $7 + $9 + $11); if (noroute) o -= $8; print int(o) }' "$B/joined.tsv" > "$B/col.txt"
  printf '%s / %s' "$(median < "$B/col.txt")" "$(maxof < "$B/col.txt")"
}
beyond_ready() { # wall - (build + ready)
  awk -F'\t' -v op="$1" '$1 == op { print int(($3 - $2) / 1000 - ($6 + $7)) }' "$B/joined.tsv" > "$B/col.txt"
  printf '%s / %s' "$(median < "$B/col.txt")" "$(maxof < "$B/col.txt")"
}
RSS=$(grep -ho 'peak RSS [0-9]*' "$B"/deploy-*.log "$B"/rollback-*.log | awk '{print $3}' | maxof)
# Removing releases beyond releases.keep, after a swap's summary (ms; "12.3s" style
# above 10 s is left out: it would say enough).
grep -ho 'beyond releases.keep = [0-9]* in [0-9]*ms' "$B"/deploy-*.log "$B"/rollback-*.log \
  | sed 's/.* in \([0-9]*\)ms/\1/' > "$B/prune.txt" || true

cat <<TABLE

## zdd benchmark: $N deploys + $N rollbacks under load

Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r), $("$(nginx_bin)" -v 2>&1 | cut -d' ' -f3). nginx.mode: $MODE. Command: \`N=$N MODE=$MODE scripts/bench.sh\`.

| load (16 clients, $RATE req/s, keep-alive mixed) | requests | failed |
|---|---:|---:|
| GET | $GET_N | $GET_F |
| POST | $POST_N | $POST_F |
| all | $TOTAL | **$FAILED** |

| latency (ms) | requests | p50 | p99 | max |
|---|---:|---:|---:|---:|
| steady state | $(lat_row "$B/lat-steady.txt") |
| inside swap windows | $(lat_row "$B/lat-swap.txt") |

| per deploy / rollback (ms, median / max) | deploy | rollback |
|---|---:|---:|
| wall time (process start to exit) | $(wall_stats deploy) | $(wall_stats rollback) |
| fetch + checkout | $(phase_stats deploy 5) | - |
| build | $(phase_stats deploy 6) | - |
| app ready (start + health$([ "$MODE" = switch ] || echo "; rehearsal first")) | $(phase_stats deploy 7) | $(phase_stats rollback 7) |
| nginx routes to the new slot ($([ "$MODE" = switch ] && echo "flip + confirm" || echo "failover wait")) | $(phase_stats deploy 8) | $(phase_stats rollback 8) |
| old slot: stop.settle, then until nothing waits for it (queued or unread) for 5 ms | $(phase_stats deploy 11) | $(phase_stats rollback 11) |
| old slot stopped (stop signal to exit) | $(phase_stats deploy 9) | $(phase_stats rollback 9) |
| **zdd overhead** = wall − (build + ready + wait + stop) | $(overhead_stats deploy 0) | $(overhead_stats rollback 0) |
| **wall − (build + ready)**: what a swap adds to the app's own boot | $(beyond_ready deploy) | $(beyond_ready rollback) |
| zdd overhead without the nginx routing wait | $(overhead_stats deploy 1) | $(overhead_stats rollback 1) |

| other | median | max |
|---|---:|---:|
| \`zdd deploy SHA\` of a kept release (no checkout, no build), wall ms | $(median < "$B/kept.txt") | $(maxof < "$B/kept.txt") |
| \`zdd restart\`, wall ms | $(median < "$B/restart-cmd.txt") | $(maxof < "$B/restart-cmd.txt") |
| \`zdd restart\`, wall − ready (what it adds to the app's boot), ms | $(median < "$B/restart-beyond.txt") | $(maxof < "$B/restart-beyond.txt") |
| no-op \`zdd deploy SHA\` (already live), ms | $(median < "$B/noop.txt") | $(maxof < "$B/noop.txt") |
| its \`git fetch\` alone, ms | $(median < "$B/fetch.txt") | $(maxof < "$B/fetch.txt") |
| \`zdd status\`, ms | $(median < "$B/status.txt" | awk '{printf "%.1f", $1/10}') | $(maxof < "$B/status.txt" | awk '{printf "%.1f", $1/10}') |
| zdd peak RSS, KiB | | ${RSS:-?} |
| build of a real app (\`npm install\` of express 4), cold: no cache to start from, ms | | $COLD_BUILD |
| …warm: \`cache = ["node_modules/"]\` copied from the live release, ms | | $WARM_BUILD |
| removing an old release after a swap ($(wc -l < "$B/prune.txt") swaps; $BUILD_FILES build files each), ms | $(median < "$B/prune.txt") | $(maxof < "$B/prune.txt") |
| restart of a killed live app, to its first good answer through nginx, ms ($RESTARTS kills) | $(median < "$B/restart.txt") | $(maxof < "$B/restart.txt") |
| keeper RSS while the app runs, KiB | | ${KEEPER_RSS:-?} |
| keeper CPU while the app runs (10 s), % | | ${KEEPER_CPU:-?} |
| keeper CPU while its app writes 10 MB/s of 100-byte lines (10 s), % | | ${LOG_CPU:-?} |
| keeper peak RSS meanwhile, KiB | | ${LOG_RSS:-?} |
| latency the pipe adds to a line, written to read and stamped, ms (median, p99 of the $(echo "$LOG_LAT" | cut -d' ' -f3) lines kept) | $(echo "$LOG_LAT" | cut -d' ' -f1) | $(echo "$LOG_LAT" | cut -d' ' -f2) (p99) |
| its log on disk after 100 MB written (logs.max_size 10 MiB, logs.keep 5), bytes | | ${LOG_BYTES:-?} |

| throughput, ${TPUT_SECONDS:-10} s unthrottled (16 clients, half POST) | requests/s | failed |
|---|---:|---:|
| upstream keep-alive on (nginx.keepalive = 16) | $TPUT_ON | ${TPUT_ON_F:--} |
| upstream keep-alive off (nginx.keepalive = 0) | $TPUT_OFF | ${TPUT_OFF_F:--} |
TABLE
