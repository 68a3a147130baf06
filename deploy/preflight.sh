#!/bin/sh
# Refuses to go on while a password or token is empty or still a template's
# placeholder (change-me, unset, ...). docker-compose.yml and
# docker-compose.cluster.yml run it before the center starts (the "preflight"
# service, on which every service waits), and before the demo simulator.
#
#   preflight.sh VAR... [-- COMMAND [ARG...]]
#
# Checks the environment variables named VAR, then runs COMMAND (if given)
# in its place. Exit status 1, with the names of the bad variables on
# stderr (never their values), when one is empty or a placeholder.
set -eu
bad=""
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then
    shift
    break
  fi
  case "$1" in
    "" | [0-9]* | *[!A-Za-z0-9_]*)
      echo "preflight: '$1' is not a variable name" >&2
      exit 2
      ;;
  esac
  eval "value=\${$1:-}"
  # shellcheck disable=SC2154  # set by the eval above
  lower=$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')
  case "$lower" in
    "" | change-me | changeme | change_me | unset | secret | password | xxx | "...")
      bad="$bad $1"
      ;;
  esac
  shift
done
if [ -n "$bad" ]; then
  echo "farmedge: refusing to start: these are empty or a placeholder (change-me, unset):$bad" >&2
  echo "  Set each in .env to a long random value, for example from:" >&2
  echo "    python3 -c 'import secrets; print(secrets.token_urlsafe(24))'" >&2
  case "$bad " in
    *" EDGE_MQTT_PASSWORD "*)
      echo "  EDGE_MQTT_PASSWORD: farmedge provision edge --env-file .env" >&2 ;;
  esac
  case "$bad " in
    *" EDGE_NATS_PASSWORD "*)
      echo "  EDGE_NATS_PASSWORD: farmedge provision nats edge --env-file .env" >&2 ;;
  esac
  case "$bad " in
    *" SIMULATOR_MQTT_PASSWORD "*)
      echo "  SIMULATOR_MQTT_PASSWORD: farmedge provision simulator --env-file .env" >&2 ;;
  esac
  exit 1
fi
if [ $# -gt 0 ]; then
  exec "$@"
fi
echo "preflight: ok"
