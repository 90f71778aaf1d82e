# Team "platform": CI bots (role ci) and the platform engineers' agents (role admin).
#
# What each role may reach is data (data.teams.platform.roles); the rules below add what data cannot say:
# destructive tools, argument checks per upstream, a change freeze, and the containment of each call.
# Every denial carries a reason an engineer can act on.
package gateway.teams.platform

import data.gateway.lib
import rego.v1

team := data.teams.platform

# The call's arguments (an object on every tools/call the gateway decides; empty for lists).
default args := {}

args := input.arguments if is_object(input.arguments)

# --- grants ------------------------------------------------------------------------------------------------

default grants := false

grants if lib.catalogue_request

grants if {
	input.action in {"tools/list", "tools/call"}
	lib.tool_granted(team.roles)
}

grants if {
	input.action in {"prompts/list", "prompts/get", "resources/list", "resources/read"}
	lib.server_granted(team.roles)
}

# Session plumbing and relays: for the whole session, and on every upstream a role of the agent is granted.
default protocol_grants := false

protocol_grants if {
	lib.is_protocol
	input.server == null
}

protocol_grants if {
	lib.is_protocol
	lib.server_granted(team.roles)
}

# --- annotations -------------------------------------------------------------------------------------------

# A tool its upstream declares destructive needs the admin role, unless this policy checks its arguments
# (team.argument_checked): CI's sh run (allow-listed commands, below) and files write_file (writable_paths only).
deny contains "destructive tools need the admin role" if {
	lib.is_call
	input.annotations.destructiveHint == true
	not is_admin
	not arguments_checked
}

arguments_checked if input.tool in team.argument_checked[input.server]

# --- time: conversions only between the zones the team works in ----------------------------------------------

deny contains msg if {
	lib.is_call
	input.server == "time"
	tz := args.source_timezone
	not tz in team.timezones
	msg := sprintf("timezone %v is not in the team's list", [tz])
}

# --- git: repositories under the team's root; no writes during a change freeze --------------------------------

deny contains msg if {
	lib.is_call
	input.server == "git"
	path := args.repo_path
	not lib.path_within(path, team.repo_root)
	msg := sprintf("repo_path %v is outside %v", [path, team.repo_root])
}

deny contains msg if {
	lib.is_call
	input.server == "git"
	input.tool in team.git_write_tools
	some w in team.change_freezes
	lib.in_dated_window(w)
	msg := sprintf("%v is frozen until %v (%v)", [input.tool, w.until, w.why])
}

# --- shell (the built-in upstream "sh", tool run): single allow-listed commands for CI ------------------------

# object.get, not args.command: OPA reads "not f(x)" with x undefined as undefined, rego-cpp as true.
deny contains "run needs a command string" if {
	shell_call
	not is_string(object.get(args, "command", null))
}

deny contains "command uses shell operators (; & | < > $ ` ( ) { } \\ or a newline); only single allow-listed commands may run" if {
	shell_call
	not is_admin
	lib.has_shell_operators(args.command)
}

deny contains msg if {
	shell_call
	not is_admin
	command_verdict == "program not listed"
	msg := concat("", ["command ", words[0], " is not in the allow-list of your roles"])
}

deny contains msg if {
	shell_call
	not is_admin
	command_verdict == "form not listed"
	msg := concat("", [
		words[0], " may only run as: ", words[0], " ", concat(" | ", sort(subcommands(words[0]))),
		" (not ", trim_space(args.command), ")",
	])
}

deny contains msg if {
	shell_call
	cwd := args.cwd
	not lib.in_workspace(cwd)
	msg := sprintf("cwd %v is outside the workspace", [cwd])
}

deny contains msg if {
	shell_call
	args.timeout_s > team.max_shell_timeout_s
	msg := sprintf("timeout_s %v is above the team's limit of %v s", [args.timeout_s, team.max_shell_timeout_s])
}

shell_call if {
	lib.is_call
	input.server == "sh"
	input.tool == "run"
}

# The command split into words, once per decision (a rule is computed once, a function at every call).
words := lib.command_words(args.command) if is_string(args.command)

# The allow-list's verdict on this call's command, computed once per decision.
command_verdict := "allowed" if {
	command_allowed
} else := "form not listed" if {
	program_listed(words[0])
} else := "program not listed" if {
	is_string(args.command)
}

# A rule of its own: the embedded engine (regorus RVM) takes no else after a body whose iteration finds nothing.
command_allowed if {
	some role in input.agent.roles
	lib.words_allowed(words, team.commands[role])
}

is_admin if lib.has_role("admin")

program_listed(program) if {
	some role in input.agent.roles
	team.commands[role][program]
}

# (p := program: rego-cpp does not bind a function argument used as a key inside a comprehension.)
subcommands(program) := {sub | some role in input.agent.roles; some sub in team.commands[role][p]} if p := program

# --- files (the built-in upstream "files"): inside the workspace, secrets protected, writes to build dirs -----

deny contains msg if {
	files_call
	path := object.get(args, "path", null)
	not lib.in_workspace(path)
	msg := sprintf("path %v is outside the workspace", [path])
}

deny contains msg if {
	files_call
	lib.path_matches(args.path, team.protected_paths)
	msg := sprintf("path %v is protected", [args.path])
}

deny contains msg if {
	files_call
	input.tool == "write_file"
	not is_admin
	path := object.get(args, "path", null)
	not lib.path_matches(path, team.writable_paths)
	msg := concat("", ["path ", path, " is not writable (writable: ", concat(", ", team.writable_paths), ")"])
}

files_call if {
	lib.is_call
	input.server == "files"
}

# --- fetch: https to the team's hosts only -------------------------------------------------------------------

# Parsed once per decision (a rule's value is computed once; a function call is evaluated at every use).
url_parts := lib.url_parts(args.url)

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
	url_parts.scheme != "https"
	msg := concat("", ["url scheme ", url_parts.scheme, " is not allowed (https only)"])
}

deny contains msg if {
	lib.is_call
	input.server == "fetch"
	not lib.host_allowed(url_parts.host, team.fetch_hosts)
	msg := concat("", ["host ", url_parts.host, " is not in the team's fetch allow-list"])
}

# --- containment: CI's shell and file calls run without network; file reads read-only ------------------------

containment := {"network": "none", "read_only": true} if {
	files_call
	input.tool != "write_file"
	not is_admin
} else := {"network": "none"} if {
	input.server in {"sh", "files"}
	lib.is_call
	not is_admin
} else := {}
