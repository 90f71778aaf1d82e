# Rego tests of team "research": what it may use, and each deny rule on its own.
package gateway_test.teams.research

import data.gateway.teams.research
import rego.v1

agent := {"id": "research-agent", "team": "research", "roles": []}

monday_10h := 1793613600000000000 # 2026-11-02T10:00:00Z

call(server, tool, args) := {
	"agent": agent, "action": "tools/call", "server": server, "tool": tool, "arguments": args,
	"request": {"time_ns": monday_10h},
}

test_grants if {
	research.grants with input as call("time", "get_current_time", {})
	research.grants with input as call("files", "read_file", {"path": "papers/a.pdf"})
	research.grants with input as call("fetch", "fetch", {"url": "https://arxiv.org/"})
	not research.grants with input as call("git", "git_log", {})
	research.grants with input as {"agent": agent, "action": "tools/list", "tool": null, "prompt": null, "resource": null}
}

test_protocol_grants_never_sampling if {
	research.protocol_grants with input as {"agent": agent, "action": "logging/setLevel", "server": null}
	research.protocol_grants with input as {"agent": agent, "action": "notifications/message", "server": "files"}
	not research.protocol_grants with input as {"agent": agent, "action": "sampling/createMessage", "server": "files"}
}

test_convert_time_is_denied if {
	research.deny == {"research agents may not use convert_time"} with input as call("time", "convert_time", {})
}

test_files_only_readable_paths if {
	count(research.deny) == 0 with input as call("files", "read_file", {"path": "./papers/a.pdf"})
	research.deny == {"research agents may only read papers/, datasets/ and notes/ in their workspace (path src/a.py)"} with input as call("files", "read_file", {"path": "src/a.py"})
}

test_fetch_hosts_urls_and_hours if {
	research.deny == {"host evil.example is not in the team's fetch allow-list"} with input as call("fetch", "fetch", {"url": "https://evil.example/"})
	research.deny == {"url nope is not an absolute URL with a plain host name"} with input as call("fetch", "fetch", {"url": "nope"})
	sunday := object.union(call("fetch", "fetch", {"url": "https://arxiv.org/"}), {"request": {"time_ns": monday_10h - 86400000000000}})
	research.deny == {"outside research fetch hours (now Sunday 10:00 UTC; allowed Monday to Friday, 07:00 to 19:00 UTC)"} with input as sunday
}

test_containment_is_read_only if {
	research.containment == {"read_only": true, "network": "none"} with input as call("files", "read_file", {"path": "papers/a"})
	research.containment == {"read_only": true} with input as call("fetch", "fetch", {"url": "https://arxiv.org/"})
	research.containment == {} with input as call("time", "get_current_time", {})
}
