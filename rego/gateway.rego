# The router: every request is decided by the policy of the agent's team, the package gateway.teams.<team>
# (rego/teams/<team>.rego). Adding a team is adding its file and its data; this router does not change.
# A team without a policy is denied (deny by default), and so is a request no rule of its team allows.
package gateway

import rego.v1

default decision := {"allow": false, "reasons": ["no policy for this agent's team"]}

decision := data.gateway.teams[input.agent.team].decision
