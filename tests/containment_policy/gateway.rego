# Test policy for the containment tests and conformance battery: every agent may use every tool; some calls
# carry a containment narrowing, to prove narrowing applies and never widens.
package gateway

import rego.v1

decision := {"allow": true, "reasons": [], "containment": c} if {
	input.action == "tools/call"
	c := narrowing
} else := {"allow": true, "reasons": []} if {
	input.action in {"tools/list", "prompts/list", "resources/list", "tools/call", "prompts/get", "resources/read"}
} else := {"allow": false, "reasons": ["no rule allows this request"]}

# Agents of team "research" get read-only workers without network.
narrowing := {"read_only": true, "network": "none"} if {
	input.agent.team == "research"
} else := {"memory_mb": 100000, "network": "host", "timeout_s": 100000, "subprocesses": true} if {
	# asks for more than the profile grants: must be clamped to the profile, never widen it
	contains(input.arguments.command, "WIDEN")
} else := {"profile": "tiny"} if {
	contains(input.arguments.command, "TINY")
} else := {"profile": "loose"} if {
	contains(input.arguments.command, "LOOSE")
} else := {"no_such_key": 1} if {
	contains(input.arguments.command, "BADKEY")
}
