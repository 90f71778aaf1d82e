# Rego tests of the shared helpers (lib.rego). Run with: mcp-gateway policy test rego
# Each test replaces input (and data where it matters) with `with`; the table tests decide whole requests.
package gateway_test.lib

import data.gateway.lib
import rego.v1

# --- identity and grants ---------------------------------------------------------------------------------

test_has_role if {
	lib.has_role("ci") with input.agent.roles as ["ci", "admin"]
	not lib.has_role("admin") with input.agent.roles as ["ci"]
}

test_request_kinds if {
	lib.is_call with input.action as "tools/call"
	not lib.is_call with input.action as "tools/list"
	lib.is_list with input.action as "resources/list"
	not lib.is_list with input.action as "resources/read"
	lib.is_protocol with input.action as "sampling/createMessage"
	not lib.is_protocol with input.action as "tools/call"
}

test_catalogue_request_is_a_list_without_an_item if {
	lib.catalogue_request with input as {"action": "tools/list", "tool": null, "prompt": null, "resource": null}
	not lib.catalogue_request with input as {"action": "tools/list", "tool": "x", "prompt": null, "resource": null}
}

grants := {"ci": {"time": ["get_current_time"], "echo": ["*"]}}

test_tool_granted_by_name_or_star if {
	lib.tool_granted(grants) with input as {"agent": {"roles": ["ci"]}, "server": "time", "tool": "get_current_time"}
	lib.tool_granted(grants) with input as {"agent": {"roles": ["ci"]}, "server": "echo", "tool": "anything"}
	not lib.tool_granted(grants) with input as {"agent": {"roles": ["ci"]}, "server": "time", "tool": "convert_time"}
	not lib.tool_granted(grants) with input as {"agent": {"roles": []}, "server": "echo", "tool": "anything"}
}

test_server_granted_by_any_grant if {
	lib.server_granted(grants) with input as {"agent": {"roles": ["ci"]}, "server": "time"}
	not lib.server_granted(grants) with input as {"agent": {"roles": ["ci"]}, "server": "git"}
}

test_global_deny_names_the_suspended_agent if {
	lib.global_deny == {"agent bot-7 is suspended"} with input.agent.id as "bot-7"
		with data.global.suspended_agents as ["bot-7"]
	count(lib.global_deny) == 0 with input.agent.id as "ci-bot" with data.global.suspended_agents as ["bot-7"]
}

test_global_deny_names_each_secret_found_in_the_arguments if {
	lib.global_deny == {"argument arguments.env.TOKEN carries a secret (github_token)"} with input as {
		"agent": {"id": "ci-bot", "team": "t"}, "server": "sh", "tool": "run",
		"findings": [{"kind": "github_token", "path": "arguments.env.TOKEN", "where": "arguments"}],
	}
		with data.global.suspended_agents as []
		with data.teams.t.allowed_findings as []
}

test_a_team_may_allow_a_finding_by_kind_server_tool_and_path_glob if {
	finding := {"kind": "private_key", "path": "arguments.files.key", "where": "arguments"}
	call := {"agent": {"id": "ci-bot", "team": "t"}, "server": "sh", "tool": "run", "findings": [finding]}
	count(lib.global_deny) == 0 with input as call with data.global.suspended_agents as []
		with data.teams.t.allowed_findings as [{"kind": "private_key", "server": "sh", "path": "arguments.files.*"}]
	count(lib.global_deny) == 0 with input as call with data.global.suspended_agents as []
		with data.teams.t.allowed_findings as [{"tool": "*"}]
	count(lib.global_deny) == 1 with input as call with data.global.suspended_agents as []
		with data.teams.t.allowed_findings as [{"kind": "private_key", "tool": "other"}]
	count(lib.global_deny) == 1 with input as call with data.global.suspended_agents as []
		with data.teams.t.allowed_findings as [{"kind": "private_key", "path": "arguments.env.*"}]
}

# --- paths -----------------------------------------------------------------------------------------------

test_in_workspace if {
	lib.in_workspace("src/main.py")
	lib.in_workspace("./notes")
	not lib.in_workspace("")
	not lib.in_workspace("/etc/passwd")
	not lib.in_workspace("~/.ssh/id_rsa")
	not lib.in_workspace("src/../../etc")
	not lib.in_workspace(42)
}

test_path_within if {
	lib.path_within("/tmp/repo", "/tmp/")
	not lib.path_within("/tmp/../etc", "/tmp/")
	not lib.path_within("/etc/repo", "/tmp/")
	not lib.path_within(null, "/tmp/")
}

test_path_matches_after_a_leading_dot_slash if {
	lib.clean_path("./papers/a.pdf") == "papers/a.pdf"
	lib.path_matches("./papers/a.pdf", ["papers/**"])
	lib.path_matches("src/.env", ["**/.env"])
	not lib.path_matches("data/a.csv", ["papers/**"])
	not lib.path_matches(["papers/a.pdf"], ["papers/**"])
}

# --- shell commands --------------------------------------------------------------------------------------

test_shell_operators if {
	lib.has_shell_operators("ls; rm -rf /")
	lib.has_shell_operators("cat a | sh")
	lib.has_shell_operators("echo $(id)")
	lib.has_shell_operators("ls\nid")
	not lib.has_shell_operators("git status --short")
	not lib.has_shell_operators(["ls"])
}

test_command_words_and_allow_list if {
	lib.command_words("  git   log -n 3 ") == ["git", "log", "-n", "3"]
	lib.words_allowed(["ls", "-la"], {"ls": ["*"]})
	lib.words_allowed(["git", "status"], {"git": ["status", "log"]})
	not lib.words_allowed(["git", "push"], {"git": ["status", "log"]})
	not lib.words_allowed(["git"], {"git": ["status"]})
	not lib.words_allowed(["rm", "-rf"], {"git": ["*"]})
}

# --- URLs ------------------------------------------------------------------------------------------------

test_url_parts if {
	lib.url_parts("HTTPS://PyPI.org/simple/") == {"scheme": "https", "host": "pypi.org"}
	lib.url_parts("http://example.com:8080") == {"scheme": "http", "host": "example.com"}
	not lib.url_parts("https://user@example.com/")
	not lib.url_parts("https://[::1]/")
	not lib.url_parts("example.com/path")
	not lib.url_parts(7)
}

test_host_allowed_by_label_globs if {
	lib.host_allowed("api.github.com", ["*.github.com"])
	not lib.host_allowed("github.com", ["*.github.com"])
	not lib.host_allowed("evil.com.github.io", ["*.github.com"])
}

# --- time ------------------------------------------------------------------------------------------------

monday_10h := 1793613600000000000 # 2026-11-02T10:00:00Z

saturday_10h := 1794045600000000000 # 2026-11-07T10:00:00Z

office := {"days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"], "from_hour": 8, "to_hour": 18}

test_clock_and_weekday_read_the_request_time if {
	lib.clock == [10, 0, 0] with input.request.time_ns as monday_10h
	lib.weekday == "Monday" with input.request.time_ns as monday_10h
}

test_weekly_window if {
	lib.in_weekly_window(office) with input.request.time_ns as monday_10h
	not lib.in_weekly_window(office) with input.request.time_ns as saturday_10h
	not lib.in_weekly_window({"days": ["Monday"], "from_hour": 11, "to_hour": 18}) with input.request.time_ns as monday_10h
	not lib.in_weekly_window({"days": ["Monday"], "from_hour": 8, "to_hour": 10}) with input.request.time_ns as monday_10h
}

test_dated_window_excludes_its_end if {
	w := {"from": "2026-11-02T00:00:00+00:00", "until": "2026-11-02T10:00:00+00:00"}
	not lib.in_dated_window(w) with input.request.time_ns as monday_10h
	lib.in_dated_window(w) with input.request.time_ns as monday_10h - 1
	not lib.in_dated_window({"from": "2026-11-03T00:00:00+00:00", "until": "2026-11-04T00:00:00+00:00"}) with input.request.time_ns as monday_10h
}

# --- the decision ----------------------------------------------------------------------------------------

test_decide_denies_with_every_reason if {
	lib.decide({"a", "b"}, true, {}) == {"allow": false, "reasons": {"a", "b"}} with input.agent.id as "x"
		with data.global.suspended_agents as []
	lib.decide(set(), true, {}) == {"allow": false, "reasons": {"agent x is suspended"}} with input.agent.id as "x"
		with data.global.suspended_agents as ["x"]
}

test_decide_allows_a_grant_with_its_containment if {
	lib.decide(set(), true, {}) == {"allow": true, "reasons": []} with data.global.suspended_agents as []
	lib.decide(set(), true, {"read_only": true}) == {"allow": true, "reasons": [], "containment": {"read_only": true}}
		with data.global.suspended_agents as []
	lib.decide(set(), false, {}) == {"allow": false, "reasons": ["no rule allows this request"]}
		with data.global.suspended_agents as []
}

test_list_decision if {
	lib.list_decision(true) == {"allow": true, "reasons": []} with data.global.suspended_agents as []
	lib.list_decision(false) == {"allow": false, "reasons": ["no rule allows this request"]}
		with data.global.suspended_agents as []
	lib.list_decision(true) == {"allow": false, "reasons": {"agent x is suspended"}} with input.agent.id as "x"
		with data.global.suspended_agents as ["x"]
}

test_decide_monitored_lets_a_granted_request_through_on_trial_rules_only if {
	lib.decide_monitored(set(), {"new rule"}, true, {}) == {"allow": false, "mode": "monitor", "reasons": {"new rule"}}
		with data.global.suspended_agents as []
	lib.decide_monitored(set(), {"new rule"}, true, {"network": "none"}) == {
		"allow": false, "mode": "monitor", "reasons": {"new rule"}, "containment": {"network": "none"},
	} with data.global.suspended_agents as []
}

test_decide_monitored_enforces_when_an_enforced_rule_denies_or_nothing_grants if {
	lib.decide_monitored({"old rule"}, {"new rule"}, true, {}) == {"allow": false, "reasons": {"old rule"}}
		with data.global.suspended_agents as []
	lib.decide_monitored(set(), {"new rule"}, false, {}) == {"allow": false, "reasons": ["no rule allows this request"]}
		with data.global.suspended_agents as []
	lib.decide_monitored(set(), set(), true, {}) == {"allow": true, "reasons": []} with data.global.suspended_agents as []
}
