# The router: every request is decided by the policy of the agent's team, the package gateway.teams.<team>
# (rego/teams/<team>.rego). Adding a team is adding its file and its data; this router does not change.
# A team without a policy is denied (deny by default), and so is a request no rule of its team allows.
#
# A team defines what it grants (grants, protocol_grants: booleans), what it denies (deny: a set of reasons; a rule
# on trial adds to monitor_deny instead: the gateway lets what it alone denies through, as would_deny) and
# how its calls are contained (containment: an object); each may be left out (nothing granted, nothing denied,
# no narrowing). The router makes the decision document from them with lib.decide; a team that needs another
# shape of decision defines decision itself, and that is used for the requests that act.
#
# Lists (the catalogue, and each item of it: one decision per tool, prompt or resource an agent may see) are
# decided by the team's grants alone, with the global denials: deny rules judge the requests that act (tools/call,
# prompts/get, resources/read, ...), and skipping them keeps a long tools/list cheap. Session plumbing and what
# upstreams relay to agents (lib.protocol_actions) are decided the same way, from the team's protocol_grants.
package gateway

import data.gateway.lib
import rego.v1

default decision := {"allow": false, "reasons": ["no policy for this agent's team"]}

decision := lib.list_decision(team_grants) if {
	team_known
	lib.is_list
} else := lib.list_decision(team_protocol_grants) if {
	team_known
	lib.is_protocol
} else := d if {
	d := data.gateway.teams[input.agent.team].decision
} else := lib.decide_monitored(team_deny, team_monitor_deny, team_grants, team_containment) if {
	team_known
}

# What the agent's team defines, with the defaults for what it leaves out.
default team_grants := false

team_grants := g if g := data.gateway.teams[input.agent.team].grants

default team_protocol_grants := false

team_protocol_grants := g if g := data.gateway.teams[input.agent.team].protocol_grants

default team_deny := set()

team_deny := d if d := data.gateway.teams[input.agent.team].deny

# Rules on trial (docs/policy.md, "Rolling out a rule"): reasons a team's monitor_deny gives are recorded, not enforced.
default team_monitor_deny := set()

team_monitor_deny := d if d := data.gateway.teams[input.agent.team].monitor_deny

default team_containment := {}

team_containment := c if c := data.gateway.teams[input.agent.team].containment

# A team is known when its package defines grants or decision (a package with neither grants nothing).
team_known if _ := data.gateway.teams[input.agent.team].grants

team_known if _ := data.gateway.teams[input.agent.team].decision
