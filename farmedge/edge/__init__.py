"""The edge service: MQTT → validate → InfluxDB (+ spool) → alert engine."""
