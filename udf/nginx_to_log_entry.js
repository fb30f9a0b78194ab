/**
 * Maps an nginx JSON access log (log_format ... escape=json with $time_iso8601, $request, $status,
 * $request_time, $host) to a Cloud Logging LogEntry with httpRequest, which the SLI pipeline reads
 * whatever the config's field mappings. Other records pass through unchanged.
 *
 *   --udf_path udf/nginx_to_log_entry.js --udf_function process
 */
function process(inJson) {
  var log = JSON.parse(inJson);
  if (log.request === undefined || log.time_iso8601 === undefined) {
    return inJson;
  }
  var parts = String(log.request).split(" ");  // "GET /profile/alice?x=1 HTTP/1.1"
  if (parts.length < 2) {
    throw new Error("nginx request line '" + log.request + "' has no method and path");
  }
  var entry = {
    timestamp: log.time_iso8601,
    httpRequest: {
      requestMethod: parts[0],
      requestUrl: "https://" + (log.host || "unknown") + parts[1],
      status: parseInt(log.status, 10),
      latency: String(log.request_time) + "s"
    },
    resource: {type: "nginx", labels: {service_name: log.service || log.host || "unknown"}}
  };
  return JSON.stringify(entry);
}
