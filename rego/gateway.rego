# The router: every request is decided by the policy of the agent's team, the package gateway.teams.<team>
# (rego/teams/<team>.rego). Adding a team is adding its file and its data; this router does not change.
# A team without a policy is denied (deny by default), and so is a request no rule of its team allows.
#
# Lists (the catalogue, and each item of it: one decision per tool, prompt or resource an agent may see) are
# decided by the team's grants alone, with the global denials: deny rules judge the requests that act (tools/call,
# prompts/get, resources/read, ...), and skipping them keeps a long tools/list cheap. Session plumbing and what
# upstreams relay to agents (lib.protocol_actions) are decided the same way, from the team's protocol_grants.
package gateway

import data.gateway.lib
import rego.v1

default decision := {"allow": false, "reasons": ["no policy for this agent's team"]}

decision := lib.list_decision(data.gateway.teams[input.agent.team].grants) if lib.is_list
else := lib.list_decision(data.gateway.teams[input.agent.team].protocol_grants) if lib.is_protocol
else := data.gateway.teams[input.agent.team].decision
