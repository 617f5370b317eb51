# Helpers shared by the scripts that install and start local services (scripts/services.sh,
# scripts/prosody.sh). Source it after setting `log_tag`, the prefix of each log line.

log() { printf '[%s] %s\n' "$log_tag" "$*" >&2; }

# apt-get, the server daemons and their control tools need root.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    log "needs root (or sudo) for: $*"
    exit 1
  fi
}

# `apt-get update` once per run, exported so that a script started by another (services.sh
# runs prosody.sh) does not update the package lists a second time.
apt_install() {
  if [ "${HERALD_APT_UPDATED:-0}" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    export HERALD_APT_UPDATED=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
