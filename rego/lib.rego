# Helpers shared by the team policies.
package gateway.lib

import rego.v1

has_role(role) if role in input.agent.roles

is_list if input.action in {"tools/list", "prompts/list", "resources/list"}

# Listing the whole catalogue (no particular tool yet): every team may ask; items are filtered one by one.
catalogue_request if {
	is_list
	input.tool == null
	input.prompt == null
	input.resource == null
}

# The hour of day (UTC) of the request, from the request time the gateway passes in.
hour_utc := floor((input.request.time_ns / 1000000000) / 3600) % 24

# A path argument stays inside a directory: no parent references, and it starts with the prefix.
path_within(path, prefix) if {
	is_string(path)
	not contains(path, "..")
	startswith(path, prefix)
}

decision_from(reasons, grants) := {"allow": true, "reasons": []} if {
	count(reasons) == 0
	grants
} else := {"allow": false, "reasons": r} if {
	count(reasons) > 0
	r := reasons
} else := {"allow": false, "reasons": ["no rule allows this request"]}
