#!/usr/bin/env bash
# Make sure the servers the tests use are installed and answering; install (apt-get) and start
# what is missing. Exits non-zero naming the service that could not be made available: tests never
# skip for a missing service. slapd (OpenLDAP) is only installed: each LDAP test starts its own
# throw-away server (tests/ldap_server.py), so the system instance is never configured or started.
set -uo pipefail

log() { printf 'services: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
apt_updated=0
apt_install() {
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq >/dev/null && apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -o DPkg::Lock::Timeout=600 "$@" >/dev/null
}
wait_for() {  # wait_for NAME SECONDS CMD...
  local name=$1 seconds=$2; shift 2
  for _ in $(seq 1 "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  log "$name did not come up within ${seconds}s"; return 1
}

pg_ok() { pg_isready -q -h 127.0.0.1 -p 5432 && psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null; }
maria_ok() { mysql -h 127.0.0.1 -P 3306 -u root -e 'select 1' >/dev/null; }

ensure_postgres() {
  pg_ok 2>/dev/null && { log "PostgreSQL answers on 127.0.0.1:5432"; return 0; }
  if ! command -v pg_ctlcluster >/dev/null; then log "installing PostgreSQL"; apt_install postgresql postgresql-client; fi
  local version; version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [ -z "$version" ]; then log "no PostgreSQL cluster found"; return 1; fi
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null
  wait_for PostgreSQL 30 pg_ok && log "PostgreSQL started"
}

ensure_mariadb() {
  maria_ok 2>/dev/null && { log "MariaDB answers on 127.0.0.1:3306"; return 0; }
  if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then
    log "installing MariaDB"; apt_install mariadb-server mariadb-client
  fi
  as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld 2>/dev/null
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql \
    --bind-address=127.0.0.1 --port=3306
  wait_for MariaDB 30 mysqladmin -h 127.0.0.1 -u root ping || return 1
  # A fresh Debian install authenticates root by unix socket: allow the passwordless TCP login the tests use.
  if ! maria_ok 2>/dev/null; then
    as_root mysql -u root -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); \
      CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;" || true
  fi
  wait_for MariaDB 10 maria_ok && log "MariaDB started"
}

ensure_slapd() {
  if [ -x /usr/sbin/slapd ] && command -v ldapsearch >/dev/null; then log "slapd is installed"; return 0; fi
  log "installing slapd and ldap-utils (unconfigured: the tests start their own servers)"
  # Preseed so the package creates no directory instance of its own.
  printf 'slapd slapd/no_configuration boolean true\n' | as_root debconf-set-selections || return 1
  # And never start the system slapd: while installing, a policy-rc.d (unless one exists) denies starts.
  local policy=/usr/sbin/policy-rc.d added=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy" && added=1
  fi
  apt_install slapd ldap-utils || rc=1
  if [ $added = 1 ]; then as_root rm -f "$policy"; fi
  [ $rc = 0 ] && [ -x /usr/sbin/slapd ] && log "slapd installed"
}

ensure_sshd() {  # OpenSSH server and sudo for the shutdown/final-checks tests; each test starts its own sshd
  if [ -x /usr/sbin/sshd ] && command -v sudo >/dev/null; then log "sshd and sudo are installed"; return 0; fi
  log "installing openssh-server and sudo (the system sshd is not started: tests run their own)"
  local policy=/usr/sbin/policy-rc.d added=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy" && added=1
  fi
  apt_install openssh-server sudo || rc=1
  if [ $added = 1 ]; then as_root rm -f "$policy"; fi
  [ $rc = 0 ] && [ -x /usr/sbin/sshd ] && command -v sudo >/dev/null && log "sshd and sudo installed"
}

status=0
ensure_postgres || { log "FAILED: PostgreSQL is not available on 127.0.0.1:5432"; status=1; }
ensure_mariadb || { log "FAILED: MariaDB is not available on 127.0.0.1:3306"; status=1; }
ensure_slapd || { log "FAILED: slapd (OpenLDAP server, package slapd) could not be installed"; status=1; }
ensure_sshd || { log "FAILED: sshd (package openssh-server) or sudo could not be installed"; status=1; }
exit $status
