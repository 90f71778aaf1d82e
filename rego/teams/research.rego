# Team "research": read-only agents. They read the time (never convert it), read their papers and datasets,
# and fetch from a few reference sites during working hours; every call they make runs read-only.
package gateway.teams.research

import data.gateway.lib
import rego.v1

team := data.teams.research

default args := {}

args := input.arguments if is_object(input.arguments)

# --- grants ------------------------------------------------------------------------------------------------

default grants := false

grants if lib.catalogue_request

grants if {
	input.action in {"tools/list", "tools/call"}
	granted_tool
}

# Session plumbing and relays: for the whole session, and on the upstreams research uses, except that research
# agents never lend their model to an upstream (no sampling) nor let one ask them questions (no elicitation).
default protocol_grants := false

protocol_grants if {
	lib.is_protocol
	input.server == null
}

protocol_grants if {
	lib.is_protocol
	input.server in {"time", "files", "fetch"}
	not input.action in {"sampling/createMessage", "elicitation/create"}
}

granted_tool if {
	input.server == "time"
	input.tool in team.time_tools
}

granted_tool if {
	input.server == "files"
	input.tool in team.file_tools
}

granted_tool if {
	input.server == "fetch"
	input.tool == "fetch"
}

# --- denials -----------------------------------------------------------------------------------------------

# Listed (so the agent learns why), never run.
deny contains "research agents may not use convert_time" if {
	lib.is_call
	input.tool == "convert_time"
}

deny contains msg if {
	lib.is_call
	input.server == "files"
	path := object.get(args, "path", null)
	not readable(path)
	msg := sprintf("research agents may only read papers/, datasets/ and notes/ in their workspace (path %v)", [path])
}

readable(path) if {
	lib.in_workspace(path)
	lib.path_matches(path, team.readable_paths)
}

url_parts := lib.url_parts(args.url)

deny contains msg if {
	lib.is_call
	input.server == "fetch"
	not lib.host_allowed(url_parts.host, team.fetch_hosts)
	msg := concat("", ["host ", url_parts.host, " is not in the team's fetch allow-list"])
}

deny contains msg if {
	lib.is_call
	input.server == "fetch"
	url := object.get(args, "url", null)
	not url_parts
	msg := sprintf("url %v is not an absolute URL with a plain host name", [url])
}

deny contains msg if {
	lib.is_call
	input.server == "fetch"
	not lib.in_weekly_window(team.fetch_window)
	msg := sprintf("outside research fetch hours (now %v %02d:00 UTC; allowed Monday to Friday, %02d:00 to %02d:00 UTC)", [
		lib.weekday, lib.clock[0], team.fetch_window.from_hour, team.fetch_window.to_hour,
	])
}

# --- containment: nothing a research agent runs may write; file tools get no network either -----------------

containment := {"read_only": true, "network": "none"} if {
	lib.is_call
	input.server == "files"
} else := {"read_only": true} if {
	lib.is_call
	input.server == "fetch"
} else := {}
