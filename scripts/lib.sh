# Shared by scripts/*.sh: install what a fresh Debian machine lacks, and
# small helpers. Source it; it defines functions only.

# nginx (Debian's nginx-light) for the private nginx of tests, demo, bench.
ensure_nginx() {
  if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    return 0
  fi
  echo "installing nginx-light (zdd runs a private nginx on a loopback port)" >&2
  apt_install nginx-light
}

ensure_git() {
  ensure_command git git
}

# The real app servers the zero-downtime tests deploy, unmodified, from the
# package registries: gunicorn + Flask and uvicorn + Starlette (PyPI, in a
# venv) and express 4 (npm), pinned in examples/servers/. Installed once
# into target/app-servers/; reinstalled when the pins change.
APP_SERVERS=${ZDD_APP_SERVERS:-$PWD/target/app-servers}
# Where cargo puts what it builds (CARGO_TARGET_DIR, as cargo reads it).
TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-target}")
ensure_app_servers() {
  local dir=$APP_SERVERS req=examples/servers/requirements.txt
  local pkg=examples/servers/express/package.json lock=examples/servers/express/package-lock.json
  mkdir -p "$dir"
  if ! cmp -s "$req" "$dir/venv/requirements.txt" 2>/dev/null; then
    ensure_command python3 python3
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      apt_install python3-venv
    fi
    echo "installing gunicorn, Flask, uvicorn and Starlette into $dir/venv" >&2
    rm -rf "$dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$dir/venv/requirements.txt"
  fi
  if ! cmp -s "$lock" "$dir/package-lock.json" 2>/dev/null || [ ! -d "$dir/node_modules/express" ]; then
    ensure_command node nodejs
    ensure_command npm npm
    echo "installing express into $dir/node_modules" >&2
    cp "$pkg" "$lock" "$dir/"
    (cd "$dir" && npm ci --silent --no-audit --no-fund >/dev/null)
  fi
}

# Install a Debian package as root, or stop with the command to run.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # The package lists once per run, however many packages are missing.
    if [ -z "${ZDD_APT_UPDATED:-}" ]; then
      apt-get update -qq
      ZDD_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing: install it with: sudo apt-get install -y $*" >&2
    return 1
  fi
}

# COMMAND on the PATH, or the Debian PACKAGE that has it installed.
ensure_command() {
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

nginx_bin() {
  command -v nginx 2>/dev/null || echo /usr/sbin/nginx
}

# A loopback port in 20000-29999 that nothing listens on.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "no free port found in 20000-29999" >&2
  return 1
}

# GET http://127.0.0.1:PORT/ with bash alone; prints the body.
http_get() {
  local port=$1 path=${2:-/}
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
  sed '1,/^\r$/d' <&3
  exec 3<&-
}

# A main nginx.conf for a private prefix that includes PREFIX/site.conf.
# Started as root, its workers run as nginx's default user (nobody), as in
# production: every folder above zdd's root must be searchable by others.
write_nginx_conf() {
  local prefix=$1
  mkdir -p "$prefix/logs" "$prefix/tmp"
  cat >"$prefix/nginx.conf" <<CONF
worker_processes 2;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $prefix/tmp/body;
  proxy_temp_path $prefix/tmp/proxy;
  fastcgi_temp_path $prefix/tmp/fastcgi;
  uwsgi_temp_path $prefix/tmp/uwsgi;
  scgi_temp_path $prefix/tmp/scgi;
  include $prefix/site.conf;
}
CONF
}

# Totals from the load client's JSON report (one line, sorted keys):
# prints "REQUESTS FAILED".
load_totals() {
  local j
  j=$(tr -d ' \n' < "$1")
  printf '%s %s\n' \
    "$(echo "$j" | grep -o '"ok":[0-9]*,"requests":[0-9]*' | sed 's/.*"requests"://')" \
    "$(echo "$j" | grep -o '},"failed":[0-9]*' | sed 's/.*://')"
}

# A throw-away git repo of the example app in DIR: run.sh execs $APP_BIN,
# which serves the version written in ./VERSION.
new_app_repo() {
  local dir=$1
  git init -q --initial-branch=main "$dir"
  git -C "$dir" config user.email zdd@example.com
  git -C "$dir" config user.name "zdd scripts"
  printf '#!/bin/sh\n# The app: zdd sets PORT; it serves the version in ./VERSION.\nexec "$APP_BIN"\n' > "$dir/run.sh"
  chmod +x "$dir/run.sh"
}

# Commit version VERSION (with MESSAGE) in the app repo DIR; prints the sha.
app_commit() {
  local dir=$1 version=$2 message=${3:-$2}
  echo "$version" > "$dir/VERSION"
  git -C "$dir" add -A
  git -C "$dir" commit -qm "$message"
  git -C "$dir" rev-parse HEAD
}

# Write zdd.toml at CONF for the app repo "repo" beside it, on free ports;
# sets NGINX_PORT. EXTRA is appended (more sections).
write_app_config() {
  local conf=$1 name=$2 app=$3 extra=${4:-}
  local port_a port_b
  port_a=$(free_port); port_b=$(free_port); NGINX_PORT=$(free_port)
  while [ "$port_b" = "$port_a" ]; do port_b=$(free_port); done
  cat > "$conf" <<TOML
name   = "$name"
repo   = "repo"
branch = "main"
root   = "state"
build  = "test -f VERSION"
start  = "./run.sh"
ports  = [$port_a, $port_b]

[env]
APP_BIN = "$app"

[nginx]
listen   = "127.0.0.1:$NGINX_PORT"
pid_file = "nginx/nginx.pid"
$extra
TOML
}

# Start a private nginx in PREFIX with the config `zdd nginx` renders.
start_private_nginx() {
  local zdd=$1 conf=$2 prefix=$3
  mkdir -p "$prefix"
  "$zdd" -c "$conf" nginx > "$prefix/site.conf"
  write_nginx_conf "$prefix"
  "$(nginx_bin)" -p "$prefix" -c "$prefix/nginx.conf"
}
