# Rego tests of the router (gateway.rego): which team's rules decide, and the defaults for what a team leaves out.
package gateway_test.router

import data.gateway
import rego.v1

ci := {"id": "ci-bot", "team": "platform", "roles": ["ci"]}

test_a_team_without_a_policy_is_denied if {
	gateway.decision == {"allow": false, "reasons": ["no policy for this agent's team"]} with input as {"agent": {"id": "m", "team": "marketing", "roles": []}, "action": "tools/call"}
}

test_lists_are_decided_by_grants_alone if {
	gateway.decision == {"allow": true, "reasons": []} with input as {"agent": ci, "action": "tools/list", "tool": null, "prompt": null, "resource": null}
}

test_protocol_requests_by_protocol_grants if {
	gateway.decision.allow with input as {"agent": ci, "action": "logging/setLevel", "server": null}
	not gateway.decision.allow with input as {"agent": ci, "action": "elicitation/create", "server": "payroll"}
}

test_a_team_may_define_its_own_decision if {
	gateway.decision == {"allow": true, "reasons": ["custom"]} with input as {"agent": {"id": "x", "team": "custom", "roles": []}, "action": "tools/call"}
		with data.gateway.teams.custom.decision as {"allow": true, "reasons": ["custom"]}
}

test_calls_combine_deny_grants_and_containment if {
	gateway.decision == {"allow": true, "reasons": [], "containment": {"network": "none", "read_only": true}} with input as {"agent": ci, "action": "tools/call", "server": "files", "tool": "read_file", "arguments": {"path": "a.txt"}, "annotations": {}}
}

test_what_a_team_leaves_out if {
	gateway.team_grants == false with input.agent.team as "empty" with data.gateway.teams.empty as {"deny": set()}
	gateway.team_protocol_grants == false with input.agent.team as "empty" with data.gateway.teams.empty as {}
	gateway.team_deny == set() with input.agent.team as "empty" with data.gateway.teams.empty as {}
	gateway.team_containment == {} with input.agent.team as "empty" with data.gateway.teams.empty as {}
	not gateway.team_known with input.agent.team as "empty" with data.gateway.teams.empty as {"deny": set()}
}

test_a_teams_monitor_deny_puts_a_granted_call_on_trial if {
	d := gateway.decision with input as {"agent": ci, "action": "tools/call", "server": "time", "tool": "get_current_time", "arguments": {}, "annotations": {}}
		with data.gateway.teams.platform.monitor_deny as {"trial rule"}
	d == {"allow": false, "mode": "monitor", "reasons": {"trial rule"}}
}
