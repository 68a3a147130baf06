#!/bin/bash
# farmedge: first-start setup of InfluxDB 2.x, run once by the influxdb image
# (/docker-entrypoint-initdb.d) after it created the org, the admin user and
# the raw bucket from DOCKER_INFLUXDB_INIT_*. It adds:
#   - the bucket "<db>_hourly" for the hourly downsample (kept for years);
#   - the v1 DBRP mappings, so InfluxQL (Grafana, the edge's v1 writes) sees
#     database "<db>" with retention policies "raw" (default) and "hourly";
#   - two v1 credentials with least privilege: the edge may only write the
#     raw bucket; Grafana may only read both buckets;
#   - the task that writes the hourly downsample.
# Everything comes from the environment docker-compose.yml passes.
set -euo pipefail

org="${DOCKER_INFLUXDB_INIT_ORG}"
db="${INFLUX_DATABASE:-$DOCKER_INFLUXDB_INIT_BUCKET}"
raw_bucket="${DOCKER_INFLUXDB_INIT_BUCKET}"
hourly_bucket="${db}_hourly"

bucket_id() {
  influx bucket list --org "$org" --name "$1" --hide-headers | cut -f1
}

raw_id="$(bucket_id "$raw_bucket")"
if [ -z "$(bucket_id "$hourly_bucket" 2>/dev/null || true)" ]; then
  influx bucket create --org "$org" --name "$hourly_bucket" \
    --retention "${INFLUX_HOURLY_RETENTION:-3650d}" >/dev/null
fi
hourly_id="$(bucket_id "$hourly_bucket")"

influx v1 dbrp create --org "$org" --db "$db" --rp raw --bucket-id "$raw_id" --default
influx v1 dbrp create --org "$org" --db "$db" --rp hourly --bucket-id "$hourly_id"

influx v1 auth create --org "$org" --username "${INFLUX_EDGE_USER}" \
  --password "${INFLUX_EDGE_PASSWORD}" --write-bucket "$raw_id" \
  --description "farmedge edge: write readings"
influx v1 auth create --org "$org" --username "${INFLUX_GRAFANA_USER}" \
  --password "${INFLUX_GRAFANA_PASSWORD}" --read-bucket "$raw_id" --read-bucket "$hourly_id" \
  --description "farmedge Grafana: read only"

# The hourly downsample: the same fields as the InfluxDB 1.x continuous
# queries of deploy/influxdb/v1-setup.iql (mean_/min_/max_<field>, and
# sum_rainfall), so dashboards read "<db>"."hourly" the same way on both.
task_file="$(mktemp)"
cat >"$task_file" <<FLUX
import "types"

option task = {name: "farmedge-hourly", every: 1h, offset: 5m}

// Two hours back on every run: readings a gateway replays from its outbox
// within that window still count. Older backlog: see docs/stack.md.
data = from(bucket: "${raw_bucket}")
    |> range(start: -2h, stop: now())
    |> filter(fn: (r) => r._measurement =~ /^(soil|weather|livestock|water|device|gateway)$/)
    |> filter(fn: (r) => types.isType(v: r._value, type: "float") or types.isType(v: r._value, type: "int"))
    |> map(fn: (r) => ({r with _value: float(v: r._value)}))

agg = (fn, prefix) => data
    |> aggregateWindow(every: 1h, fn: fn, createEmpty: false)
    |> map(fn: (r) => ({r with _field: prefix + r._field}))
    |> to(bucket: "${hourly_bucket}", org: "${org}")

agg(fn: mean, prefix: "mean_")
agg(fn: min, prefix: "min_")
agg(fn: max, prefix: "max_")

data
    |> filter(fn: (r) => r._measurement == "weather" and r._field == "rainfall")
    |> aggregateWindow(every: 1h, fn: sum, createEmpty: false)
    |> map(fn: (r) => ({r with _field: "sum_rainfall"}))
    |> to(bucket: "${hourly_bucket}", org: "${org}")
FLUX
influx task create --org "$org" --file "$task_file" >/dev/null
rm -f "$task_file"
echo "farmedge: buckets, DBRP mappings, edge/grafana credentials and the hourly task are set up"
