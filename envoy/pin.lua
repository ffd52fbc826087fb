-- Junction's header pin, in the proxy: the fast path for deployments that only need pins,
-- and the baseline of the ext_proc benchmark (loadtest/extproc).
--
-- A request naming a version in `x-junction-version` is routed to that version's cluster:
-- the filter sets `x-junction-cluster` and asks Envoy to re-pick the route, which then
-- matches the header-matched route Junction's translation puts in front of the plain one
-- (junction/xds/translate_extproc.py). Anything else -- no pin, the header twice, a version
-- not in VERSIONS -- is left to the plain weighted route. A client's own
-- `x-junction-cluster` never reaches this filter: an HCM early header mutation strips it
-- before routing.
--
-- What it does not do (use the decision service, junction.extproc, for these): trust rules
-- (CIDR, signed pins), falling back when the version has no healthy host, experiments,
-- sticky canary buckets, counters.
--
-- Install: put this file's text in an `envoy.filters.http.lua` filter's
-- `default_source_code.inline_string`, before the router, in place of the ext_proc filter,
-- with VERSIONS matching `versions.<service>.clusters` of the Junction config.

local PIN_HEADER = "x-junction-version"
local CLUSTER_HEADER = "x-junction-cluster"
local DECISION_HEADER = "x-junction-decision"

-- version -> cluster (versions.web-api.clusters of examples/seed.yaml)
local VERSIONS = {
  ["perl"] = "web-api-perl",
  ["go"] = "web-api-go",
}

function envoy_on_request(handle)
  local headers = handle:headers()
  -- Exactly one pin: two are ambiguous, and ambiguity never pins.
  if headers:getNumValues(PIN_HEADER) ~= 1 then
    return
  end
  local version = headers:get(PIN_HEADER)
  local cluster = VERSIONS[version]
  if cluster == nil then
    return
  end
  headers:replace(CLUSTER_HEADER, cluster)
  headers:replace(DECISION_HEADER, "pin=" .. version)
  handle:clearRouteCache()
end
