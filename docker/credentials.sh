#!/usr/bin/env sh
# TLS and SuperNode authentication for docker/compose.yml, in docker/credentials/: a throw-away
# CA, the SuperLink's certificate (valid for the compose host name `superlink` and localhost)
# and one key pair per site (`fedmia credentials`, the same code the loopback tests use).
# Real hospitals bring their own certificates and generate their keys themselves.
#   sh docker/credentials.sh                      # sites hospital-a, hospital-b, hospital-c
#   SITES="site-1 site-2" sh docker/credentials.sh
set -eu
cd "$(dirname "$0")"
sites="${SITES:-hospital-a hospital-b hospital-c}"
set --
for site in $sites; do set -- "$@" --site "$site"; done
if command -v fedmia >/dev/null 2>&1; then
  fedmia credentials credentials --host superlink --host localhost --host 127.0.0.1 "$@"
else  # no local install: the app image has the CLI
  docker compose -f compose.yml run --rm --no-deps -v "$PWD/credentials:/out" --entrypoint fedmia \
    auditor credentials /out --host superlink --host localhost --host 127.0.0.1 "$@"
fi
# The containers run as Flower's unprivileged user: let it read the files (a demo on one
# machine; on a real site the key stays readable by the SuperNode's own user only).
chmod -R a+rX credentials
echo "credentials in $(pwd)/credentials"
