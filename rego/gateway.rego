# The router: every request is decided by the policy of the agent's team, under data.gateway.teams.<team>.
# A team without a policy, or a request no rule allows, is denied (deny by default).
package gateway

import rego.v1

default decision := {"allow": false, "reasons": ["no policy for this agent's team"]}

decision := d if {
	d := data.gateway.teams[input.agent.team].decision
}
