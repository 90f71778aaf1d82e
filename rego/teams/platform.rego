# Team "platform": CI bots and the platform engineers' agents.
package gateway.teams.platform

import data.gateway.lib
import rego.v1

# Which upstream tools each role may use ("*" for all tools of an upstream).
allowed_tool if {
	some role in input.agent.roles
	grants := data.teams.platform.roles[role][input.server]
	some t in grants
	t in {"*", input.tool}
}

allowed_prompt if {
	some role in input.agent.roles
	data.teams.platform.roles[role][input.server]
}

allowed_resource if {
	some role in input.agent.roles
	data.teams.platform.roles[role][input.server]
}

# Tools marked destructive need the "admin" role.
deny contains "destructive tools need the admin role" if {
	input.action == "tools/call"
	input.annotations.destructiveHint == true
	not lib.has_role("admin")
}

# Time conversions are limited to the zones the team works in.
deny contains msg if {
	input.action == "tools/call"
	input.server == "time"
	tz := input.arguments.source_timezone
	not tz in data.teams.platform.timezones
	msg := sprintf("timezone %v is not in the team's list", [tz])
}

# The git tools only touch repositories under the team's workspace.
deny contains msg if {
	input.action == "tools/call"
	input.server == "git"
	path := input.arguments.repo_path
	not lib.path_within(path, data.teams.platform.repo_root)
	msg := sprintf("repo_path %v is outside %v", [path, data.teams.platform.repo_root])
}

grants if lib.catalogue_request

grants if {
	input.action in {"tools/list", "tools/call"}
	allowed_tool
}

grants if {
	input.action in {"prompts/list", "prompts/get"}
	allowed_prompt
}

grants if {
	input.action in {"resources/list", "resources/read"}
	allowed_resource
}

decision := lib.decision_from(deny, grants)
