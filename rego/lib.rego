# Helpers shared by the team policies: identity and grants, list requests, arguments (paths, shell commands,
# URLs), time windows, and the decision document every team returns.
#
# Stay inside the Rego subset the embedded engine supports (docs/policy.md): the gateway refuses to load a
# policy that calls a built-in it lacks.
package gateway.lib

import rego.v1

# --- identity and grants -----------------------------------------------------------------------------------

has_role(role) if role in input.agent.roles

is_call if input.action == "tools/call"

is_list if input.action in {"tools/list", "prompts/list", "resources/list"}

# Session plumbing an agent asks for, and what an upstream relays to the agent's session (sampling, elicitation,
# roots, log messages, resource updates, list changes). Each is decided with `server` set to the upstream (null
# when the request concerns the whole session); teams allow them on upstreams they grant.
protocol_actions := {
	"logging/setLevel", "resources/subscribe", "resources/unsubscribe", "completion/complete",
	"notifications/roots/list_changed", "sampling/createMessage", "elicitation/create", "roots/list",
	"notifications/message", "notifications/resources/updated", "notifications/tools/list_changed",
	"notifications/prompts/list_changed", "notifications/resources/list_changed",
}

is_protocol if input.action in protocol_actions

# Listing the whole catalogue (no item yet): every known team may ask; the items are then decided one by one
# (action tools/list with the tool set), and an agent sees only those it may use.
catalogue_request if {
	is_list
	input.tool == null
	input.prompt == null
	input.resource == null
}

# grants[role][upstream] lists the tools a role may use on an upstream, "*" for all of them.
tool_granted(grants) if {
	some role in input.agent.roles
	names_match(grants[role][input.server])
}

names_match(names) if "*" in names

names_match(names) if input.tool in names

# Any grant on an upstream lets a role use its prompts and resources.
server_granted(grants) if {
	some role in input.agent.roles
	grants[role][input.server]
}

# Agents suspended across all teams (a leaked key, a misbehaving bot): denied before any team rule counts.
global_deny contains msg if {
	input.agent.id in data.global.suspended_agents
	msg := sprintf("agent %v is suspended", [input.agent.id])
}

# Secrets the gateway's scanner found in a call's arguments (input.findings, gateway/secrets: kind and argument
# path, never the value) are denied for every team, naming both, unless the team's data allows that finding:
# data.teams.<team>.allowed_findings, a list of {"kind", "server", "tool", "path"} where a left-out field or "*"
# matches anything, and path is a glob over dot-separated parts ("arguments.env.*"; left out: "**", any path).
global_deny contains msg if {
	some f in input.findings
	not finding_allowed(f)
	msg := sprintf("argument %v carries a secret (%v)", [f.path, f.kind])
}

finding_allowed(f) if {
	some a in data.teams[input.agent.team].allowed_findings
	matches_or_any(object.get(a, "kind", "*"), f.kind)
	matches_or_any(object.get(a, "server", "*"), input.server)
	matches_or_any(object.get(a, "tool", "*"), input.tool)
	glob.match(object.get(a, "path", "**"), ["."], f.path)
}

matches_or_any(want, _) if want == "*"

matches_or_any(want, got) if want == got

# --- paths -------------------------------------------------------------------------------------------------

# A path argument inside the agent's workspace: relative, no "..", no home directory. Tools resolve relative
# paths against the workspace; the containment profile enforces the same boundary again.
in_workspace(path) if {
	is_string(path)
	path != ""
	not startswith(path, "/")
	not startswith(path, "~")
	not ".." in split(path, "/")
}

# A path under a directory prefix (absolute paths, as tools such as git take them), with no ".." anywhere.
path_within(path, prefix) if {
	is_string(path)
	not contains(path, "..")
	startswith(path, prefix)
}

# The path without a leading "./", so "./papers/a.pdf" matches the glob "papers/**".
clean_path(path) := trim_prefix(path, "./")

path_matches(path, globs) if {
	is_string(path)
	some g in globs
	glob.match(g, ["/"], clean_path(path))
}

# --- shell commands ----------------------------------------------------------------------------------------

# Shell operators chain, redirect or substitute commands: with them an allow-list of programs means nothing.
has_shell_operators(command) if {
	is_string(command)
	regex.match("[;&|<>$`\\\\(){}\n\r]", command)
}

command_words(command) := regex.split("\\s+", trim_space(command))

# allowed[program] lists the first arguments a program may take, "*" for any.
words_allowed(words, allowed) if "*" in allowed[words[0]]

words_allowed(words, allowed) if {
	count(words) > 1
	words[1] in allowed[words[0]]
}

# --- URLs --------------------------------------------------------------------------------------------------

# The scheme and host of an absolute URL. URLs with credentials (user@host) or an IP-literal host do not match,
# so they are denied rather than guessed at.
url_parts(url) := {"scheme": lower(m[1]), "host": lower(m[2])} if {
	is_string(url)
	some m in regex.find_all_string_submatch_n(`^([A-Za-z][A-Za-z0-9+.-]*)://([A-Za-z0-9.-]+)(:[0-9]+)?([/?#].*)?$`, url, 1)
}

# Host patterns are globs over dot-separated labels: "*.github.com" matches "api.github.com", not "github.com".
host_allowed(host, patterns) if {
	some p in patterns
	glob.match(p, ["."], host)
}

# --- time --------------------------------------------------------------------------------------------------

# The request time the gateway stamped (input.request.time_ns), never time.now_ns(): table tests pin it.
clock := time.clock(input.request.time_ns)

weekday := time.weekday(input.request.time_ns)

# A weekly window {"days": [...], "from_hour": h1, "to_hour": h2}, hours in UTC, to_hour excluded.
in_weekly_window(w) if {
	weekday in w.days
	clock[0] >= w.from_hour
	clock[0] < w.to_hour
}

# A dated window {"from": RFC 3339, "until": RFC 3339} (write offsets as +00:00, not Z).
in_dated_window(w) if {
	input.request.time_ns >= time.parse_rfc3339_ns(w.from)
	input.request.time_ns < time.parse_rfc3339_ns(w.until)
}

# --- the decision ------------------------------------------------------------------------------------------

# The router (gateway.rego) decides each team's requests with
#   lib.decide(deny, grants, containment)
# from what the team defines (each may be left out: nothing denied, nothing granted, no narrowing): allowed when
# something grants the request and nothing denies it; the reasons are every deny message (and the global ones);
# containment (only on allowed calls) narrows the worker's profile for this call, never widens it.
decide(deny, grants, containment) := {"allow": false, "reasons": r} if {
	r := deny | global_deny
	count(r) > 0
} else := {"allow": true, "reasons": []} if {
	grants
	count(containment) == 0
} else := {"allow": true, "reasons": [], "containment": containment} if {
	grants
} else := {"allow": false, "reasons": ["no rule allows this request"]}

# lib.decide with the team's rules on trial: when only monitor_deny reasons deny a granted request, the decision
# denies in monitor mode (mode "monitor"): the gateway lets the request through and records it as would_deny.
decide_monitored(deny, monitor_deny, grants, containment) := monitored(monitor_deny, containment) if {
	count(monitor_deny) > 0
	count(deny | global_deny) == 0
	grants
} else := decide(deny, grants, containment)

monitored(reasons, containment) := {"allow": false, "mode": "monitor", "reasons": reasons} if {
	count(containment) == 0
} else := {"allow": false, "mode": "monitor", "reasons": reasons, "containment": containment}

# A list request (the router's shortcut): allowed when the team grants it and no global denial applies.
list_decision(grants) := {"allow": false, "reasons": r} if {
	r := global_deny
	count(r) > 0
} else := {"allow": true, "reasons": []} if {
	grants
} else := {"allow": false, "reasons": ["no rule allows this request"]}
