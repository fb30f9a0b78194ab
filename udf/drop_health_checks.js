/**
 * Filters out load-balancer and Kubernetes health checks, which would inflate availability, and drops
 * requests that carry a synthetic-traffic marker. Returning undefined filters a record out.
 *
 *   --udf_path udf/drop_health_checks.js --udf_function process
 */
var HEALTH_PATHS = ["/healthz", "/readyz", "/livez", "/_ah/health"];

function requestPath(log) {
  var url = (log.httpRequest && log.httpRequest.requestUrl) || log.uri || log.path || "";
  var path = url.replace(/^https?:\/\/[^\/]+/, "").split("?")[0];
  return path;
}

function process(inJson) {
  var log = JSON.parse(inJson);
  var agent = (log.httpRequest && log.httpRequest.userAgent) || log.http_user_agent || "";
  if (HEALTH_PATHS.indexOf(requestPath(log)) >= 0 || agent.indexOf("kube-probe") === 0 ||
      agent.indexOf("GoogleHC") === 0 || (log.labels && log.labels.synthetic === "true")) {
    return undefined;
  }
  return inJson;
}
