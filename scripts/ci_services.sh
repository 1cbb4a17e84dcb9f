#!/usr/bin/env bash
# Best-effort set-up of the services some tests use, for CI (sourced by .ci/run):
#   - PostgreSQL from Debian's packages, started on loopback, with a role and database for the
#     leaderboard store tests; exports ROBUST_TEST_POSTGRES_URL;
#   - Debian's chromium and chromedriver for the leaderboard page's browser tests.
# Whatever cannot be set up leaves its tests to skip with a message; nothing here fails CI.
_saved_flags=$-; _saved_pipefail=$(set -o | awk '$1 == "pipefail" {print $2}')
set +e +u +o pipefail  # best-effort; the caller's options are restored at the end
export DEBIAN_FRONTEND=noninteractive
_as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
_need=()
command -v pg_ctlcluster >/dev/null || _need+=(postgresql)
[ -x /usr/bin/chromium ] || _need+=(chromium)
[ -x /usr/bin/chromedriver ] || _need+=(chromium-driver)
if [ ${#_need[@]} -gt 0 ]; then
    if ! { _as_root apt-get update -qq && _as_root apt-get install -y -qq --no-install-recommends "${_need[@]}"; } \
        >/tmp/robust-ci-apt.log 2>&1; then
        echo "ci: could not install ${_need[*]} (see /tmp/robust-ci-apt.log); their tests will skip"
    fi
fi
if command -v pg_lsclusters >/dev/null; then
    _cluster=$(pg_lsclusters --no-header 2>/dev/null | head -1)
    _ver=$(echo "$_cluster" | awk '{print $1}'); _name=$(echo "$_cluster" | awk '{print $2}')
    _port=$(echo "$_cluster" | awk '{print $3}')
    if [ -n "$_ver" ]; then
        _as_root pg_ctlcluster "$_ver" "$_name" start >/dev/null 2>&1 || true  # already running is fine
        for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p "$_port" && break; sleep 1; done
        if pg_isready -q -h 127.0.0.1 -p "$_port"; then
            _psql() { _as_root runuser -u postgres -- psql -q -p "$_port" -v ON_ERROR_STOP=1 "$@"; }
            _psql -tc "SELECT 1 FROM pg_roles WHERE rolname = 'robust'" | grep -q 1 \
                || _psql -c "CREATE ROLE robust LOGIN PASSWORD 'robust'" >/dev/null
            _psql -tc "SELECT 1 FROM pg_database WHERE datname = 'robust_test'" | grep -q 1 \
                || _psql -c "CREATE DATABASE robust_test OWNER robust" >/dev/null
            export ROBUST_TEST_POSTGRES_URL="postgresql+psycopg://robust:robust@127.0.0.1:${_port}/robust_test"
            echo "ci: PostgreSQL $_ver on 127.0.0.1:$_port for the store tests"
        else
            echo "ci: PostgreSQL did not start; its tests will skip"
        fi
    fi
fi
case $_saved_flags in *e*) set -e ;; esac
case $_saved_flags in *u*) set -u ;; esac
if [ "$_saved_pipefail" = on ]; then set -o pipefail; fi
