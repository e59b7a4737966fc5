#!/bin/sh
# The liqwatch image's entrypoint (run under tini).
#   docker run IMAGE ARGS…   → liqwatch ARGS…  (e.g. `check-config /etc/liqwatch/liqwatch.toml`)
#   docker run IMAGE         → the daemon on the mounted config, if one is mounted at
#                              $LIQWATCH_CONFIG (default /etc/liqwatch/liqwatch.toml);
#                              otherwise the offline demo (no network, no secrets).
set -eu
config="${LIQWATCH_CONFIG:-/etc/liqwatch/liqwatch.toml}"
if [ "$#" -gt 0 ]; then
    exec liqwatch "$@"
fi
if [ -f "$config" ]; then
    exec liqwatch run --init-journal --config "$config"
fi
echo "liqwatch: no config at $config: running the offline demo (mount a config there to run the daemon)" >&2
exec liqwatch demo
