# Shared by scripts/*.sh: install what a fresh Debian machine lacks, and
# small helpers. Source it; it defines functions only.

# nginx (Debian's nginx-light) for the private nginx of tests, demo, bench.
ensure_nginx() {
  if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing nginx-light (zdd runs a private nginx on a loopback port)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else
    echo "nginx is missing; install it with: sudo apt-get install -y nginx-light" >&2
    return 1
  fi
}

ensure_git() {
  command -v git >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git >/dev/null
  else
    echo "git is missing; install it with: sudo apt-get install -y git" >&2
    return 1
  fi
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
write_nginx_conf() {
  local prefix=$1 user_line=""
  [ "$(id -u)" = 0 ] && user_line="user root;"
  mkdir -p "$prefix/logs" "$prefix/tmp"
  cat >"$prefix/nginx.conf" <<CONF
$user_line
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
