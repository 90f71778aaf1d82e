# Rego tests of team "platform": its grants and deny rules one by one, on the team's own data.
# The table tests (platform_test.yaml) decide whole requests through the router.
package gateway_test.teams.platform

import data.gateway.teams.platform
import rego.v1

ci := {"id": "ci-bot", "team": "platform", "roles": ["ci"]}

admin := {"id": "platform-admin", "team": "platform", "roles": ["admin"]}

call(server, tool, args) := {"agent": ci, "action": "tools/call", "server": server, "tool": tool, "arguments": args, "annotations": {}}

# --- grants ----------------------------------------------------------------------------------------------

test_grants_follow_the_roles_data if {
	platform.grants with input as call("git", "git_log", {})
	not platform.grants with input as call("git", "git_commit", {})
	platform.grants with input as object.union(call("git", "git_commit", {}), {"agent": admin})
}

test_grants_prompts_and_resources_of_granted_upstreams if {
	platform.grants with input as {"agent": ci, "action": "resources/read", "server": "echo"}
	not platform.grants with input as {"agent": ci, "action": "resources/read", "server": "payroll"}
}

test_grants_the_catalogue if {
	platform.grants with input as {"agent": ci, "action": "tools/list", "tool": null, "prompt": null, "resource": null}
}

test_protocol_grants if {
	platform.protocol_grants with input as {"agent": ci, "action": "logging/setLevel", "server": null}
	platform.protocol_grants with input as {"agent": ci, "action": "sampling/createMessage", "server": "echo"}
	not platform.protocol_grants with input as {"agent": ci, "action": "sampling/createMessage", "server": "payroll"}
}

# --- deny rules ------------------------------------------------------------------------------------------

test_destructive_tools_need_admin_unless_argument_checked if {
	d := object.union(call("echo", "wipe", {}), {"annotations": {"destructiveHint": true}})
	"destructive tools need the admin role" in platform.deny with input as d
	count(platform.deny) == 0 with input as object.union(d, {"agent": admin})
	count(platform.deny) == 0 with input as object.union(d, {"server": "files", "tool": "write_file", "arguments": {"path": "build/a"}})
}

test_timezones if {
	platform.deny == {"timezone Mars/Olympus is not in the team's list"} with input as call("time", "convert_time", {"source_timezone": "Mars/Olympus"})
	count(platform.deny) == 0 with input as call("time", "convert_time", {"source_timezone": "UTC"})
}

test_git_repo_root_and_freeze if {
	platform.deny == {"repo_path /etc is outside /tmp/"} with input as call("git", "git_log", {"repo_path": "/etc"})
	frozen := object.union(call("git", "git_commit", {"repo_path": "/tmp/r"}), {"request": {"time_ns": 1798416000000000000}})
	platform.deny == {"git_commit is frozen until 2027-01-04T00:00:00+00:00 (year-end freeze)"} with input as frozen
	count(platform.deny) == 0 with input as object.union(frozen, {"request": {"time_ns": 1793613600000000000}})
}

test_shell_commands if {
	platform.deny == {"run needs a command string"} with input as call("sh", "run", {})
	"command uses shell operators (; & | < > $ ` ( ) { } \\ or a newline); only single allow-listed commands may run" in platform.deny with input as call("sh", "run", {"command": "ls; id"})
	platform.deny == {"command rm is not in the allow-list of your roles"} with input as call("sh", "run", {"command": "rm -rf x"})
	platform.deny == {"make may only run as: make build | lint | test (not make install)"} with input as call("sh", "run", {"command": "make install"})
	count(platform.deny) == 0 with input as call("sh", "run", {"command": "make test"})
	count(platform.deny) == 0 with input as object.union(call("sh", "run", {"command": "rm -rf x"}), {"agent": admin})
}

test_shell_cwd_and_timeout if {
	platform.deny == {"cwd /etc is outside the workspace"} with input as call("sh", "run", {"command": "ls", "cwd": "/etc"})
	platform.deny == {"timeout_s 900 is above the team's limit of 300 s"} with input as call("sh", "run", {"command": "ls", "timeout_s": 900})
}

test_files if {
	platform.deny == {"path /etc/passwd is outside the workspace"} with input as call("files", "read_file", {"path": "/etc/passwd"})
	platform.deny == {"path .secrets/key is protected"} with input as call("files", "read_file", {"path": ".secrets/key"})
	platform.deny == {"path src/a.py is not writable (writable: build/**, dist/**, tmp/**)"} with input as call("files", "write_file", {"path": "src/a.py"})
	count(platform.deny) == 0 with input as call("files", "write_file", {"path": "build/out.txt"})
}

test_fetch if {
	platform.deny == {"url pypi.org is not an absolute URL with a plain host name"} with input as call("fetch", "fetch", {"url": "pypi.org"})
	platform.deny == {"url scheme http is not allowed (https only)"} with input as call("fetch", "fetch", {"url": "http://pypi.org/"})
	platform.deny == {"host evil.example is not in the team's fetch allow-list"} with input as call("fetch", "fetch", {"url": "https://evil.example/"})
	count(platform.deny) == 0 with input as call("fetch", "fetch", {"url": "https://api.github.com/repos"})
}

# --- containment -----------------------------------------------------------------------------------------

test_containment if {
	platform.containment == {"network": "none", "read_only": true} with input as call("files", "read_file", {"path": "a"})
	platform.containment == {"network": "none"} with input as call("sh", "run", {"command": "ls"})
	platform.containment == {} with input as object.union(call("sh", "run", {"command": "ls"}), {"agent": admin})
}
